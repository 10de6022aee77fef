"""The README's first command, scripts/up.sh, against the default inventory (inventories/local).

Unlike the Molecule scenarios, this runs under the project's own ansible.cfg, as users do:
`gathering = smart` with a fact cache, so the first play to gather on a host decides its facts
for the run. The local inventory leaves the memory and CPU figures to the host's facts, so a
play that gathers too small a subset first breaks the run. A fresh, empty fact cache and a new
container; then a re-run, which must change nothing.
"""

import json
import os
import re
import subprocess
import urllib.request

import pytest
from localtarget import ROOT, recap_changed, remove_container

NAME = os.environ.get("FASTPG_TEST_LOCAL_NAME", "fastpg-test-local")
PORT = int(os.environ.get("FASTPG_TEST_LOCAL_PORT", "18000"))


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = dict(os.environ, FASTPG_LOCAL_NAME=NAME, FASTPG_LOCAL_PORT=str(PORT),
               ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path_factory.mktemp("facts")))
    remove_container(NAME)
    try:
        first = subprocess.run(["bash", "scripts/up.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
        second = subprocess.run(["bash", "scripts/up.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
        yield first, second
    finally:
        remove_container(NAME)


def test_up_deploys_the_stack_and_prints_its_health(runs):
    first, _ = runs
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert f"fastpg is up: http://127.0.0.1:{PORT}" in first.stdout
    assert '"database":"connected"' in first.stdout
    assert recap_changed(first.stdout) > 0


def test_second_run_changes_nothing(runs):
    _, second = runs
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert recap_changed(second.stdout) == 0, second.stdout.split("PLAY RECAP")[-1]


def test_app_answers_on_the_published_port(runs):
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "healthy" and body["database"] == "connected"


def test_tuning_follows_the_hosts_memory(runs):
    """No postgresql_memory_mb in the local inventory: shared_buffers is a quarter of MemTotal."""
    meminfo = docker("exec", NAME, "cat", "/proc/meminfo").stdout
    memtotal_mb = int(re.search(r"MemTotal:\s+(\d+) kB", meminfo).group(1)) // 1024
    sql = "SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'"
    out = docker("exec", NAME, "runuser", "-u", "postgres", "--", "psql", "-XAtc", sql).stdout
    assert int(out) == memtotal_mb // 4
