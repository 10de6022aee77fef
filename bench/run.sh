#!/usr/bin/env bash
# The benchmark command: bash bench/run.sh (about 10 minutes; root, like scripts/test.sh).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
cd "$FASTPG_ROOT"
install_host_packages
start_docker
make_venv
build_image
# matplotlib for the charts, pinned here (the only package the benchmark adds).
"$VENV/bin/pip" install -q matplotlib==3.11.2
exec "$VENV/bin/python" bench/bench.py
