#!/usr/bin/env bash
# The package-baked image, for the scenarios that are not about installing: the base image
# plus every tier's Debian packages (PostgreSQL, the app host's, and those of the pooler,
# backup, HA, metrics and front-door tiers), installed once here instead of in every
# scenario. Their services are left disabled (a role enables what it runs) and no cluster is
# created. The default scenario and the local target keep installing from the bare image.
# The build is skipped when the image exists with every package listed.
#
#   molecule/resources/bake-image.sh [BASE_IMAGE] [IMAGE]
#   defaults: fastpg/debian:trixie fastpg/debian:trixie-baked
set -euo pipefail

base=${1:-${FASTPG_IMAGE:-fastpg/debian:trixie}}
image=${2:-${FASTPG_BAKED_IMAGE:-fastpg/debian:trixie-baked}}

packages=(
  # The postgresql role (Debian 13) and the fastapi_app role, and what the apt module needs.
  postgresql-17 postgresql-client-17 python3-psycopg2 python3-apt
  python3 python3-venv python3-packaging dbus rsync
  # The tiers the stack grows into.
  pgbouncer pgbackrest patroni python3-etcd etcd-server haproxy
  prometheus prometheus-node-exporter prometheus-postgres-exporter prometheus-pgbouncer-exporter
  # Deploys over SSH by a user whose sudo asks for a password (resilience).
  openssh-server
)

# An image baked from an older list is baked again.
if docker image inspect "$image" >/dev/null 2>&1; then
  installed=$(docker run --rm "$image" dpkg-query -W -f='${db:Status-Abbrev}\n' "${packages[@]}" 2>/dev/null \
    | grep -c '^ii' || true)
  if [ "$installed" -eq "${#packages[@]}" ]; then
    echo "image $image exists with every package; skipping build"
    exit 0
  fi
  echo "image $image lacks some of the packages; baking it again"
fi

name=fastpg-bake-$$
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
echo "baking into $image: ${packages[*]}"
docker run --name "$name" "$base" bash -ec '
  # Nothing starts while the packages install, and the package makes no cluster.
  printf "#!/bin/sh\nexit 101\n" >/usr/sbin/policy-rc.d
  chmod 0755 /usr/sbin/policy-rc.d
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/00-bake.conf
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
  # Installed, not running: each tier enables the services it configures.
  for unit in pgbouncer patroni etcd haproxy prometheus prometheus-node-exporter \
              prometheus-postgres-exporter prometheus-pgbouncer-exporter ssh; do
    systemctl --root=/ disable "$unit.service" >/dev/null 2>&1 || true
  done
  rm -f /usr/sbin/policy-rc.d /etc/postgresql-common/createcluster.d/00-bake.conf
  apt-get clean
  rm -rf /var/lib/apt/lists/*
' _ "${packages[@]}"
docker commit -c 'CMD ["/lib/systemd/systemd"]' "$name" "$image" >/dev/null
echo "built $image"
