#!/usr/bin/env python3
"""Render the README's variable tables from the stack's and the roles' argument specs.

    scripts/gen-vars-doc.py           rewrite README.md between the VARIABLES markers
    scripts/gen-vars-doc.py --check   exit 1 when README.md is out of date
"""

import json
import sys
from pathlib import Path

import jinja2
import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- BEGIN VARIABLES (scripts/gen-vars-doc.py) -->", "<!-- END VARIABLES -->"
ROLES = ["postgresql", "etcd", "pgbackrest", "pgbouncer", "haproxy", "fastapi_app", "exporters", "prometheus"]


def cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def show_default(name, spec, defaults) -> str:
    if spec.get("required"):
        return "**required**"
    value = defaults.get(name, spec.get("default"))
    if value is None:
        return ""
    if spec.get("no_log"):
        return "(secret)"
    shown = json.dumps(value) if value == "" or not isinstance(value, str) else value
    return "`" + cell(shown) + "`"


def rows(options, defaults, prefix=""):
    """One row per option; a list of dicts adds a row per entry option (name[].option)."""
    out = []
    for var, opt in options.items():
        desc = opt.get("description", "")
        out.append({
            "name": prefix + var,
            "type": opt.get("type", "str") + (f" of {opt['elements']}" if opt.get("elements") else ""),
            "choices": opt.get("choices"),
            "default": show_default(var, opt, defaults if not prefix else {}),
            "description": cell(" ".join(desc) if isinstance(desc, list) else desc),
        })
        if opt.get("options"):
            out += rows(opt["options"], {}, prefix + var + ("[]." if opt.get("type") == "list" else "."))
    return out


def load_role(name):
    base = ROOT / "roles" / name
    spec = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text()) or {}
    return {"title": f"Role `{name}`", "short_description": spec.get("short_description", ""),
            "options": rows(spec["options"], defaults)}


def load_stack():
    spec = yaml.safe_load((ROOT / "playbooks" / "vars" / "stack_spec.yml").read_text())
    return {"title": "The stack (`playbooks/vars/stack_spec.yml`)",
            "short_description": "Mapped onto both roles by `roles/wiring/vars/main.yml`; checked by preflight.",
            "options": rows(spec["options"], {}),
            "renamed": spec["renamed"]}


def render() -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    template = env.from_string((ROOT / "templates" / "variables.md.j2").read_text())
    return template.render(roles=[load_stack()] + [load_role(r) for r in ROLES]).strip() + "\n"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{render()}{END}{tail}"
    if "--check" in sys.argv:
        if new != text:
            print("README.md variable tables are out of date: run scripts/gen-vars-doc.py", file=sys.stderr)
            return 1
        print("README.md variable tables match the argument specs")
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
