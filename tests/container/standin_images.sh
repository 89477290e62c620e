#!/usr/bin/env bash
# Stand-in base images for the container test tier, for machines where the public image
# registry cannot be reached. Built from Debian packages only, and only when missing:
#   crypto-ml-standin/python:3.11-bookworm  debootstrap of bookworm with python3, python3-venv,
#       python-is-python3, ca-certificates; this machine's CA bundle is copied in and pip
#       points at it (PIP_CERT and /etc/pip.conf), so builds behind a TLS-intercepting proxy work
#   crypto-ml-standin/redis:bookworm        the same base plus Debian's redis-server (7.0), with
#       /data owned by 999:1000 like the official image (compose runs it as that user)
# Usage: tests/container/standin_images.sh [--force]
set -euo pipefail
PY_IMAGE=crypto-ml-standin/python:3.11-bookworm
REDIS_IMAGE=crypto-ml-standin/redis:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
force=${1:-}

have() { [ "$force" != --force ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$PY_IMAGE"; then
    command -v debootstrap >/dev/null || { echo "debootstrap is not installed" >&2; exit 1; }
    root=$(mktemp -d /var/tmp/crypto-ml-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$root" "$MIRROR" >/dev/null
    install -m 0644 "$CA_BUNDLE" "$root/etc/ssl/certs/host-ca-bundle.crt"
    printf '[global]\ncert = /etc/ssl/certs/host-ca-bundle.crt\n' > "$root/etc/pip.conf"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt' \
        --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-bundle.crt' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt' \
        --change 'CMD ["python3"]' - "$PY_IMAGE" >/dev/null
    rm -rf "$root"; trap - EXIT
    echo "built $PY_IMAGE"
fi

if ! have "$REDIS_IMAGE"; then
    ctx=$(mktemp -d)
    trap 'rm -rf "$ctx"' EXIT
    cat > "$ctx/Dockerfile" <<DOCKERFILE
FROM $PY_IMAGE
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server \\
    && rm -rf /var/lib/apt/lists/* \\
    && mkdir -p /data && chown 999:1000 /data
WORKDIR /data
CMD ["redis-server"]
DOCKERFILE
    docker build -q -t "$REDIS_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"; trap - EXIT
    echo "built $REDIS_IMAGE"
fi
