"""A new cluster whose settings parse but cannot start (tests/local/roles-alone.yml on a new
container). Not about installing: the package-baked image (scripts/lib.sh's build_baked_image)."""

import json
import os
import re
import subprocess

from localtarget import ANSIBLE_PLAYBOOK, ROOT, new_container, remove_container

NAME = os.environ.get("FASTPG_TEST_ROLES_NAME", "fastpg-test-roles") + "-fail"
PORT = int(os.environ.get("FASTPG_TEST_ROLES_PORT", "18001")) + 1


def test_a_new_cluster_that_cannot_start_fails_with_its_journal(tmp_path):
    """The new cluster's start does not block on pg_ctlcluster: a server that never comes up
    must still fail the run, soon, with the reason from its journal, and be left running on the
    configuration it had before (here the packaged one)."""
    # profile_tasks: each task's time, in the recap.
    env = dict(os.environ, FASTPG_LOCAL_NAME=NAME, ANSIBLE_CACHE_PLUGIN_CONNECTION=str(tmp_path),
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks")
    try:
        new_container(NAME, PORT, image=os.environ.get("FASTPG_BAKED_IMAGE", "fastpg/debian:trixie-baked"))
        # A valid value (the server's parser accepts it) with more shared memory than the
        # machine has: the postmaster exits at once.
        out = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", "inventories/local", "tests/local/roles-alone.yml",
                              "-e", json.dumps({"postgresql_settings": {"shared_buffers": "500GB"}})],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        running = subprocess.run(["docker", "exec", NAME, "systemctl", "is-active", "postgresql@17-main"],
                                 capture_output=True, text=True).stdout.strip()
        own_file = subprocess.run(["docker", "exec", NAME, "test", "-e", "/etc/postgresql/17/main/conf.d/50-fastpg.conf"],
                                  capture_output=True).returncode
    finally:
        remove_container(NAME)
    assert out.returncode != 0
    assert "did not take the new configuration (Service | Wait for the server to accept connections" in out.stdout
    # Given up on after its 20 s (and one last try), not after a number of tries.
    waited = float(re.search(r"Service \| Wait for the server to accept connections -+ ([0-9.]+)s",
                             out.stdout.split("PLAY RECAP", 1)[1])[1])
    print(f"\na new cluster that cannot start: the role waited {waited:.1f} s for it")
    assert 15 < waited < 25
    # The reason comes from the server's own lines in the journal.
    assert "Its journal:" in out.stdout and "FATAL" in out.stdout.split("Its journal:", 1)[1]
    # The file it could not start with is gone; the server runs on what it had.
    assert own_file != 0 and running == "active"
