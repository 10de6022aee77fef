"""Prometheus's scrape targets (plugins/filter/hosts.py's scrape_targets)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":")[0] or str(ROOT / "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.fastpg.stack.plugins.filter.hosts import scrape_targets  # noqa: E402

HOSTVARS = {
    "mon": {"fastapi_app_bind_address": "127.0.0.1", "fastpg_address": "10.0.0.9"},
    "app1": {"fastapi_app_bind_address": "0.0.0.0", "fastpg_address": "10.0.0.1", "fastapi_app_port": 8080},
    "app2": {"fastpg_address": "10.0.0.2"},  # the role's default: loopback
}


def test_an_app_on_loopback_is_scraped_only_by_its_own_host():
    got = scrape_targets(["mon", "app1", "app2"], HOSTVARS, "mon", 8000, "fastapi_app_port", "fastapi_app_bind_address")
    assert got == [{"host": "mon", "address": "127.0.0.1:8000"}, {"host": "app1", "address": "10.0.0.1:8080"}]


def test_without_a_bound_variable_every_host_is_a_target():
    got = scrape_targets(["mon", "app2"], HOSTVARS, "app2", 9100)
    assert got == [{"host": "mon", "address": "10.0.0.9:9100"}, {"host": "app2", "address": "127.0.0.1:9100"}]


def test_an_app_on_ipv6_loopback_is_scraped_there_by_its_own_host():
    hostvars = {"mon": {"fastapi_app_bind_address": "::1", "fastpg_address": "10.0.0.9"}}
    got = scrape_targets(["mon"], hostvars, "mon", 8000, "fastapi_app_port", "fastapi_app_bind_address")
    assert got == [{"host": "mon", "address": "[::1]:8000"}]
