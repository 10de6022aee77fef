"""The roles on their own (tests/local/roles-alone.yml), without site.yml's preparing play:
the path a user's own play takes. A new container and an empty fact cache, then a re-run that
must change nothing."""

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import pytest
from localtarget import ROOT, new_container, recap_changed, remove_container

NAME = os.environ.get("FASTPG_TEST_ROLES_NAME", "fastpg-test-roles")
PORT = int(os.environ.get("FASTPG_TEST_ROLES_PORT", "18001"))
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ansible-playbook"


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


def test_a_new_cluster_that_cannot_start_fails_with_its_journal(tmp_path):
    """The new cluster's start does not block on pg_ctlcluster: a server that never comes up
    must still fail the run, soon, with the reason from its journal, and be left running on the
    configuration it had before (here the packaged one)."""
    name = f"{NAME}-fail"
    env = dict(os.environ, FASTPG_LOCAL_NAME=name, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path))
    try:
        new_container(name, PORT + 1)
        # A valid value (the server's parser accepts it) with more shared memory than the
        # machine has: the postmaster exits at once.
        out = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "inventories/local", "tests/local/roles-alone.yml",
                              "-e", json.dumps({"postgresql_settings": {"shared_buffers": "500GB"}})],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        running = subprocess.run(["docker", "exec", name, "systemctl", "is-active", "postgresql@17-main"],
                                 capture_output=True, text=True).stdout.strip()
        own_file = subprocess.run(["docker", "exec", name, "test", "-e", "/etc/postgresql/17/main/conf.d/50-fastpg.conf"],
                                  capture_output=True).returncode
    finally:
        remove_container(name)
    assert out.returncode != 0
    assert "did not take the new configuration (Service | Wait for the server to accept connections" in out.stdout
    # The reason comes from the server's own lines in the journal.
    assert "Its journal:" in out.stdout and "FATAL" in out.stdout.split("Its journal:", 1)[1]
    # The file it could not start with is gone; the server runs on what it had.
    assert own_file != 0 and running == "active"
