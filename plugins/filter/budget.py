"""The connection budget across app hosts and their database hosts (preflight)."""

from ansible.errors import AnsibleFilterError
from ansible_collections.fastpg.stack.plugins.filter.apps import app_entries

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _value(name, hv, defaults, key):
    try:
        return hv[key] if key in hv else defaults[key]
    except Exception as exc:  # a template that needs the host's own run context
        raise AnsibleFilterError(
            f"{key} of {name} cannot be read outside a run on {name} ({exc}); "
            f"include {name} in the run or give {key} a plain value"
        ) from exc


def _whole(name, key, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise AnsibleFilterError(f"{key} is {value!r} on {name}; accepted: a whole number")
    return number


def pool_rows(hosts, hostvars, defaults, dbservers):
    """Each app's pool values on each app host: the default app's (the host's own, its groups',
    else the role defaults), then those of its fastpg_apps entries.

    Read from the inventory for every app host, so a --limit run still adds up all of them.
    """
    rows = []
    for name in hosts:
        hv = hostvars[name]
        host = {"host": name, "db_host": str(_value(name, hv, defaults, "fastpg_db_host")),
                "in_dbservers": name in dbservers}
        rows.append({
            **host, "app": str(_value(name, hv, defaults, "fastapi_app_name")),
            **{short: _whole(name, key, _value(name, hv, defaults, key)) for short, key in (
                ("workers", "fastapi_app_workers"),
                ("pool_size", "fastapi_app_pool_size"),
                ("max_overflow", "fastapi_app_max_overflow"))},
        })
        for app in app_entries(hv["fastpg_apps"] if "fastpg_apps" in hv else [], hv, defaults):
            label = f"fastpg_apps entry {app.get('name')!r} of {name}"
            rows.append({**host, "app": str(app.get("name")),
                         **{key: _whole(label, key, app[key]) for key in ("workers", "pool_size", "max_overflow")}})
    return rows


def db_rows(hosts, hostvars, defaults):
    """Each database host's limits; cores only when known without touching it."""
    rows = []
    for name in hosts:
        hv = hostvars[name]
        facts = hv["ansible_facts"] if "ansible_facts" in hv else {}
        cpus = hv["postgresql_cpus"] if "postgresql_cpus" in hv else facts.get("processor_vcpus")
        rows.append({
            "host": name,
            "address": str(hv["ansible_host"]) if "ansible_host" in hv else name,
            "max_connections": _whole(name, "postgresql_max_connections",
                                      _value(name, hv, defaults, "postgresql_max_connections")),
            "superuser_reserved": _whole(name, "postgresql_superuser_reserved_connections",
                                         _value(name, hv, defaults, "postgresql_superuser_reserved_connections")),
            "cpus": int(cpus) if str(cpus or "").isdigit() else None,
        })
    return rows


def resolve_db_hosts(apps, dbs):
    """Map each app host to the dbservers host its fastpg_db_host names.

    apps: [{host, db_host, in_dbservers}]; dbs: [{host, address}]
    Returns ({app: db}, [error, ...]).
    """
    by_name = {}
    for db in dbs:
        by_name[db["host"]] = db["host"]
        if db.get("address"):
            by_name[str(db["address"])] = db["host"]
    resolved, errors = {}, []
    known = ", ".join(
        f"{d['host']} ({d['address']})" if d.get("address") and d["address"] != d["host"] else d["host"]
        for d in dbs
    ) or "none: the dbservers group is empty"
    for app in apps:
        target = str(app.get("db_host") or "")
        if target in LOOPBACK and app.get("in_dbservers"):
            resolved[app["host"]] = app["host"]
        elif target in by_name:
            resolved[app["host"]] = by_name[target]
        else:
            why = "is not set" if not target else f"is '{target}', which is no dbservers host"
            if target in LOOPBACK:
                why = f"is '{target}', but {app['host']} is not in dbservers"
            if any(e.startswith(f"{app['host']}: ") for e in errors):
                continue  # the host's other apps
            errors.append(
                f"{app['host']}: fastpg_db_host {why}. Accepted: the inventory name or "
                f"ansible_host of a dbservers host [{known}], or 127.0.0.1/localhost when the "
                f"app host is itself in dbservers."
            )
    return resolved, errors


def connection_budget(apps, dbs, allowance=10, active_factor=4):
    """Peak connections of every app host against max_connections of its database host.

    apps: [{host, app, db_host, in_dbservers, workers, pool_size, max_overflow}], a row per app
    dbs:  [{host, address, max_connections, superuser_reserved, cpus (or None)}]
    App hosts that resolve to no database host are left out (resolve_db_hosts reports them).
    """
    resolved, _ = resolve_db_hosts(apps, dbs)
    apps = [{**a, "db": resolved[a["host"]]} for a in apps if a["host"] in resolved]
    rows = []
    for a in sorted(apps, key=lambda a: (a["db"], a["host"])):
        workers, size, over = int(a["workers"]), int(a["pool_size"]), int(a["max_overflow"])
        rows.append({"host": a["host"], "app": a.get("app", ""), "db": a["db"],
                     "workers": workers, "pool_size": size, "max_overflow": over,
                     "peak": workers * (size + over), "steady": workers * size})
    databases, warnings = [], []
    for d in sorted(dbs, key=lambda d: d["host"]):
        mine = [r for r in rows if r["db"] == d["host"]]
        peak = sum(r["peak"] for r in mine)
        steady = sum(r["steady"] for r in mine)
        reserved = int(d["superuser_reserved"]) + int(allowance)
        limit = int(d["max_connections"])
        total = peak + reserved
        databases.append({"host": d["host"], "peak": peak, "steady": steady, "reserved": reserved,
                          "superuser_reserved": int(d["superuser_reserved"]), "allowance": int(allowance),
                          "total": total, "limit": limit, "ok": total <= limit, "apps": len(mine)})
        if d.get("cpus") and mine:
            active = 2 * int(d["cpus"]) + 1
            if steady > active_factor * active:
                warnings.append(
                    f"{d['host']}: the pools keep {steady} connections open at steady state, over "
                    f"{active_factor}x the {active} that {d['cpus']} cores serve actively "
                    f"(2 x cores + 1 spindle). Most will wait on locks and CPU; smaller pools or "
                    f"PgBouncer serve more requests per second."
                )
    ok = all(db["ok"] for db in databases)
    return {"ok": ok, "rows": rows, "databases": databases, "warnings": warnings,
            "report": report(rows, databases, ok)}


def report(rows, databases, ok):
    head = ["app host", "app", "database", "workers", "pool_size", "max_overflow", "peak", "steady"]
    body = [[r["host"], r["app"], r["db"], r["workers"], r["pool_size"], r["max_overflow"], r["peak"], r["steady"]]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    lines = ["Connection budget: peak = workers x (pool_size + max_overflow) per app and app host",
             fmt.format(*head).rstrip()]
    lines += [fmt.format(*map(str, b)).rstrip() for b in body]
    for db in databases:
        verdict = "ok" if db["ok"] else f"OVER by {db['total'] - db['limit']}"
        lines.append(
            f"{db['host']}: {db['peak']} app peak + {db['superuser_reserved']} superuser_reserved_connections "
            f"+ {db['allowance']} fastpg_reserved_connections = {db['total']} of "
            f"postgresql_max_connections {db['limit']}: {verdict}"
        )
    if not ok:
        lines += [
            "Ways out:",
            "  - lower fastapi_app_pool_size and/or fastapi_app_max_overflow (per group or host)",
            "  - lower fastapi_app_workers on the app hosts",
            "  - raise postgresql_max_connections on the database host (a restart; memory per connection)",
            "  - put PgBouncer (transaction pooling) between the apps and PostgreSQL",
        ]
    return lines


class FilterModule:
    def filters(self):
        return {
            "resolve_db_hosts": resolve_db_hosts,
            "connection_budget": connection_budget,
            "pool_rows": pool_rows,
            "db_rows": db_rows,
        }
