#!/usr/bin/env bash
# The whole test suite, against the collection as built and installed (scripts/lib.sh's
# install_collection): lint, the changelog, the reference app's tests against a real PostgreSQL, the
# preflight's bad-inventory table, scripts/up.sh on the default inventory, and `molecule test`
# for the scenarios (one host, multihost, resilience, backups: the PGDG path, restores, the
# upgrade; and ha: Patroni and its drills) on systemd containers.
# On a fresh machine it first installs what it needs (see scripts/lib.sh).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$FASTPG_ROOT"

# What a fresh machine lacks, each step timed (a step whose result is there takes 0 s).
# A failing step stops the run (set -e).
total_start=$SECONDS
timed() {
  local name=$1 start=$SECONDS
  shift
  "$@"
  echo "--- $name: done ($((SECONDS - start)) s)"
}

make_app_venv() {
  local stamp="$APP_VENV/.requirements.sha256" want
  want=$(cat requirements-app-test.txt roles/fastapi_app/files/requirements-base.txt \
    roles/fastapi_app/files/reference_app/requirements.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "building the app test venv (.venv-app)"
    python3 -m venv "$APP_VENV"
    uv_install "$APP_VENV" -r requirements-app-test.txt
    echo "$want" >"$stamp"
  fi
}

APP_VENV="$FASTPG_ROOT/.venv-app"
timed "host packages" install_host_packages with-postgresql
timed "dockerd" start_docker
timed "tool venv" make_venv
timed "base image" build_image
timed "package-baked image" build_baked_image
timed "Debian 14 image" build_forky_image
timed "wheelhouse" build_wheelhouse
timed "app test venv" make_app_venv

# shellcheck disable=SC1091
source "$VENV/bin/activate"
export NO_COLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
# Each playbook run ends with its wall time (converge, idempotence).
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer

# Before anything needs it: every test below uses the installed collection, not the checkout.
timed "collection build and install" install_collection

passed=0 failed=0 failures=()
stage() {
  local name=$1; shift
  log "$name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); echo "--- $name: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "--- $name: FAILED ($((SECONDS - start)) s)"
  fi
}

check_syntax() {
  local inv
  for inv in inventories/local inventories/production.example; do
    ansible-inventory -i "$inv" --graph >/dev/null || return 1
    ansible-playbook -i "$inv" site.yml --syntax-check >/dev/null || return 1
  done
}

stage yamllint yamllint --strict .
stage ansible-lint ansible-lint --strict
stage "inventories and syntax" check_syntax
stage "README variables" python scripts/gen-vars-doc.py --check
stage "changelog fragments" antsibull-changelog lint
stage "app pytest" "$APP_VENV/bin/python" -m pytest -c tests/app/pytest.ini tests/app
# One ansible-playbook per preflight case, one new container per local test file: each worker
# takes its own (pytest-xdist), so the cores share them.
stage "preflight tests" python -m pytest -q -p no:cacheprovider -n auto tests/preflight
stage "platform matrix" python -m pytest -q -p no:cacheprovider tests/matrix
# Both Ansible strategies (scripts/lib.sh use_strategy): the stock one where users start (the
# local target; default, whose one host carries PgBouncer, backups and Prometheus too, so every
# role but etcd, Patroni's path and HAProxy installs and re-runs under it), mitogen_linear for
# the drill scenarios.
# (A stage runs in an `if`, where set -e is off: each step checks its own failure.)
strategy() { use_strategy "$1" || return; shift; "$@"; }
# A worker per test file: while one waits on its container's apt or pip, another has the CPU
# (173 s against 193 with two workers).
stage "local target (up.sh, roles alone)" strategy linear \
  python -m pytest -q -p no:cacheprovider -n 3 --dist loadfile tests/local
stage "molecule default" strategy linear molecule test --scenario-name default
# The benchmark's every measure once (no charts): a change that breaks it fails here.
stage "bench smoke (bench/run.sh smoke)" bash bench/run.sh smoke
stage "molecule multihost" strategy mitogen molecule test --scenario-name multihost
stage "molecule resilience" strategy mitogen molecule test --scenario-name resilience
stage "molecule backups" strategy mitogen molecule test --scenario-name backups
stage "molecule ha" strategy mitogen molecule test --scenario-name ha
use_strategy linear >/dev/null

# Platforms that need a registry image (and PGDG, or their own distribution's mirror): the
# platform scenario, once per image named (Fedora's and Amazon Linux's: built with
# molecule/platform/Containerfile.rpm).
for platform in DEBIAN12 UBUNTU2204 UBUNTU2404 ROCKY9 ALMA9 FEDORA44 FEDORA45 AMAZON2023; do
  var=FASTPG_IMAGE_$platform
  case $platform in
    FEDORA* | AMAZON*) needs="a registry image and the distribution's own mirror" ;;
    *) needs="a registry image and PGDG" ;;
  esac
  if [ -n "${!var:-}" ]; then
    stage "molecule platform ${platform,,}" env FASTPG_PLATFORM_IMAGE="${!var}" molecule test --scenario-name platform
  else
    echo "--- molecule platform ${platform,,}: skipped ($var is not set: needs $needs, out of reach here)"
  fi
done

log "summary"
[ ${#failures[@]} -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "total: $((SECONDS - total_start)) s"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
