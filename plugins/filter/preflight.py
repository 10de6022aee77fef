"""Preflight: every host's values checked in one pass over hostvars, on the controller.

One filter call for the whole inventory instead of tasks per host, so that the cost grows with
the number of hosts and not with hosts x tasks (1,000 app hosts check in seconds).
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.fastpg.stack.plugins.filter.apps import OWN, REQUIRED, app_entries
from ansible_collections.fastpg.stack.plugins.filter.requirements import app_requirements

BASE_REQUIREMENTS = Path(__file__).resolve().parents[2] / "roles" / "fastapi_app" / "files" / "requirements-base.txt"

# Ranges the argument specs cannot express: (variable, minimum, maximum, also accepted, accepted).
APP_RANGES = [
    ("fastapi_app_pool_size", 1, 1000, None, "a whole number from 1 to 1000"),
    ("fastapi_app_max_overflow", 0, 1000, None, "a whole number from 0 to 1000"),
    ("fastapi_app_pool_timeout", 1, 3600, None, "seconds, a whole number from 1 to 3600"),
    ("fastapi_app_pool_recycle", 1, None, -1, "seconds, a whole number of 1 or more, or -1 to never recycle"),
    ("fastapi_app_db_connect_timeout", 1, 3600, None, "seconds, a whole number from 1 to 3600"),
    ("fastapi_app_workers", 1, 64, None, "a whole number from 1 to 64"),
    ("fastapi_app_port", 1, 65535, None, "a TCP port, 1 to 65535"),
]
# PgBouncer on an app host (fastpg_pgbouncer). Its apps use asyncpg, which prepares every
# statement: PgBouncer must track them, or transaction pooling fails most requests.
PGBOUNCER_RANGES = [
    ("pgbouncer_listen_port", 1, 65535, None, "a TCP port, 1 to 65535"),
    ("pgbouncer_default_pool_size", 1, 10000, None, "a whole number from 1 to 10000"),
    ("pgbouncer_reserve_pool_size", 0, 10000, None, "a whole number from 0 to 10000"),
    ("pgbouncer_reserve_pool_timeout", 0, 3600, None, "seconds, a whole number from 0 to 3600"),
    ("pgbouncer_max_client_conn", 1, 1000000, None, "a whole number from 1 to 1000000"),
    ("pgbouncer_max_prepared_statements", 1, 100000, None,
     "a whole number from 1 to 100000: the apps' asyncpg prepares every statement, and without PgBouncer "
     "tracking them transaction pooling fails most requests with prepared-statement errors"),
]
DB_RANGES = [
    ("postgresql_max_connections", 10, 262143, None, "a whole number from 10 to 262143"),
    ("postgresql_superuser_reserved_connections", 1, 100, None, "1 to 100"),
    # Patroni's own lower bounds (its configuration check refuses less).
    ("postgresql_patroni_ttl", 20, 86400, None, "seconds, 20 (Patroni's minimum) or more"),
    ("postgresql_patroni_loop_wait", 1, 3600, None, "seconds, 1 or more"),
    ("postgresql_patroni_retry_timeout", 3, 3600, None, "seconds, 3 (Patroni's minimum) or more"),
]
STACK_RANGES = [
    ("fastpg_db_port", 1, 65535, None, "a TCP port, 1 to 65535"),
]
PLACEHOLDER = re.compile(r"CHANGE_?ME", re.IGNORECASE)
# A database or role name the stack writes into pg_hba.conf, SQL and a URL: no spaces, quotes,
# commas or semicolons (pg_hba.conf would read a comma as a list, a space as the next field).
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
# An app of fastpg_apps: its name is a systemd unit's, a system user's and (with _ for -) a role's.
APP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_DICTS = ("fastapi_app_environment", "fastapi_app_secret_environment")
DATABASE_PARTS = ("host", "port", "name", "user", "password")


def _get(hv, key, default=None):
    try:
        return hv[key] if key in hv else default
    except Exception as exc:  # a template that needs the host's own run context
        raise AnsibleFilterError(f"{key} cannot be read outside a run on its host ({exc}); give it a plain value") from exc


def _plain(value):
    """A value read out of its lazy containers. ArgumentSpecValidator deep-copies what it checks,
    and a deep copy of a lazy container copies its templating context too: 2 s a run."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _validate(host, spec, hv):
    """Errors of the values this host sets, against an argument spec's options."""
    provided = {}
    for key in spec:
        if key in hv:
            provided[key] = _plain(_get(hv, key))
    if not provided and not any(o.get("required") for o in spec.values()):
        return []
    result = ArgumentSpecValidator(spec).validate(provided)
    return [f"{host}: {err}" for err in result.error_messages]


