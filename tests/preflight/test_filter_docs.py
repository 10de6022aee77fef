"""Every filter the collection ships has its documentation (`ansible-doc -t filter fastpg.stack.NAME`)."""

import ast
from pathlib import Path

import yaml

FILTERS = Path(__file__).resolve().parents[2] / "plugins" / "filter"


def shipped():
    """The names each FilterModule.filters() returns, read from the source."""
    names = set()
    for source in FILTERS.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name == "filters":
                returned = next(n.value for n in ast.walk(node) if isinstance(n, ast.Return))
                names |= {key.value for key in returned.keys}
    return names


def test_every_filter_has_its_documentation():
    names = shipped()
    assert {"app_entries", "error_tail", "preflight"} <= names
    missing = sorted(n for n in names if not (FILTERS / f"{n}.yml").is_file())
    assert not missing, f"filters without plugins/filter/NAME.yml: {missing}"
    for name in names:
        doc = yaml.safe_load((FILTERS / f"{name}.yml").read_text())["DOCUMENTATION"]
        assert doc["name"] == name and doc["short_description"] and doc["options"]["_input"], name
