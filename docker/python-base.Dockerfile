# A Python base image made without any image registry (scripts/image.sh builds it): Debian
# bookworm, debootstrapped and imported as ROOTFS_IMAGE, plus Debian's own python3 (3.11) and
# venv. tests/test_image.py builds docker/Dockerfile on it (BASE_IMAGE); users keep the default,
# the official python image.
ARG ROOTFS_IMAGE=localhost/debian-bookworm:base
FROM ${ROOTFS_IMAGE}
LABEL dev.hssl-search.image=python-base

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive
# Debian's versions of the day (a test base, not a release): unpinned on purpose.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 \
    && rm -rf /var/lib/apt/lists/* \
    && python --version
