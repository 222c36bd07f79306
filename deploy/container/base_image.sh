#!/usr/bin/env bash
# The base image the bento's generated Dockerfile starts from (python:3.11-slim): pulled
# if a registry is reachable, else a local stand-in for machines that cannot pull from one
# but can reach Debian's archive: a Debian bookworm rootfs from debootstrap (its python3.11
# is the project's Python), imported with buildah and tagged with the name the Dockerfile
# asks for.
#
# Needs root, debootstrap and buildah (no container engine). buildah's own storage
# configuration applies (overlay by default; /etc/containers/storage.conf or
# CONTAINERS_STORAGE_CONF to change it).
set -euo pipefail

IMAGE=${IMAGE:-docker.io/library/python:3.11-slim}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-${TMPDIR:-/tmp}/keyed-serving-base-image}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

if buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE is already in buildah's local storage"
    exit 0
fi
if buildah pull --quiet "$IMAGE" >/dev/null 2>&1; then
    echo "pulled $IMAGE"
    exit 0
fi
echo "cannot pull $IMAGE: building a stand-in from Debian $SUITE"

rootfs=$WORK/rootfs
if [ ! -x "$rootfs/usr/bin/python3.11" ]; then
    rm -rf "$rootfs"
    mkdir -p "$WORK"
    debootstrap --variant=minbase \
        --include=python3.11,python3-pip,python3.11-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR"
fi

# The official image has `python` and `pip` on the PATH and lets pip install into the
# system Python (the Dockerfile pip-installs uv there); Debian marks it externally managed.
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
# A network that intercepts TLS (as these build machines' egress proxy does) needs its CA
# inside the image too, or pip, uv and apt cannot reach PyPI from the build.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
fi
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*

tar -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$WORK/rootfs.tar" .
container=$(buildah from scratch)
buildah add "$container" "$WORK/rootfs.tar" / >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    --cmd python3 \
    "$container"
buildah commit --rm "$container" "$IMAGE"
rm -f "$WORK/rootfs.tar"
echo "built $IMAGE"
