# shellcheck shell=bash
# Common settings for images/base and images/build. Sourced, not executed.
# The images live in a container store of their own under $STOCKADE_CACHE (the machine's
# default store is left alone); every buildah/podman call goes through `store`.

IMAGES_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$IMAGES_DIR")"
STOCKADE_CACHE="${STOCKADE_CACHE:-/var/cache/stockade}"
IMAGE_CACHE="$STOCKADE_CACHE/images"
# the store's run-time state (locks, mounts) belongs on tmpfs: one per store
STORE_ROOT="$IMAGE_CACHE/storage"
STORE_RUNROOT="/run/stockade-images/$(printf '%s' "$STORE_ROOT" | sha256sum | cut -c1-12)"
# skip_mount_home: no mount of the store is left behind, so `rm -rf $STOCKADE_CACHE` works
STORE_OPTS=(--root "$STORE_ROOT" --runroot "$STORE_RUNROOT" --storage-driver overlay
    --storage-opt overlay.skip_mount_home=true)

# the chart's image names (charts/stockade), tagged with the project's version
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")"
REGISTRY="${STOCKADE_IMAGE_REGISTRY:-ghcr.io/stockade-dev}"
BASE_IMAGE="localhost/stockade-base"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
buildah_() { buildah "${STORE_OPTS[@]}" "$@"; }
podman_() { podman "${STORE_OPTS[@]}" "$@"; }
