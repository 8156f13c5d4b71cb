"""Put community.sops (the collection Ansible users already have) where the interop tests find it.

Galaxy is often unreachable from CI; the `ansible` package on PyPI bundles community.sops, so the
pinned wheel is fetched with pip (checked against its sha256) and only
``ansible_collections/community/sops`` is extracted (64 files, 0.4 MB) into
``.cache/community-sops/<version>``. Prints that collections root, to be added to
ANSIBLE_COLLECTIONS_PATH. Does nothing when it is already there.

    python tools/community_sops.py        # used by `make community-sops` and tests/interop
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ansible 12.3.0 bundles community.sops 2.2.7.
WHEEL = "ansible-12.3.0-py3-none-any.whl"
WHEEL_SHA256 = "cd156f82fa87f7a899212b0efa9f7ca3a24d609212de9f78428a572eb01e5414"
COLLECTION_VERSION = "2.2.7"
PREFIX = "ansible_collections/community/sops/"


def collections_root() -> str:
    """Where the collection lives once fetched (a directory for ANSIBLE_COLLECTIONS_PATH)."""
    return os.path.join(REPO, ".cache", "community-sops", COLLECTION_VERSION)


def ensure() -> str:
    """Fetch and extract community.sops unless present; return the collections root."""
    root = collections_root()
    if os.path.isfile(os.path.join(root, PREFIX, "MANIFEST.json")):
        return root
    with tempfile.TemporaryDirectory() as tmp:
        version = WHEEL.split("-")[1]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", tmp, f"ansible=={version}"], check=True, stdin=subprocess.DEVNULL)
        wheel = os.path.join(tmp, WHEEL)
        with open(wheel, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != WHEEL_SHA256:
            raise SystemExit(f"{WHEEL}: sha256 {digest} is not the pinned {WHEEL_SHA256}; refusing to use it")
        os.makedirs(os.path.dirname(root), exist_ok=True)
        staging = tempfile.mkdtemp(dir=os.path.dirname(root))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(staging, [n for n in zf.namelist() if n.startswith(PREFIX)])
        shutil.rmtree(root, ignore_errors=True)  # a half-extracted earlier attempt
        os.replace(staging, root)
    return root


if __name__ == "__main__":
    print(ensure())