def _flag(value):
    """A boolean input as the roles read it (Ansible's `bool`): "false", as `-e name=false` gives
    it, is false."""
    return boolean(_plain(value), strict=False)


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


def _environment(host, hv):
    """The app's environment variables: names systemd and a shell accept, values on one line."""
    errors = []
    names = {}
    for key in ENV_DICTS:
        values = _get(hv, key, {})
        if not isinstance(values, dict):
            continue  # the argument spec reports the type
        for name, value in values.items():
            names.setdefault(name, []).append(key)
            if not ENV_NAME.match(str(name)):
                errors.append(f"{key} on {host} has the name {name!r}; accepted: letters, digits and _, "
                              f"not starting with a digit.")
            if value is None or isinstance(value, (dict, list)) or "\n" in str(value):
                shown = "a value" if key == "fastapi_app_secret_environment" else repr(value)
                errors.append(f"{key} on {host} gives {name} {shown} that is not one line of text; accepted: "
                              f"a string, number or boolean without line breaks.")
    parts = _get(hv, "fastapi_app_database_env", {})
    if isinstance(parts, dict):
        for part, name in parts.items():
            if part not in DATABASE_PARTS:
                errors.append(f"fastapi_app_database_env on {host} has the key {part!r}; accepted: "
                              f"{', '.join(DATABASE_PARTS)}.")
            if not ENV_NAME.match(str(name)):
                errors.append(f"fastapi_app_database_env on {host} names {part} {name!r}; accepted: letters, "
                              f"digits and _, not starting with a digit.")
            names.setdefault(name, []).append("fastapi_app_database_env")
    url = _get(hv, "fastapi_app_database_url_env", "DATABASE_URL")
    if url:
        if not ENV_NAME.match(str(url)):
            errors.append(f"fastapi_app_database_url_env is {url!r} on {host}; accepted: letters, digits and _, "
                          f"not starting with a digit, or empty for none.")
        names.setdefault(url, []).append("fastapi_app_database_url_env")
    for name, keys in sorted(names.items()):
        if len(keys) > 1 or str(name).startswith("FASTPG_"):
            errors.append(f"{name} is set by {' and '.join(keys) if len(keys) > 1 else keys[0]} on {host}; each "
                          f"environment variable may come from one place, and FASTPG_* belong to database.py.")
    return errors


def _app_source(host, hv, seen):
    """An app of the user's own: its root exists on the controller and its requirements can be
    merged (uvicorn new enough, pip options supported). Each distinct app is read once."""
    source = str(_get(hv, "fastapi_app_source", "") or "")
    if not source:
        return []  # the bundled reference app
    subdir = str(_get(hv, "fastapi_app_source_subdir", "") or "").strip("/")
    name = str(_get(hv, "fastapi_app_requirements_file", "") or "")
    extras = tuple(_get(hv, "fastapi_app_pyproject_extras", []) or [])
    extra = tuple(_get(hv, "fastapi_app_requirements", []) or [])
    key = (source, subdir, name, extras, extra)
    if key not in seen:
        root = Path(source, subdir) if subdir else Path(source)
        if not root.is_dir():
            seen[key] = [f"fastapi_app_source{' and fastapi_app_source_subdir' if subdir else ''} on {{host}}: "
                         f"{root} is not a directory on the controller; accepted: the directory holding the app."]
        else:
            if not name:
                name = next((n for n in ("requirements.txt", "pyproject.toml") if (root / n).is_file()), "")
            fmt = "" if not name else "pyproject.toml" if name.endswith("pyproject.toml") else "requirements.txt"
            try:
                if name and not (root / name).is_file():
                    raise AnsibleFilterError(f"fastapi_app_requirements_file is {name!r}, which is not in {root}.")
                app_requirements(BASE_REQUIREMENTS.read_text(), (root / name).read_text() if name else "", fmt,
                                 list(extra), list(extras), f"{subdir + '/' if subdir else ''}{name}")
                seen[key] = []
            except AnsibleFilterError as exc:
                seen[key] = [f"{{host}}: {exc.message}"]
    return [message.format(host=host) for message in seen[key]]


