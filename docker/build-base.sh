#!/bin/sh
# Builds a minimal Debian bookworm image with python3 and python3-venv, for machines that cannot
# pull the official python:3.11-slim (air-gapped networks, no reachable registry). Pass the tag it
# prints as the BASE_IMAGE build argument:
#
#   sudo docker/build-base.sh semlink-base:bookworm
#   SEMLINK_BASE_IMAGE=semlink-base:bookworm docker-compose build
#
# Needs root, debootstrap and a Debian mirror (default: the one this machine's apt uses). The
# host's CA bundle goes into the image, so pip inside a build trusts what the host trusts (a
# network that intercepts TLS included). Environment: MIRROR, CA_BUNDLE, SUITE.
set -eu

tag=${1:-semlink-base:bookworm}
suite=${SUITE:-bookworm}
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

configured_mirror() {
    # deb822 sources first (Debian 12), then the one-line format
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && awk '/^URIs:/ && $2 ~ /debian\/?$/ { print $2; exit }' "$f"
    done
    [ -f /etc/apt/sources.list ] && awk '/^deb / && $2 ~ /debian\/?$/ { print $2; exit }' /etc/apt/sources.list
}
mirror=${MIRROR:-$(configured_mirror | head -n 1)}
mirror=${mirror:-http://deb.debian.org/debian}

command -v debootstrap >/dev/null || { echo "build-base: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ -f "$ca_bundle" ] || { echo "build-base: no CA bundle at $ca_bundle (set CA_BUNDLE)" >&2; exit 1; }

root=$(mktemp -d /tmp/semlink-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "build-base: debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 20 "$root.log" >&2; echo "build-base: debootstrap failed (full log: $root.log)" >&2; exit 1; }
rm -f "$root.log"
cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
# what a runtime image never needs: package caches and lists, documentation, translations
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/*
tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "build-base: $tag ($(docker image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }'))"
