#!/usr/bin/env bash
# Build the base image of the execution environment: Debian bookworm (minbase) with python3, pip
# and venv, imported into podman as localhost/nixfleet-ee-base:bookworm
# (tools/debootstrap-image.sh: debootstrap, never pulled). ansible-builder builds the execution
# environment on top of it (execution-environment.yml, `make ee`). An existing image is kept
# unless its recipe changed; --force rebuilds it anyway.
#
# ansible-builder's build scripts speak dnf ("$PKGMGR install -y PKG…", "$PKGMGR clean all"):
# /usr/local/bin/apt-as-dnf does the same with apt-get, and execution-environment.yml points
# options.package_manager_path at it. The build machine's locally added CA certificates
# (/usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's) are trusted in the image so pip
# and apt reach their registries through that proxy; NIXFLEET_EE_HOST_CA=0 leaves them out.
#
#   ee/build-base.sh            build when missing or out of date
#   ee/build-base.sh --force    always rebuild
# The settings below are read by tools/debootstrap-image.sh, sourced further down.
# shellcheck disable=SC2034
set -euo pipefail

# execution-environment.yml names this image (images.base_image).
IMAGE=localhost/nixfleet-ee-base:bookworm
SUITE=bookworm
MIRROR="${NIXFLEET_EE_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-pip,python3-venv,ca-certificates"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1
IMPORT_CHANGES=('CMD ["/bin/bash"]')

CAS=()
if [ "${NIXFLEET_EE_HOST_CA:-1}" = 1 ]; then
  shopt -s nullglob
  CAS=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
fi
RECIPE_EXTRA="$([ ${#CAS[@]} = 0 ] || cat "${CAS[@]}")"

customize_root() {
  local root="$1" ca
  cat >"$root/usr/local/bin/apt-as-dnf" <<'SH'
#!/bin/sh
# ansible-builder's scripts call the package manager the dnf way; do the same with apt-get.
set -e
export DEBIAN_FRONTEND=noninteractive
cmd="$1"; shift
case "$cmd" in
  install)
    # dnf options (-y, --nodocs, --setopt X, --enablerepo X) mean nothing to apt: keep the names.
    pkgs=""; skip=0
    for a in "$@"; do
      if [ "$skip" = 1 ]; then skip=0; continue; fi
      case "$a" in --setopt|--enablerepo) skip=1 ;; -*) ;; *) pkgs="$pkgs $a" ;; esac
    done
    [ -n "$pkgs" ] || exit 0
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $pkgs ;;
  clean)
    apt-get clean
    rm -rf /var/lib/apt/lists/* ;;
  *)
    echo "apt-as-dnf: '$cmd' is not a command ansible-builder uses" >&2; exit 2 ;;
esac
SH
  chmod 0755 "$root/usr/local/bin/apt-as-dnf"
  for ca in "${CAS[@]}"; do cp "$ca" "$root/usr/local/share/ca-certificates/"; done
  [ ${#CAS[@]} = 0 ] || chroot "$root" update-ca-certificates >/dev/null
}

# shellcheck source=../tools/debootstrap-image.sh
source "$(dirname "$0")/../tools/debootstrap-image.sh"
debootstrap_image