def _app_checks(host, hv, spec, defaults, sources):
    """Every check of one app's fastapi_app_* values (the default app's, or an entry's)."""
    errors = _validate(host, spec, hv)
    errors += _ranges(host, hv, APP_RANGES, defaults)
    pooled = _flag(_get(hv, "fastpg_pgbouncer", False))
    if pooled:
        errors += _ranges(host, hv, PGBOUNCER_RANGES, defaults)
    if _get(hv, "fastapi_app_pool_class", defaults.get("fastapi_app_pool_class")) in (None, "null") and not pooled:
        errors.append(
            f"fastapi_app_pool_class is null on {host}: every session then opens its own connection, "
            f"so the app's connections have no bound and the budget cannot hold. Accepted: queue "
            f"(a pool of fastapi_app_pool_size + fastapi_app_max_overflow per worker); null only "
            f"behind PgBouncer (fastpg_pgbouncer: true on the app host), which bounds the server connections."
        )
    errors += _environment(host, hv)
    errors += _app_source(host, hv, sources)
    return errors


def _password(where, password):
    password = str(password)
    why = ("the example placeholder" if PLACEHOLDER.search(password)
           else "shorter than 12 characters" if len(password) < 12 else None)
    if not why:
        return []
    return [f"{where} is {why}. Accepted: a password of 12 or more characters, kept in the inventory with "
            f"ansible-vault (see inventories/production.example/group_vars/all/vault.yml)."]


def _apps(host, hv, spec, defaults, sources, passwords, owners):
    """The entries of fastpg_apps: each checked as the default app is, under its own name, and
    none sharing a name, port, user or directory with another app of the host."""
    entries = _get(hv, "fastpg_apps", []) or []
    if not isinstance(entries, list):
        return []  # the stack's argument spec reports the type
    errors = []
    taken = {key: {str(_get(hv, f"fastapi_app_{key}", defaults[f"fastapi_app_{key}"])): "the default app"}
             for key in ("name", "port", "user", "dir")}
    own = ", ".join(OWN)
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            errors.append(f"fastpg_apps[{index}] on {host} is {entry!r}; accepted: a mapping of an app's values.")
            continue
        label = f"fastpg_apps[{entry.get('name', index)}]"
        missing = [key for key in REQUIRED if entry.get(key) in (None, "")]
        unknown = sorted(str(key) for key in entry if key not in OWN)
        if missing:
            errors.append(f"{label} on {host} lacks {', '.join(missing)}; accepted: {', '.join(REQUIRED)} "
                          f"are required.")
        if unknown:
            errors.append(f"{label} on {host} sets {', '.join(unknown)}, which an app of fastpg_apps does not "
                          f"set (the host's values are shared by its apps); accepted: {own}.")
        if missing or unknown:
            continue
        name = str(entry["name"])
        if not APP_NAME.match(name):
            errors.append(f"{label} on {host}: the name {name!r} is no service and user name; accepted: lower-case "
                          f"letters, digits, - and _, starting with a letter, at most 32 characters.")
            continue
        app = app_entries([entry], hv, defaults)[0]
        values = {f"fastapi_app_{key}": value for key, value in app.items()}
        values["fastpg_pgbouncer"] = _get(hv, "fastpg_pgbouncer", False)  # the host's, for pool_class null
        found = _app_checks(host, values, {k: v for k, v in spec.items() if k in values}, defaults, sources)
        for key in ("db_name", "db_user"):
            if not (isinstance(app[key], str) and IDENTIFIER.match(app[key])):
                found.append(f"fastapi_app_{key} is {app[key]!r} on {host}; accepted: letters, digits, _, $ and -, "
                             f"not starting with a digit or -, at most 63 characters.")
        found += _password(f"fastapi_app_db_password of {label} on {host}", app["db_password"])
        # Messages name the entry's key, not the role's input it becomes.
        errors += [re.sub(r"\bfastapi_app_(\w+)", rf"{label}.\1", message) for message in found]
        for key, apps in taken.items():
            value = str(app[key])
            if value in apps:
                errors.append(f"{label} on {host} has the {key} {value} of {apps[value]}; each app of a host "
                              f"needs its own name, port, user and directory.")
            apps[value] = label
        login = app["db_user"]
        if passwords.setdefault(login, app["db_password"]) != app["db_password"]:
            errors.append(f"{label} on {host}: the login role {login} has another password in another entry; "
                          f"accepted: one password per db_user.")
        owner = owners.setdefault(app["db_name"], login)
        if owner != login:
            errors.append(f"{label} on {host}: the database {app['db_name']} belongs to the login role {owner} "
                          f"of another app; accepted: a db_name of its own, or that app's db_user too.")
    return errors


