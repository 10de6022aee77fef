"""Several apps on one stack: the entries of fastpg_apps, resolved to the fastapi_app role's inputs.

An entry sets what makes an app itself, under the role's option names without the
fastapi_app_ prefix. What it leaves out is its own default (the user, group, directory, database
and login role follow its name), or, for the pool and workers, the host's value, as the default
app has it. pip, the interpreter, the bind address, timeouts, TLS and the database server are
the host's and shared by its apps.
"""

# What an entry may set; app.yml gives each to the role (playbooks/tasks/apps.yml).
OWN = (
    "name", "user", "group", "dir", "port",
    "source", "source_subdir", "module", "database_module", "requirements_file", "pyproject_extras",
    "requirements", "pre_start", "environment", "secret_environment",
    "database_url_env", "database_url_driver", "database_env",
    "workers", "pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping", "pool_class", "echo",
    "health_path", "health_status", "health_body",
    "db_name", "db_user", "db_password",
)
# Taken from the host (inventory, else the role default) when the entry leaves them out.
FROM_HOST = ("workers", "pool_size", "max_overflow", "pool_timeout", "pool_recycle", "pool_pre_ping", "pool_class",
             "echo")
REQUIRED = ("name", "port", "db_password")


def _named(name):
    """The defaults an entry's name gives: its user, group, directory, database and role."""
    ident = name.replace("-", "_")
    return {"user": name, "group": name, "dir": f"/opt/{name}", "db_name": ident, "db_user": ident}


def app_entries(entries, hv, defaults):
    """Each entry of fastpg_apps with every key of OWN that has a value.

    entries: the host's fastpg_apps; hv: the host's variables (hostvars[host]); defaults: the
    fastapi_app role's defaults (defaults/main.yml, plain values).
    """
    apps = []
    for entry in entries or []:
        if not isinstance(entry, dict):
            continue  # preflight reports it
        app = {key: defaults[f"fastapi_app_{key}"] for key in OWN if f"fastapi_app_{key}" in defaults}
        app.update(_named(str(entry.get("name", ""))))
        for key in FROM_HOST:
            if f"fastapi_app_{key}" in hv:
                app[key] = hv[f"fastapi_app_{key}"]
        app.update(entry)
        apps.append(app)
    return apps


def app_databases(hosts, hostvars, defaults, default_app):
    """The login role and database of the default app and of every fastpg_apps entry of these app
    hosts, each once, as the postgresql role takes them: [{user, database, hba}].

    default_app: {name, user, password} of the default app (fastpg_db_*).
    """
    seen = {(default_app["name"], default_app["user"]): default_app["password"]}
    for host in hosts:
        hv = hostvars[host]
        for app in app_entries(hv["fastpg_apps"] if "fastpg_apps" in hv else [], hv, defaults):
            if app.get("db_password") is not None:
                seen.setdefault((app["db_name"], app["db_user"]), app["db_password"])
    return [{"user": {"name": user, "password": password},
             "database": {"name": name, "owner": user},
             "hba": {"database": name, "user": user}}
            for (name, user), password in seen.items()]


class FilterModule:
    def filters(self):
        return {"app_entries": app_entries, "app_databases": app_databases}
