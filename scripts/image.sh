#!/usr/bin/env bash
# Build docker/Dockerfile with podman where no image registry and no PyTorch index can be reached
# (only PyPI and Debian), as tests/test_image.py does:
#   1. Debian bookworm by debootstrap (minbase, from the mirror apt uses) → localhost/debian-bookworm:base
#   2. + Debian's python3 and venv (docker/python-base.Dockerfile)       → localhost/hssl-python:bookworm
#   3. the torch pair's wheels (and theirs), `pip download` on this host → $cache/wheels-torch-<v>-<v>
#   4. docker/Dockerfile FROM that base, the torch pair from that folder  → TAG
# Usage: bash scripts/image.sh [TAG]      (default localhost/hssl-search:test; needs root, podman,
# runc, debootstrap: scripts/test.sh installs them). Steps 1-3 are cached between runs under
# $HSSL_IMAGE_CACHE (default ~/.cache/hssl-image) and in podman's storage, never required.
# Its progress goes to stderr; stdout is one JSON line of timings.
set -euo pipefail
cd "$(dirname "$0")/.."

tag=${1:-localhost/hssl-search:test}
cache=${HSSL_IMAGE_CACHE:-$HOME/.cache/hssl-image}
rootfs_image=localhost/debian-bookworm:base
python_image=localhost/hssl-python:bookworm
export CONTAINERS_CONF="$PWD/docker/podman-containers.conf"
mkdir -p "$cache"
# One build at a time: scripts/test.sh starts one in the background while the suite runs, and
# the image test's own call then waits here and finds every step cached.
exec 9>"$cache/build.lock"
flock 9
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "image.sh: $*" >&2; }

# ---- 1. Debian bookworm rootfs ---------------------------------------------------------------
t0=$(now)
if ! podman image exists "$rootfs_image"; then
  tarball="$cache/bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    # the mirror apt already uses (deb822 .sources or a one-line sources.list)
    mirror=${DEBIAN_MIRROR:-$(
      { grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list || true
        grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true; } |
        awk '{print $2}' | grep -v security | head -n1 || true
    )}
    mirror=${mirror:-http://deb.debian.org/debian}
    say "debootstrap bookworm from $mirror"
    work="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/log" 2>&1 ||
      { tail -n 20 "$work/log" >&2; exit 1; }
    tar -C "$work/rootfs" -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$tarball"
    rm -rf "$work"
    trap - EXIT
  fi
  say "importing $tarball as $rootfs_image"
  podman import --quiet "$tarball" "$rootfs_image" >/dev/null
fi
rootfs_s=$(since "$t0")

# ---- 2. Python on it (podman's layer cache makes this instant when nothing changed) ----------
t0=$(now)
mkdir -p "$cache/empty-context"  # it copies nothing in (and never sees docker/.env)
podman build --quiet --format docker --network host --layers -f docker/python-base.Dockerfile \
  --build-arg ROOTFS_IMAGE="$rootfs_image" -t "$python_image" "$cache/empty-context" >/dev/null
python_s=$(since "$t0")

# ---- 3. the torch pair as wheels for that Python (CPython 3.11; this host's platform) -------
t0=$(now)
torch_version=$(sed -nE 's/^ARG TORCH_VERSION=(.+)$/\1/p' docker/Dockerfile)
torchvision_version=$(sed -nE 's/^ARG TORCHVISION_VERSION=(.+)$/\1/p' docker/Dockerfile)
wheels="$cache/wheels-torch-$torch_version-$torchvision_version"
if [ ! -f "$wheels/.complete" ]; then
  say "downloading torch==$torch_version torchvision==$torchvision_version and their dependencies"
  python=$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
  "$python" -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 -d "$wheels" "torch==$torch_version" "torchvision==$torchvision_version" 2>&1 |
    { grep -v '^WARNING: Location' || true; }
  touch "$wheels/.complete"
fi
wheels_s=$(since "$t0")

# ---- 4. the project image --------------------------------------------------------------------
# pip inside the build trusts what pip trusts here (a TLS-inspecting proxy's CA, if any): the
# host's CA bundle and a pip.conf naming it, mounted for the build's RUN steps only (as
# /etc/xdg/pip, one of pip's site config folders; like /wheels it stays as an empty mount point).
build_dir="$cache/build-pip"
mkdir -p "$build_dir"
ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
mounts=(-v "$wheels:/wheels:ro")
if [ -s "$ca" ]; then
  cp "$ca" "$build_dir/ca.crt"
  printf '[global]\ncert = /etc/xdg/pip/ca.crt\n' >"$build_dir/pip.conf"
  mounts+=(-v "$build_dir:/etc/xdg/pip:ro")
fi
t0=$(now)
say "building $tag"
podman build --format docker --network host --layers -f docker/Dockerfile -t "$tag" \
  --build-arg BASE_IMAGE="$python_image" --build-arg TORCH_SOURCE=/wheels "${mounts[@]}" . >&2
build_s=$(since "$t0")
# What earlier builds left untagged (the layers this build replaced; this repository's only).
podman image prune --force --filter label=dev.hssl-search.image >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
printf '{"image": "%s", "size_bytes": %s, "rootfs_s": %s, "python_base_s": %s, "wheels_s": %s, "build_s": %s}\n' \
  "$tag" "$size" "$rootfs_s" "$python_s" "$wheels_s" "$build_s"
