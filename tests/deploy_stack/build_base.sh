#!/bin/sh
# Builds a local Debian bookworm base image with Python 3.11 (Debian's python3.11) for
# machines where python:3.11-slim-bookworm cannot be pulled: debootstrap + docker import.
# Usage: tests/deploy_stack/build_base.sh TAG   (needs root, debootstrap, a reachable Debian mirror)
set -eu
TAG=${1:-context-engine/base:bookworm-py311}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOT=$(mktemp -d /var/tmp/ce-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { tail -20 "$ROOT.log"; exit 1; }
rm -f "$ROOT.log"
cat >"$ROOT/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# Python from Debian (apt resolves what debootstrap's --include would not).
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
chroot "$ROOT" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3.11 python3.11-venv ca-certificates >/dev/null && apt-get clean'
: >"$ROOT/etc/resolv.conf"
# `python` as in the official image; slim: no apt lists, caches, docs.
ln -sf /usr/bin/python3.11 "$ROOT/usr/local/bin/python"
ln -sf /usr/bin/python3.11 "$ROOT/usr/local/bin/python3"
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/apt/archives/*.deb \
       "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
tar -C "$ROOT" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    -c 'CMD ["python3"]' - "$TAG" >/dev/null
echo "$TAG"
