# shellcheck shell=bash
# Sourced by molecule/_shared/build-image.sh and ee/build-base.sh: a Debian image made with
# debootstrap from the mirror apt already uses and imported into podman, never pulled (no registry
# is reachable on the build machines).
#
# The caller sets IMAGE, SUITE, MIRROR, PACKAGES (comma-separated), FORCE (1: rebuild anyway),
# IMPORT_CHANGES (array of `podman import --change` instructions), optionally RECIPE_EXTRA (more
# text the image depends on, e.g. certificates it copies in), and defines `customize_root ROOT`,
# which finishes the tree before it is imported. An existing image is kept unless the caller, this
# file or RECIPE_EXTRA changed since it was built: the image carries their hash as a label.

_dbi_name="$(basename "$0")"
die() { echo "$_dbi_name: $*" >&2; exit 1; }

_dbi_current() {
  podman image exists "$IMAGE" \
    && [ "$(podman image inspect --format '{{ index .Labels "nixfleet.recipe" }}' "$IMAGE")" = "$_dbi_recipe" ]
}

debootstrap_image() {
  [ "$(id -u)" = 0 ] || die "debootstrap and rootful podman need root; run as root (CI does)"
  command -v podman >/dev/null || die "podman is not installed: apt-get install -y podman runc"
  command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install -y debootstrap"

  _dbi_recipe="$( { cat "$0" "${BASH_SOURCE[0]}"; printf '%s' "${RECIPE_EXTRA:-}"; } | sha256sum | cut -c1-16)"
  if [ "$FORCE" != 1 ] && _dbi_current; then
    echo "$_dbi_name: $IMAGE exists and is up to date, not rebuilding (--force to rebuild)"
    return 0
  fi
  # Only one build of an image at a time (parallel pytest sessions, a Makefile target, a manual run).
  exec 9>"/tmp/nixfleet-image-$(printf '%s' "$IMAGE" | tr -c 'A-Za-z0-9' _).lock"
  flock 9
  if [ "$FORCE" != 1 ] && _dbi_current; then
    echo "$_dbi_name: $IMAGE was built by a concurrent run"
    return 0
  fi
  local old_id root start
  old_id="$(podman image inspect --format '{{ .Id }}' "$IMAGE" 2>/dev/null || true)"
  root="$(mktemp -d /var/tmp/nixfleet-image-root.XXXXXX)"
  # shellcheck disable=SC2064  # expand now: $root is local
  trap "rm -rf --one-file-system '$root' '$root.log'" EXIT

  start=$(date +%s)
  echo "$_dbi_name: debootstrap $SUITE into $root (packages: $PACKAGES)"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; die "debootstrap failed (log above)"; }
  customize_root "$root"
  # Shrink: apt lists and caches are not needed at run time.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

  local changes=() c
  for c in "${IMPORT_CHANGES[@]}"; do changes+=(--change "$c"); done
  tar --numeric-owner -C "$root" -c . \
    | podman import -q "${changes[@]}" --change "LABEL nixfleet.recipe=$_dbi_recipe" - "$IMAGE" >/dev/null
  # The replaced image is now untagged; drop it unless a container still uses it.
  if [ -n "$old_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
  echo "$_dbi_name: built $IMAGE in $(( $(date +%s) - start ))s" \
    "($(( $(podman image inspect --format '{{ .Size }}' "$IMAGE") / 1000000 )) MB)"
}
