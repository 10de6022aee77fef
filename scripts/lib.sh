# shellcheck shell=bash
# Shared bootstrap for scripts/test.sh and scripts/up.sh: everything a fresh machine lacks.
# Idempotent: each step is skipped when its result is already there.

FASTPG_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FASTPG_IMAGE=${FASTPG_IMAGE:-fastpg/debian:trixie}
export FASTPG_IMAGE
VENV="$FASTPG_ROOT/.venv"

log() { printf '\n==> %s\n' "$*"; }

need_root() {
  [ "$(id -u)" -eq 0 ] || { echo "run as root: it installs packages and starts dockerd" >&2; exit 1; }
}

# Debian packages: the Docker engine, debootstrap for the image, rsync for the code
# deployment, the SSH client for the benchmark, PostgreSQL for the app's tests.
install_host_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v rsync >/dev/null || missing+=(rsync)
  # The benchmark reaches its containers over SSH, the transport of real hosts.
  command -v ssh >/dev/null || missing+=(openssh-client)
  if [ "${1:-}" = with-postgresql ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    missing+=(postgresql)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]}"
  need_root
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

start_docker() {
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd"
  need_root
  if ! pgrep -x dockerd >/dev/null; then
    # A machine restored from a snapshot keeps /run but not the processes: a socket or
    # pid file left behind by a dockerd that no longer runs would stop a new one starting.
    rm -f /var/run/docker.pid /var/run/docker.sock
    nohup dockerd >/var/log/fastpg-dockerd.log 2>&1 &
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 1; done
  echo "dockerd did not start; the end of /var/log/fastpg-dockerd.log:" >&2
  tail -n 20 /var/log/fastpg-dockerd.log >&2 || true
  exit 1
}

# The tool venv, from the pinned requirements-dev.txt; rebuilt when that file changes.
make_venv() {
  local stamp="$VENV/.requirements-dev.sha256" want
  want=$(sha256sum "$FASTPG_ROOT/requirements-dev.txt" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "building the tool venv (.venv)"
  python3 -m venv "$VENV"
  # uv, pinned in the same file, installs the rest: 43 s here where pip took 61.
  "$VENV/bin/pip" install -q "$(grep -E '^uv==' "$FASTPG_ROOT/requirements-dev.txt")"
  uv_install "$VENV" -r "$FASTPG_ROOT/requirements-dev.txt" --upgrade-package pip pip
  echo "$want" >"$stamp"
}

# Packages into the venv $1 with the tool venv's uv (the venv's own pip stays for `pip download`).
# Compiled at install, as pip does: uv does not, and where PYTHONDONTWRITEBYTECODE is set (this
# machine) every ansible process would compile Ansible's sources again (CI 20 % slower).
uv_install() {
  local venv=$1
  shift
  UV_LINK_MODE=copy "$VENV/bin/uv" pip install -q --compile-bytecode --python "$venv/bin/python" "$@"
}

# The Ansible strategy of the commands that follow, from $1 or FASTPG_STRATEGY: mitogen
# (mitogen_linear: one Python interpreter per host kept warm, modules imported once) or linear
# (Ansible's own); with neither, ANSIBLE_STRATEGY stays as the environment has it. Exported, so
# the ansible-playbook runs that tests start follow it too.
use_strategy() {
  local strategy=${1:-${FASTPG_STRATEGY:-}}
  case $strategy in
    '') ;;
    linear)
      unset ANSIBLE_STRATEGY ANSIBLE_STRATEGY_PLUGINS ;;
    mitogen)
      ANSIBLE_STRATEGY_PLUGINS=$("$VENV/bin/python" -c \
        'import ansible_mitogen, os; print(os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy"))')
      export ANSIBLE_STRATEGY_PLUGINS ANSIBLE_STRATEGY=mitogen_linear ;;
    *)
      echo "FASTPG_STRATEGY=$strategy: accepted values are linear and mitogen" >&2
      return 2 ;;
  esac
  echo "strategy: ${ANSIBLE_STRATEGY:-linear}"
}

