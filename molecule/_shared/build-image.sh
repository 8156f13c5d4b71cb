#!/usr/bin/env bash
# Build the base image every molecule scenario runs on: Debian bookworm (minbase) with python3,
# sshd and sudo, imported into podman as localhost/nixfleet-molecule:bookworm.
#
# No registry is reachable on the build machines, so the image is made with debootstrap from the
# Debian mirror apt already uses and imported, never pulled. An existing image is kept unless this
# script changed since it was built (the image carries the script's hash as a label); set
# NIXFLEET_MOLECULE_REBUILD=1 (or pass --force) to rebuild it anyway.
#
#   molecule/_shared/build-image.sh            build when missing
#   molecule/_shared/build-image.sh --force    always rebuild
set -euo pipefail

IMAGE="${NIXFLEET_MOLECULE_IMAGE:-localhost/nixfleet-molecule:bookworm}"
SUITE="${NIXFLEET_MOLECULE_SUITE:-bookworm}"
MIRROR="${NIXFLEET_MOLECULE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,openssh-server,openssh-client,sudo,passwd,ca-certificates"
FORCE="${NIXFLEET_MOLECULE_REBUILD:-0}"
[ "${1:-}" = "--force" ] && FORCE=1

die() { echo "build-image.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "debootstrap and rootful podman need root; run as root (CI does)"
command -v podman >/dev/null || die "podman is not installed: apt-get install -y podman runc"
command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"

RECIPE="$(sha256sum "$0" | cut -c1-16)"
current() {
  podman image exists "$IMAGE" \
    && [ "$(podman image inspect --format '{{ index .Labels "nixfleet.recipe" }}' "$IMAGE")" = "$RECIPE" ]
}

if [ "$FORCE" != 1 ] && current; then
  echo "build-image.sh: $IMAGE exists, not rebuilding (NIXFLEET_MOLECULE_REBUILD=1 to force)"
  exit 0
fi

# Only one build at a time (parallel pytest sessions, a Makefile target and a manual run).
exec 9>/tmp/nixfleet-molecule-image.lock
flock 9
if [ "$FORCE" != 1 ] && current; then
  echo "build-image.sh: $IMAGE was built by a concurrent run"
  exit 0
fi
OLD_ID="$(podman image inspect --format '{{ .Id }}' "$IMAGE" 2>/dev/null || true)"

ROOT="$(mktemp -d /var/tmp/nixfleet-molecule-root.XXXXXX)"
cleanup() { rm -rf --one-file-system "$ROOT"; }
trap cleanup EXIT

start=$(date +%s)
echo "build-image.sh: debootstrap $SUITE into $ROOT (packages: $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -n 30 "$ROOT.log" >&2; rm -f "$ROOT.log"; die "debootstrap failed (log above)"; }
rm -f "$ROOT.log"

# Every container must get its own SSH host keys (create.yml runs ssh-keygen -A): drop the ones
# debootstrap generated so no two containers share them.
rm -f "$ROOT"/etc/ssh/ssh_host_*
# sshd needs its privilege separation directory; root logs in with a key only.
mkdir -p "$ROOT/run/sshd"
cat >"$ROOT/etc/ssh/sshd_config.d/molecule.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
CONF
# sops-nix makes its secrets root:keys; NixOS has the group, Debian does not.
chroot "$ROOT" groupadd --system keys
# Shrink: apt lists and caches are not needed at run time.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*

tar --numeric-owner -C "$ROOT" -c . | podman import \
  --change 'CMD ["/bin/sh", "-c", "ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e"]' \
  --change "LABEL nixfleet.recipe=$RECIPE" - "$IMAGE" >/dev/null
# The replaced image is now untagged; drop it unless a container still uses it.
if [ -n "$OLD_ID" ]; then podman rmi "$OLD_ID" >/dev/null 2>&1 || true; fi
echo "build-image.sh: built $IMAGE in $(( $(date +%s) - start ))s"
