"""Preflight: every host's values checked in one pass over hostvars, on the controller.

One filter call for the whole inventory instead of tasks per host, so that the cost grows with
the number of hosts and not with hosts x tasks (1,000 app hosts check in seconds).
"""

import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

# Ranges the argument specs cannot express: (variable, minimum, maximum, also accepted, accepted).
APP_RANGES = [
    ("fastapi_app_pool_size", 1, 1000, None, "a whole number from 1 to 1000"),
    ("fastapi_app_max_overflow", 0, 1000, None, "a whole number from 0 to 1000"),
    ("fastapi_app_pool_timeout", 1, 3600, None, "seconds, a whole number from 1 to 3600"),
    ("fastapi_app_pool_recycle", 1, None, -1, "seconds, a whole number of 1 or more, or -1 to never recycle"),
    ("fastapi_app_workers", 1, 64, None, "a whole number from 1 to 64"),
    ("fastapi_app_port", 1, 65535, None, "a TCP port, 1 to 65535"),
]
DB_RANGES = [
    ("postgresql_max_connections", 10, 262143, None, "a whole number from 10 to 262143"),
    ("postgresql_superuser_reserved_connections", 1, 100, None, "1 to 100"),
]
STACK_RANGES = [
    ("fastpg_db_port", 1, 65535, None, "a TCP port, 1 to 65535"),
]
PLACEHOLDER = re.compile(r"CHANGE_?ME", re.IGNORECASE)
# A database or role name the stack writes into pg_hba.conf, SQL and a URL: no spaces, quotes,
# commas or semicolons (pg_hba.conf would read a comma as a list, a space as the next field).
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def _get(hv, key, default=None):
    try:
        return hv[key] if key in hv else default
    except Exception as exc:  # a template that needs the host's own run context
        raise AnsibleFilterError(f"{key} cannot be read outside a run on its host ({exc}); give it a plain value") from exc


def _validate(host, spec, hv):
    """Errors of the values this host sets, against an argument spec's options."""
    provided = {}
    for key in spec:
        if key in hv:
            provided[key] = _get(hv, key)
    if not provided and not any(o.get("required") for o in spec.values()):
        return []
    result = ArgumentSpecValidator(spec).validate(provided)
    return [f"{host}: {err}" for err in result.error_messages]


def _whole(value):
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return number


def _ranges(host, hv, ranges, defaults):
    errors = []
    for key, low, high, also, accepted in ranges:
        value = _get(hv, key, defaults.get(key))
        number = _whole(value)
        if number is None:
            continue  # the argument spec reports the type
        if (number >= low and (high is None or number <= high)) or (also is not None and number == also):
            continue
        errors.append(f"{key} is {value} on {host}; accepted: {accepted}.")
    return errors


def preflight(hosts, hostvars, groups, specs, defaults, stack):
    """Every error of the hosts in this run, as messages that name the host, variable and fix.

    hosts: the run's hosts; specs: {'app': options, 'db': options}; defaults: the roles' defaults
    {'app': ..., 'db': ...}; stack: stack_spec.yml ({'options': ..., 'renamed': {old: new}}).
    """
    apps = set(groups.get("appservers") or [])
    dbs = set(groups.get("dbservers") or [])
    # The stack sets these role inputs itself (and refuses them from the inventory above).
    specs = {tier: {k: v for k, v in options.items() if k not in stack["renamed"]} for tier, options in specs.items()}
    errors = []
    for host in hosts:
        is_app, is_db = host in apps, host in dbs
        if not (is_app or is_db):
            continue
        hv = hostvars[host]
        for old, new in stack["renamed"].items():
            if old in hv:
                errors.append(f"{host}: {old} is set, but site.yml no longer reads it. Set instead: {new}.")
        errors += _validate(host, stack["options"], hv)
        if is_app:
            errors += _validate(host, specs["app"], hv)
            errors += _ranges(host, hv, APP_RANGES, defaults["app"])
            if _get(hv, "fastapi_app_pool_class", defaults["app"].get("fastapi_app_pool_class")) in (None, "null"):
                errors.append(
                    f"fastapi_app_pool_class is null on {host}: every session then opens its own connection, "
                    f"so the app's connections have no bound and the budget cannot hold. Accepted: queue "
                    f"(a pool of fastapi_app_pool_size + fastapi_app_max_overflow per worker); null only "
                    f"behind a pooler that bounds the connections, which this stack does not deploy yet."
                )
        if is_db:
            errors += _validate(host, specs["db"], hv)
            errors += _ranges(host, hv, DB_RANGES, defaults["db"])
        errors += _ranges(host, hv, STACK_RANGES, {"fastpg_db_port": 5432})
        for key in ("fastpg_db_name", "fastpg_db_user"):
            value = _get(hv, key, "fastpg")
            if isinstance(value, str) and not IDENTIFIER.match(value):
                errors.append(f"{key} is {value!r} on {host}; accepted: letters, digits, _, $ and -, "
                              f"not starting with a digit or -, at most 63 characters.")
        password = _get(hv, "fastpg_db_password")
        if password is not None:
            password = str(password)
            why = ("the example placeholder" if PLACEHOLDER.search(password)
                   else "shorter than 12 characters" if len(password) < 12 else None)
            if why:
                errors.append(
                    f"fastpg_db_password on {host} is {why}. Accepted: a password of 12 or more characters, "
                    f"kept in the inventory with ansible-vault (see inventories/production.example/group_vars/all/vault.yml)."
                )
    return errors


class FilterModule:
    def filters(self):
        return {"preflight": preflight}