TLS_FILES = ("pgbackrest_tls_ca_file", "pgbackrest_tls_cert_file", "pgbackrest_tls_key_file")


def _monitoring_host(groups):
    """One monitoring host at most: the exporters listen for one Prometheus."""
    monitoring = list(groups.get("monitoring") or [])
    if len(monitoring) > 1:
        return [f"monitoring has {len(monitoring)} hosts ({', '.join(monitoring)}); accepted: one monitoring host "
                f"(Prometheus), whose address every exporter listens on."]
    return []


def _backup_host(hostvars, groups):
    """A backup host (backupservers): one, not a database or app host, every database host backed
    up to it, and each side's TLS files on the controller."""
    backup = list(groups.get("backupservers") or [])
    if not backup:
        return []
    errors = []
    if len(backup) > 1:
        errors.append(f"backupservers has {len(backup)} hosts ({', '.join(backup)}); accepted: one backup host, "
                      f"which holds the repository of every database host.")
    others = [h for h in backup if h in (groups.get("dbservers") or []) or h in (groups.get("appservers") or [])]
    if others:
        errors.append(f"{', '.join(others)} is in backupservers and in dbservers or appservers; accepted: a backup "
                      f"host of its own (a repository on the database host needs no backup host).")
    for host in groups.get("dbservers") or []:
        if not _flag(_get(hostvars[host], "fastpg_backups", False)):
            errors.append(f"fastpg_backups is false on {host}, but backupservers has {backup[0]}; accepted: "
                          f"fastpg_backups: true on every database host when there is a backup host.")
    for host in backup[:1] + list(groups.get("dbservers") or []):
        for key in TLS_FILES:
            path = _get(hostvars[host], key, "")
            if not path or not os.path.isfile(str(path)):
                errors.append(f"{key} is {path!r} on {host}; accepted: the path on the controller of a PEM file "
                              f"(with a backup host, pgBackRest's hosts talk over TLS with certificates of one CA).")
    return errors


PATRONI_PASSWORDS = ("fastpg_replication_password", "fastpg_rewind_password", "fastpg_patroni_api_password")


