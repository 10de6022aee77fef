#!/usr/bin/env bash
# Builds a PGDG-style apt repository (dists/trixie-pgdg, signed) from Debian 13's own
# PostgreSQL packages, re-versioned the way PGDG versions them (+pgdg suffix), so the test
# can tell which repository a package came from. Runs inside the mirror container.
#   build-mirror.sh [SUITE [LIBRARY...]]   default trixie-pgdg
# The backups scenario serves them to Debian 14 as forky-pgdg, with the Debian 13 libraries they
# link against that Debian 14 no longer has (PGDG builds against each release's own instead).
set -euo pipefail
root=/srv/pgdg
suite=${1:-trixie-pgdg}
shift || true
[ -f "$root/dists/$suite/InRelease" ] && exit 0

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends apt-utils gnupg >/dev/null

work=$(mktemp -d)
cd "$work"
apt-get download -qq postgresql-17 postgresql-client-17
pool="$root/pool/main/p/postgresql-17"
mkdir -p "$pool" "$root/dists/$suite/main/binary-amd64"
for deb in ./*.deb; do
  dpkg-deb -R "$deb" unpacked
  version=$(sed -n 's/^Version: //p' unpacked/DEBIAN/control)
  sed -i "s/^Version: .*/Version: ${version}.pgdg13+1/" unpacked/DEBIAN/control
  dpkg-deb -b unpacked "$pool/" >/dev/null
  rm -rf unpacked
done
if [ $# -gt 0 ]; then
  mkdir -p "$root/pool/main/libs"
  (cd "$root/pool/main/libs" && apt-get download -qq "$@")
fi

cd "$root"
apt-ftparchive packages pool > "dists/$suite/main/binary-amd64/Packages"
gzip -kf "dists/$suite/main/binary-amd64/Packages"
apt-ftparchive \
  -o APT::FTPArchive::Release::Origin=fastpg-test-mirror \
  -o APT::FTPArchive::Release::Suite="$suite" \
  -o APT::FTPArchive::Release::Codename="$suite" \
  -o APT::FTPArchive::Release::Components=main \
  -o APT::FTPArchive::Release::Architectures=amd64 \
  release "dists/$suite" > "dists/$suite/Release"

export GNUPGHOME="$work/gnupg"
mkdir -m 0700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key "fastpg test mirror <mirror@fastpg.test>" ed25519 sign never
gpg --batch --quiet --clearsign -o "dists/$suite/InRelease" "dists/$suite/Release"
gpg --batch --armor --export > key.asc
rm -rf "$work"
