"""The roles' numeric and boolean inputs as a user types them on a command line: `-e name=value`
makes each one a string, whatever its spec says. A run given them at the values the hosts already
have must change nothing: every input is used with its spec's type wherever it came from."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _yaml(path):
    return yaml.safe_load(Path(path).read_text()) or {}


def as_strings(roles, values, leave_out=()):
    """{name: "value"} for every int and bool input of these roles' argument specs and of the
    stack's (playbooks/vars/stack_spec.yml), at its value in `values` (the inventory's values for
    all hosts), else its default. Left out: what the wiring derives from other values (an extra
    var would replace it), what has no plain value (none, or a template), and `leave_out` (values
    that differ between hosts)."""
    options = {}
    for role in roles:
        for entry in _yaml(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"].values():
            options.update({n: (s.get("type"), s.get("default")) for n, s in entry.get("options", {}).items()})
    options.update({n: (s.get("type"), s.get("default"))
                    for n, s in _yaml(ROOT / "playbooks" / "vars" / "stack_spec.yml")["options"].items()})
    defaults = {}
    for role in roles:
        defaults.update(_yaml(ROOT / "roles" / role / "defaults" / "main.yml"))
    derived = set(_yaml(ROOT / "roles" / "wiring" / "vars" / "main.yml"))
    have = {**defaults, **values}
    typed = {}
    for name, (kind, default) in sorted(options.items()):
        value = have.get(name, default)
        if kind not in ("int", "bool") or name in derived or name in leave_out or value is None \
                or "{{" in str(value):
            continue
        typed[name] = str(value).lower() if kind == "bool" else str(int(value))
    return typed


def extra_vars(typed):
    """The one -e argument, name=value pairs: Ansible's key=value form, every value a string."""
    return " ".join(f"{name}={value}" for name, value in typed.items())


def inventory_values(inventory, hosts, env=None):
    """(values every one of `hosts` has alike, names whose values differ between them), from
    ansible-inventory: the inventory's variables as each host sees them, templates unrendered."""
    exe = Path(sys.executable).parent / "ansible-inventory"
    listed = json.loads(subprocess.run([str(exe), "-i", str(inventory), "--list"], env=env, check=True,
                                       capture_output=True, text=True).stdout)["_meta"]["hostvars"]
    seen = [listed.get(host, {}) for host in hosts]
    names = set().union(*seen)
    differ = {n for n in names if any(n not in s or s[n] != seen[0].get(n) for s in seen)}
    return {n: v for n, v in seen[0].items() if n not in differ}, differ