def _patroni(hostvars, groups):
    """fastpg_patroni: on every database host or none, 3 or 5 of them (etcd's majority survives one
    loss), its passwords set, and Patroni's timings consistent."""
    dbs = list(groups.get("dbservers") or [])
    on = [h for h in dbs if _flag(_get(hostvars[h], "fastpg_patroni", False))]
    if not on:
        return []
    errors = []
    off = [h for h in dbs if h not in on]
    if off:
        errors.append(f"fastpg_patroni is true on {', '.join(on)} but not on {', '.join(off)}; accepted: true on "
                      f"every database host (they are one cluster) or on none.")
    if len(dbs) not in (3, 5):
        errors.append(f"fastpg_patroni is true, and dbservers has {len(dbs)} hosts; accepted: 3 or 5 database hosts "
                      f"(etcd runs on each, and a majority of them must survive the loss of one).")
    for host in on:
        hv = hostvars[host]
        for key in PATRONI_PASSWORDS:
            password = _get(hv, key)
            errors += (_password(f"{key} on {host}", password) if password is not None else
                       [f"{key} is not set on {host}; accepted: a password of 12 or more characters, kept in the "
                        f"inventory with ansible-vault (fastpg_patroni needs it)."])
        # Each member archives when it is the primary: to one repository, off the members.
        if _flag(_get(hv, "fastpg_backups", False)) and not groups.get("backupservers"):
            errors.append(f"fastpg_backups is true on {host}, which is in a Patroni cluster (fastpg_patroni), and "
                          f"there is no backup host; accepted: one host in backupservers (the repository every member "
                          f"archives to, whichever is the primary), or fastpg_backups false.")
        ttl, wait, retry = (_whole(_get(hv, f"postgresql_patroni_{k}", d))
                            for k, d in (("ttl", 20), ("loop_wait", 3), ("retry_timeout", 5)))
        if None not in (ttl, wait, retry) and ttl < wait + 2 * retry:
            errors.append(f"postgresql_patroni_ttl is {ttl} on {host}; accepted: at least postgresql_patroni_loop_wait "
                          f"+ 2 x postgresql_patroni_retry_timeout ({wait + 2 * retry}), or a member loses the leader "
                          f"key while it still retries etcd.")
    return errors


LOOPBACK_BIND = ("127.0.0.1", "localhost", "::1")


def _front_door(hostvars, groups):
    """A front door (loadbalancers): hosts of their own, their certificate and key on the
    controller, and app hosts it can reach (not bound to loopback)."""
    lbs = list(groups.get("loadbalancers") or [])
    if not lbs:
        return []
    errors = []
    tiers = set(groups.get("appservers") or []) | set(groups.get("dbservers") or [])
    shared = [h for h in lbs if h in tiers]
    if shared:
        errors.append(f"{', '.join(shared)} is in loadbalancers and in dbservers or appservers; accepted: load "
                      f"balancers of their own (HAProxy's configuration there is the front door's).")
    for host in lbs:
        for key in ("haproxy_front_door_certificate", "haproxy_front_door_key"):
            path = _get(hostvars[host], key, "")
            if not path or not os.path.isfile(str(path)):
                errors.append(f"{key} is {path!r} on {host}; accepted: the path on the controller of a PEM file "
                              f"(the front door terminates TLS with it).")
    for host in groups.get("appservers") or []:
        bind = str(_get(hostvars[host], "fastapi_app_bind_address", "127.0.0.1"))
        if bind in LOOPBACK_BIND:
            errors.append(f"fastapi_app_bind_address is {bind!r} on {host}, behind the load balancers "
                          f"({', '.join(lbs)}); accepted: an address they reach, such as 0.0.0.0 or the host's own.")
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
    sources, passwords, owners = {}, {}, {}
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
            errors += _app_checks(host, hv, specs["app"], defaults["app"], sources)
            owners.setdefault(str(_get(hv, "fastpg_db_name", "fastpg")), str(_get(hv, "fastpg_db_user", "fastpg")))
            errors += _apps(host, hv, specs["app"], defaults["app"], sources, passwords, owners)
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
            errors += _password(f"fastpg_db_password on {host}", password)
    return (errors + _backup_host(hostvars, groups) + _monitoring_host(groups) + _patroni(hostvars, groups)
            + _front_door(hostvars, groups))


class FilterModule:
    def filters(self):
        return {"preflight": preflight}
