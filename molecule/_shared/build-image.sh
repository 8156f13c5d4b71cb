#!/usr/bin/env bash
# Build the base image every molecule scenario runs on: Debian bookworm (minbase) with python3,
# sshd and sudo, imported into podman as localhost/nixfleet-molecule:bookworm
# (tools/debootstrap-image.sh: debootstrap, never pulled). An existing image is kept unless its
# recipe changed; set NIXFLEET_MOLECULE_REBUILD=1 (or pass --force) to rebuild it anyway.
#
#   molecule/_shared/build-image.sh            build when missing
#   molecule/_shared/build-image.sh --force    always rebuild
# The settings below are read by tools/debootstrap-image.sh, sourced further down.
# shellcheck disable=SC2034
set -euo pipefail

IMAGE="${NIXFLEET_MOLECULE_IMAGE:-localhost/nixfleet-molecule:bookworm}"
SUITE="${NIXFLEET_MOLECULE_SUITE:-bookworm}"
MIRROR="${NIXFLEET_MOLECULE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,openssh-server,openssh-client,sudo,passwd,ca-certificates"
FORCE="${NIXFLEET_MOLECULE_REBUILD:-0}"
[ "${1:-}" = "--force" ] && FORCE=1
IMPORT_CHANGES=('CMD ["/bin/sh", "-c", "ssh-keygen -A >/dev/null && exec /usr/sbin/sshd -D -e"]')

customize_root() {
  local root="$1"
  # Every container must get its own SSH host keys (create.yml runs ssh-keygen -A): drop the ones
  # debootstrap generated so no two containers share them.
  rm -f "$root"/etc/ssh/ssh_host_*
  # sshd needs its privilege separation directory; root logs in with a key only.
  mkdir -p "$root/run/sshd"
  cat >"$root/etc/ssh/sshd_config.d/molecule.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
CONF
  # sops-nix makes its secrets root:keys; NixOS has the group, Debian does not.
  chroot "$root" groupadd --system keys
}

# shellcheck source=../../tools/debootstrap-image.sh
source "$(dirname "$0")/../../tools/debootstrap-image.sh"
debootstrap_image
