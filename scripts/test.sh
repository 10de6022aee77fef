#!/usr/bin/env bash
# The whole test suite, against the collection as built and installed (scripts/lib.sh's
# install_collection): lint, the changelog, the reference app's tests against a real PostgreSQL, the
# preflight's bad-inventory table, scripts/up.sh on the default inventory, and `molecule test`
# for the scenarios (one host, multihost, the PGDG path, resilience) on systemd containers.
# On a fresh machine it first installs what it needs (see scripts/lib.sh).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$FASTPG_ROOT"

install_host_packages with-postgresql
start_docker
make_venv
build_image
build_baked_image
build_wheelhouse

APP_VENV="$FASTPG_ROOT/.venv-app"
stamp="$APP_VENV/.requirements.sha256"
want=$(cat requirements-app-test.txt roles/fastapi_app/files/requirements-base.txt \
  roles/fastapi_app/files/reference_app/requirements.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "building the app test venv (.venv-app)"
  python3 -m venv "$APP_VENV"
  "$APP_VENV/bin/pip" install -q -r requirements-app-test.txt
  echo "$want" >"$stamp"
fi

# shellcheck disable=SC1091
source "$VENV/bin/activate"
export NO_COLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0
# Each playbook run ends with its wall time (converge, idempotence).
export ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer

# Before anything needs it: every test below uses the installed collection, not the checkout.
start=$SECONDS
install_collection
echo "--- collection build and install: ok ($((SECONDS - start)) s)"

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
stage "preflight tests" python -m pytest -q -p no:cacheprovider tests/preflight
stage "platform matrix" python -m pytest -q -p no:cacheprovider tests/matrix
stage "local target (up.sh, roles alone)" python -m pytest -q -p no:cacheprovider tests/local
stage "molecule default" molecule test --scenario-name default
stage "molecule multihost" molecule test --scenario-name multihost
stage "molecule pgdg-mirror" molecule test --scenario-name pgdg-mirror
stage "molecule resilience" molecule test --scenario-name resilience

# Platforms that need a registry image and PGDG: the platform scenario, once per image named.
for platform in DEBIAN12 UBUNTU2204 UBUNTU2404 ROCKY9 ALMA9; do
  var=FASTPG_IMAGE_$platform
  if [ -n "${!var:-}" ]; then
    stage "molecule platform ${platform,,}" env FASTPG_PLATFORM_IMAGE="${!var}" molecule test --scenario-name platform
  else
    echo "--- molecule platform ${platform,,}: skipped ($var is not set: needs a registry image and PGDG, out of reach here)"
  fi
done

log "summary"
[ ${#failures[@]} -eq 0 ] || echo "failed stages: ${failures[*]}"
echo "stages: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
