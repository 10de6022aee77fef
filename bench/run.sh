#!/usr/bin/env bash
# The benchmark command: bash bench/run.sh (about 20 minutes; root, like scripts/test.sh).
# bash bench/run.sh smoke: one sample of each figure, for CI; preflight and load as
# bench/bench.py takes them. Mitogen, for the strategy column, comes with the tool venv
# (requirements-dev.txt).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$FASTPG_ROOT"
install_host_packages
start_docker
make_venv
build_image
# matplotlib for the charts, pinned here (the only package the benchmark adds); only the
# full run draws them.
[ $# -gt 0 ] || "$VENV/bin/pip" install -q matplotlib==3.11.2
exec "$VENV/bin/python" bench/bench.py "$@"
