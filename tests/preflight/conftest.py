"""Runs site.yml against throwaway inventories whose hosts cannot be reached.

The playbooks are the collection's (fastpg.stack.*): the installed copy when
ANSIBLE_COLLECTIONS_PATH names it (scripts/test.sh), else this checkout's (ansible.cfg).
Every host connects through community.docker.docker to a container that does not exist, so
any task that touched a host would end as UNREACHABLE: a run that stops with the preflight
message and no UNREACHABLE proves no task ran on a host.
"""

import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ansible-playbook"

GOOD = {
    "all": {
        "vars": {
            "ansible_connection": "community.docker.docker",
            "ansible_python_interpreter": "/usr/bin/python3",
            "fastpg_db_host": "db1",
            "fastpg_db_password": "a-long-enough-test-secret",
        },
        "children": {
            "dbservers": {"hosts": {"db1": {"ansible_host": "fastpg-absent-db1",
                                            "postgresql_max_connections": 300}}},
            "appservers": {
                "vars": {"fastapi_app_pool_size": 20, "fastapi_app_max_overflow": 30},
                "hosts": {
                    "app1": {"ansible_host": "fastpg-absent-app1"},
                    "app2": {"ansible_host": "fastpg-absent-app2"},
                },
            },
        },
    }
}


def inventory(change=None):
    inv = copy.deepcopy(GOOD)
    if change:
        change(inv["all"])
    return inv


@pytest.fixture
def run_site(tmp_path):
    def run(inv, playbook="fastpg.stack.site", extra=()):
        if isinstance(inv, (str, Path)):
            path = ROOT / inv
        else:
            path = tmp_path / "hosts.yml"
            path.write_text(yaml.safe_dump(inv))
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
            ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory",
            ANSIBLE_NOCOLOR="1",
        )
        env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
        done = subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "-i", str(path), playbook, *extra],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        return done.returncode, done.stdout + done.stderr

    return run
