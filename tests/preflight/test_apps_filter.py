"""fastpg_apps: the entries resolved to the role's inputs (plugins/filter/apps.py), and the
include that gives them to the role (playbooks/tasks/apps.yml)."""

import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":")[0] or str(ROOT / "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.fastpg.stack.plugins.filter.apps import OWN, app_databases, app_entries  # noqa: E402

DEFAULTS = yaml.safe_load((ROOT / "roles" / "fastapi_app" / "defaults" / "main.yml").read_text())
SPEC = yaml.safe_load((ROOT / "roles" / "fastapi_app" / "meta" / "argument_specs.yml").read_text())


def test_the_include_gives_the_role_every_value_an_entry_may_set_and_no_other():
    tasks = yaml.safe_load((ROOT / "playbooks" / "tasks" / "apps.yml").read_text())
    given = next(t for t in tasks if "loop" in t)["vars"]
    assert given == {f"fastapi_app_{key}": "{{ __fastpg_app.%s }}" % key for key in OWN}


def test_every_value_an_entry_may_set_is_an_option_of_the_role():
    options = SPEC["argument_specs"]["main"]["options"]
    assert [key for key in OWN if f"fastapi_app_{key}" not in options] == []


def test_an_entry_takes_its_own_defaults_and_the_hosts_pool():
    host = {"fastapi_app_pool_size": 6, "fastapi_app_environment": {"DEFAULT_ONLY": "1"}, "fastapi_app_port": 9000}
    [app] = app_entries([{"name": "my-notes", "port": 8001, "db_password": "x" * 12, "workers": 1}], host, DEFAULTS)
    assert (app["user"], app["group"], app["dir"]) == ("my-notes", "my-notes", "/opt/my-notes")
    assert (app["db_name"], app["db_user"]) == ("my_notes", "my_notes")
    # The host's pool, its own workers; never the default app's environment or port.
    assert (app["pool_size"], app["max_overflow"], app["workers"]) == (6, DEFAULTS["fastapi_app_max_overflow"], 1)
    assert app["environment"] == {} and app["port"] == 8001
    assert app["source"] == "" and app["pre_start"] is None and app["health_path"] == "/health"


def test_every_login_role_and_database_is_made_once():
    entry = {"name": "notes", "port": 8001, "db_password": "notes-long-secret"}
    hostvars = {"app1": {"fastpg_apps": [entry]}, "app2": {"fastpg_apps": [entry]}, "app3": {}}
    made = app_databases(["app1", "app2", "app3"], hostvars, DEFAULTS,
                         {"name": "fastpg", "user": "fastpg", "password": "default-long-secret"})
    assert made == [
        {"user": {"name": "fastpg", "password": "default-long-secret"}, "database": {"name": "fastpg", "owner": "fastpg"},
         "hba": {"database": "fastpg", "user": "fastpg"}},
        {"user": {"name": "notes", "password": "notes-long-secret"}, "database": {"name": "notes", "owner": "notes"},
         "hba": {"database": "notes", "user": "notes"}},
    ]
