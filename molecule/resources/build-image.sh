#!/usr/bin/env bash
# Build the systemd base image the Molecule scenarios and the local inventory boot.
# No registry is reachable from the test machines, so the image is bootstrapped from the
# Debian mirror the host already uses. The build is skipped when the image exists.
#
#   molecule/resources/build-image.sh [IMAGE] [SUITE]
#   defaults: fastpg/debian:trixie trixie
set -euo pipefail

image=${1:-${FASTPG_IMAGE:-fastpg/debian:trixie}}
suite=${2:-trixie}

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "image $image exists; skipping build"
  exit 0
fi

# The mirror comes from the host's apt sources, so no host name is written into the repo.
mirror=${FASTPG_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '^URIs:[[:space:]]*\S+/debian/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}')
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '^deb[[:space:]]+\S+/debian/?[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}')
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in apt sources; set FASTPG_DEBIAN_MIRROR" >&2; exit 1; }

root=$(mktemp -d /var/tmp/fastpg-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "bootstrapping $suite from $mirror into $root"
# An older host's debootstrap has no script for a newer suite; testing suites bootstrap like sid.
script=/usr/share/debootstrap/scripts/$suite
[ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,python3,ca-certificates,sudo,iproute2 \
  "$suite" "$root" "$mirror" "$script" >/dev/null
# A testing suite's Release expires within days; the test machines' mirror is a snapshot.
if [ "$suite" != trixie ]; then
  echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/99fastpg-test-snapshot"
fi
# Containers get their own /etc/machine-id at boot; an empty one keeps images reproducible.
: > "$root/etc/machine-id"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'CMD ["/lib/systemd/systemd"]' - "$image" >/dev/null
echo "built $image"
