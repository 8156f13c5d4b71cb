#!/usr/bin/env bash
# ansible-test sanity (the offline tests: no docker, no network) on a copy of the collection.
# ansible-test wants the tree under .../ansible_collections/nixfleet/sops; the checkout is not, so the
# files git knows (committed or not, ignored ones left out: no .venv, demo/ or caches) are copied there.
#   tests/sanity/run.sh [ansible-test sanity options, e.g. --test validate-modules]
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/nixfleet-sanity.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
dest="$tmp/ansible_collections/nixfleet/sops"
mkdir -p "$dest"
cd "$here"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue   # deleted in the working copy, not yet committed
  mkdir -p "$dest/$(dirname "$f")"
  cp -P "$f" "$dest/$f"
done
# ansible-test puts pip into its sanity virtualenvs with a get-pip.py it downloads from a host that may be
# unreachable; when it has none cached, give it tests/sanity/get_pip.py (the same job, done by ensurepip + pip).
pip_version="$(python -c 'from ansible_test._internal.python_requirements import get_venv_packages as g; import types; print(g(types.SimpleNamespace(version="3.11"))["pip"])')"
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$cache" ]; then mkdir -p "$(dirname "$cache")"; cp tests/sanity/get_pip.py "$cache"; fi
cd "$dest"
# The copy is not a git repository: ansible-test then tests every file of it.
# --local: the current Python (3.11) with the sanity requirements already installed (requirements-dev.txt).
exec ansible-test sanity --local --python 3.11 --color no "$@"