# The collection as users get it: built from the checkout (galaxy.yml's build_ignore decides
# what ships) and installed into a clean collections path. ANSIBLE_COLLECTIONS_PATH points
# every later ansible command there, so fastpg.stack.* comes from that copy and never from
# the checkout: a file missing from the build fails the tests that need it.
install_collection() {
  local dest="$FASTPG_ROOT/.cache/collection"
  log "building and installing the collection fastpg.stack"
  rm -rf "$dest"
  mkdir -p "$dest/build" "$dest/installed"
  "$VENV/bin/ansible-galaxy" collection build --output-path "$dest/build" "$FASTPG_ROOT" >/dev/null
  ANSIBLE_COLLECTIONS_PATH="$dest/installed" \
    "$VENV/bin/ansible-galaxy" collection install --offline --no-deps --force -p "$dest/installed" \
    "$dest"/build/fastpg-stack-*.tar.gz >/dev/null
  export ANSIBLE_COLLECTIONS_PATH="$dest/installed"
  echo "installed $(basename "$dest"/build/fastpg-stack-*.tar.gz) into $ANSIBLE_COLLECTIONS_PATH"
}

build_image() {
  log "base image $FASTPG_IMAGE"
  bash "$FASTPG_ROOT/molecule/resources/build-image.sh" "$FASTPG_IMAGE"
}

# The upgrade scenario's database host: Debian 14 (forky), which ships PostgreSQL 18.
FASTPG_FORKY_IMAGE=${FASTPG_FORKY_IMAGE:-fastpg/debian:forky}
export FASTPG_FORKY_IMAGE
build_forky_image() {
  log "Debian 14 image $FASTPG_FORKY_IMAGE"
  bash "$FASTPG_ROOT/molecule/resources/build-image.sh" "$FASTPG_FORKY_IMAGE" forky
}

# For the scenarios that are not about installing: the image with every tier's packages, and
# a wheelhouse with the app's wheels for the image's Python, mounted into their containers
# (pip installs from it with --no-index). Both are made once and kept.
FASTPG_BAKED_IMAGE=${FASTPG_BAKED_IMAGE:-fastpg/debian:trixie-baked}
export FASTPG_BAKED_IMAGE
build_baked_image() {
  log "package-baked image $FASTPG_BAKED_IMAGE"
  bash "$FASTPG_ROOT/molecule/resources/bake-image.sh" "$FASTPG_IMAGE" "$FASTPG_BAKED_IMAGE"
}

build_wheelhouse() {
  local dir="$FASTPG_ROOT/.cache/wheelhouse" reqs want pyver
  reqs=("$FASTPG_ROOT/roles/fastapi_app/files/requirements-base.txt"
        "$FASTPG_ROOT/roles/fastapi_app/files/reference_app/requirements.txt"
        "$FASTPG_ROOT/tests/apps/requirements-wheelhouse.txt")
  pyver=$(docker run --rm "$FASTPG_IMAGE" python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')
  want=$(cat "${reqs[@]}" | sha256sum | cut -d' ' -f1)-$pyver
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$want" ]; then return 0; fi
  log "wheelhouse for Python $pyver (.cache/wheelhouse)"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$VENV/bin/pip" download -q --only-binary=:all: --implementation cp --python-version "$pyver" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$dir" -r "${reqs[0]}" -r "${reqs[1]}" -r "${reqs[2]}"
  echo "$want" >"$dir/.stamp"
}

# The local target: a systemd container from the test image, port 8000 published on
# 127.0.0.1:$2. Started if stopped, created if absent; returns once systemd has booted.
local_container() {
  local name=$1 port=$2
  if ! docker container inspect "$name" >/dev/null 2>&1; then
    log "starting container $name"
    # systemd as PID 1 without --privileged (see molecule/default/molecule.yml).
    docker run -d --name "$name" --hostname "$name" \
      --cgroupns host --cap-add SYS_ADMIN --cap-add NET_ADMIN \
      --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
      -v /sys/fs/cgroup:/sys/fs/cgroup:rw \
      -p "127.0.0.1:$port:8000" \
      "$FASTPG_IMAGE" /lib/systemd/systemd >/dev/null
  elif [ "$(docker container inspect -f '{{.State.Running}}' "$name")" != true ]; then
    docker start "$name" >/dev/null
  fi
  docker exec "$name" systemctl is-system-running --wait >/dev/null 2>&1 || true
}
