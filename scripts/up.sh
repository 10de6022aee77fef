#!/usr/bin/env bash
# Deploy the stack to the local default target: one systemd container (fastpg-local) made
# from the locally built Debian 13 image, then `ansible-playbook -i inventories/local fastpg.stack.site`.
# Prints the app's URL and its /health answer. Safe to run again.
#   FASTPG_LOCAL_PORT  host port published on 127.0.0.1 (default 8000)
#   FASTPG_LOCAL_NAME  the container's name (default fastpg-local; the inventory follows it)
#   FASTPG_STRATEGY    linear (Ansible's own, the default) or mitogen (README: the mitogen strategy)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$FASTPG_ROOT"

name=${FASTPG_LOCAL_NAME:-fastpg-local}
port=${FASTPG_LOCAL_PORT:-8000}

install_host_packages
start_docker
make_venv
use_strategy
build_image

local_container "$name" "$port"

log "ansible-playbook -i inventories/local fastpg.stack.site"
mkdir -p inventories/local/.secrets && chmod 0700 inventories/local/.secrets
# fastpg.stack.site: this checkout's collection (ansible.cfg's collections path), or the
# installed one when ANSIBLE_COLLECTIONS_PATH names it (scripts/test.sh does).
# The container's name as a plain value too: mitogen_linear does not render the inventory's
# templated ansible_host.
"$VENV/bin/ansible-playbook" -i inventories/local -e "ansible_host=$name" fastpg.stack.site "$@"

url="http://127.0.0.1:$port"
log "fastpg is up: $url"
for _ in $(seq 1 15); do
  if health=$(python3 -c 'import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=5).read().decode())' "$url/health" 2>/dev/null); then
    echo "GET $url/health -> $health"
    exit 0
  fi
  sleep 1
done
echo "GET $url/health did not answer" >&2
exit 1
