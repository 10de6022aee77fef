"""Values typed on the command line: `-e name=value` makes each a string, and every numeric and
boolean input is still used with its spec's type. site.yml given all of them, at the values the
host has, changes nothing. Under mitogen whatever strategy the stage uses (the check is about
values, not strategies; a stock run here would cost a minute of CI)."""

import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from typed_inputs import as_strings, extra_vars, inventory_values  # noqa: E402

ROLES = ("postgresql", "fastapi_app", "pgbouncer", "pgbackrest", "exporters", "prometheus")


def mitogen():
    import ansible_mitogen  # noqa: PLC0415  (the tool venv's, requirements-dev.txt)

    return {"ANSIBLE_STRATEGY": "mitogen_linear",
            "ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")}


def test_site_given_every_numeric_and_boolean_input_as_a_string_changes_nothing(host):
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", **mitogen())
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    env["ANSIBLE_CONFIG"] = str(Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.cfg")
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    name = host.backend.get_hostname()
    values, _ = inventory_values(inventory, [name], env=env)
    typed = as_strings(ROLES, values)
    assert {"fastapi_app_health_timeout", "fastapi_app_echo", "pgbouncer_max_client_conn", "pgbackrest_process_max",
            "prometheus_port", "exporters_node_port", "postgresql_version", "fastpg_backups"} <= set(typed), typed
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", inventory,
                           "fastpg.stack.site", "-e", extra_vars(typed)],
                          env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    recap = re.search(rf"^{re.escape(name)}\s*:.*", out, re.M)
    print(f"\n{len(typed)} inputs given as strings (mitogen): rc {done.returncode}, {recap[0] if recap else ''}")
    assert done.returncode == 0, out[-3000:]
    assert re.search(r"\bchanged=0\b", recap[0]), re.findall(r"changed: \[.*|TASK \[.*", out)[-40:]
