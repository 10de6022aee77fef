"""The roles on their own (tests/local/roles-alone.yml), without site.yml's preparing play:
the path a user's own play takes. A new container and an empty fact cache, then a re-run that
must change nothing."""

import json
import os
import subprocess
import urllib.request

import pytest
from localtarget import ANSIBLE_PLAYBOOK, ROOT, new_container, recap_changed, remove_container

NAME = os.environ.get("FASTPG_TEST_ROLES_NAME", "fastpg-test-roles")
PORT = int(os.environ.get("FASTPG_TEST_ROLES_PORT", "18001"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    env = dict(os.environ, FASTPG_LOCAL_NAME=NAME,
               ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path_factory.mktemp("facts")))
    try:
        new_container(NAME, PORT)
        play = [str(ANSIBLE_PLAYBOOK), "-i", "inventories/local", "tests/local/roles-alone.yml"]
        first = subprocess.run(play, cwd=ROOT, env=env, capture_output=True, text=True)
        second = subprocess.run(play, cwd=ROOT, env=env, capture_output=True, text=True)
        yield first, second
    finally:
        remove_container(NAME)


def test_roles_alone_deploy_a_healthy_stack(runs):
    first, _ = runs
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    assert recap_changed(first.stdout) > 0
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=10) as resp:
        assert json.load(resp)["database"] == "connected"


def test_roles_alone_re_run_changes_nothing(runs):
    _, second = runs
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    assert recap_changed(second.stdout) == 0, second.stdout.split("PLAY RECAP")[-1]
