"""Every supported platform's package names, services, paths and repositories, resolved by the
roles' own variables.yml from recorded facts (no host needed)."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ansible-playbook"
PLATFORMS = sorted(yaml.safe_load((HERE / "facts.yml").read_text()))

# Extra hosts: one platform with inputs that must be refused or that change the repository.
VARIANTS = {
    "debian13-pg16-distro": ("debian13", {"postgresql_version": 16}),
    "debian13-pg18-pgdg": ("debian13", {"postgresql_version": 18, "postgresql_repository": "pgdg"}),
    "debian12-distro": ("debian12", {"postgresql_repository": "distro"}),
    "debian14-pg18-distro": ("debian14", {"postgresql_version": 18, "postgresql_repository": "distro"}),
    "debian14-distro": ("debian14", {"postgresql_repository": "distro"}),
    "rocky9-pg16-mirror": ("rocky9", {"postgresql_version": 16,
                                      "postgresql_pgdg_dnf_url": "https://mirror.internal/pgdg/16/el9",
                                      "postgresql_pgdg_dnf_key": "https://mirror.internal/pgdg/key"}),
    "ubuntu2404-mirror": ("ubuntu2404", {"postgresql_pgdg_apt_url": "https://mirror.internal/apt",
                                         "postgresql_pgdg_apt_key": "/etc/apt/keyrings/internal.asc"}),
    "fedora44-pg18": ("fedora44", {"postgresql_version": 18}),
    "fedora45-pgdg": ("fedora45", {"postgresql_repository": "pgdg"}),
    "amazon2023-pg16": ("amazon2023", {"postgresql_version": 16}),
    "amazon2023-pg18": ("amazon2023", {"postgresql_version": 18}),
    "fedora44-upgrade": ("fedora44", {"postgresql_version": 18, "postgresql_upgrade_from": 17,
                                      "matrix_upgrade_check": True}),
}


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    out = tmp_path_factory.mktemp("resolved")
    hosts = {name: {"platform": name} for name in PLATFORMS}
    for name, (platform, extra) in VARIANTS.items():
        hosts[name] = {"platform": platform, **extra}
    inventory = out / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_LIBRARY=str(HERE / "library"), ANSIBLE_CACHE_PLUGIN="ansible.builtin.memory",
               ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    done = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(HERE / "resolve.yml"),
                           "-e", f"out_dir={out}"], env=env, capture_output=True, text=True, timeout=300)
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return results, re.sub(r"\s+", " ", done.stdout + done.stderr)


EXPECTED = {
    "debian12": dict(repository="pgdg", service="postgresql@17-main", apt_suite="bookworm-pgdg",
                     data_dir="/var/lib/postgresql/17/main", hba_file="/etc/postgresql/17/main/pg_hba.conf",
                     packages=["postgresql-17", "postgresql-client-17", "python3-psycopg2"]),
    "debian13": dict(repository="distro", service="postgresql@17-main",
                     include_dir="/etc/postgresql/17/main/conf.d", bin_dir="/usr/lib/postgresql/17/bin"),
    "debian14": dict(repository="pgdg", service="postgresql@17-main", apt_suite="forky-pgdg",
                     data_dir="/var/lib/postgresql/17/main"),
    "debian14-pg18-distro": dict(repository="distro", service="postgresql@18-main",
                                 packages=["postgresql-18", "postgresql-client-18", "python3-psycopg2"]),
    "ubuntu2204": dict(repository="pgdg", apt_suite="jammy-pgdg", repo_file="/etc/apt/sources.list.d/pgdg.sources",
                       app_packages=["python3", "python3-venv", "python3-packaging", "dbus", "rsync"]),
    "ubuntu2404": dict(repository="pgdg", apt_suite="noble-pgdg", repo_packages=["python3-debian", "ca-certificates"]),
    "rocky8": dict(repository="pgdg", service="postgresql-17", packages=["postgresql17-server", "postgresql17",
                                                                          "python3.11-psycopg2"],
                   disable_dnf_module=True, app_python="/usr/bin/python3.11",
                   dnf_url="https://download.postgresql.org/pub/repos/yum/17/redhat/rhel-8-x86_64"),
    "rocky9": dict(repository="pgdg", service="postgresql-17", data_dir="/var/lib/pgsql/17/data",
                   include_dir="/var/lib/pgsql/17/data/conf.d", hba_file="/var/lib/pgsql/17/data/pg_hba.conf",
                   setup="/usr/pgsql-17/bin/postgresql-17-setup", repo_file="/etc/yum.repos.d/pgdg17.repo",
                   disable_dnf_module=True, app_python="/usr/bin/python3",
                   packages=["postgresql17-server", "postgresql17", "python3-psycopg2"]),
    "alma9": dict(repository="pgdg", service="postgresql-17", bin_dir="/usr/pgsql-17/bin",
                  dnf_url="https://download.postgresql.org/pub/repos/yum/17/redhat/rhel-9-x86_64"),
    "rhel9": dict(dnf_url="https://download.postgresql.org/pub/repos/yum/17/redhat/rhel-9-aarch64",
                  dnf_key="https://download.postgresql.org/pub/repos/yum/keys/PGDG-RPM-GPG-KEY-RHEL",
                  app_packages=["python3", "python3-pip", "python3-packaging", "rsync"]),
    "alma10": dict(disable_dnf_module=False, service="postgresql-17"),
    "debian13-pg18-pgdg": dict(repository="pgdg", service="postgresql@18-main", apt_suite="trixie-pgdg",
                               packages=["postgresql-18", "postgresql-client-18", "python3-psycopg2"]),
    "rocky9-pg16-mirror": dict(dnf_url="https://mirror.internal/pgdg/16/el9", dnf_key="https://mirror.internal/pgdg/key",
                               service="postgresql-16", repo_file="/etc/yum.repos.d/pgdg16.repo"),
    "ubuntu2404-mirror": dict(apt_url="https://mirror.internal/apt", apt_key="/etc/apt/keyrings/internal.asc"),
    # The distributions' own packages: one major at a time, postgresql-setup --initdb.
    "fedora44": dict(repository="distro", family="redhat", service="postgresql", data_dir="/var/lib/pgsql/data",
                     config_dir="/var/lib/pgsql/data", include_dir="/var/lib/pgsql/data/conf.d",
                     hba_file="/var/lib/pgsql/data/pg_hba.conf", bin_dir="/usr/bin", clusters_root="/var/lib/pgsql",
                     setup="/usr/bin/postgresql-setup", initdb=["/usr/bin/postgresql-setup", "--initdb"],
                     packages=["postgresql17-server", "postgresql17", "python3-psycopg2"], repo_packages=[],
                     disable_dnf_module=False, app_family="redhat", app_python="/usr/bin/python3",
                     app_packages=["python3", "python3-pip", "python3-packaging", "rsync"]),
    "fedora44-pg18": dict(repository="distro", service="postgresql", data_dir="/var/lib/pgsql/data",
                          packages=["postgresql18-server", "postgresql18", "python3-psycopg2"]),
    "fedora45": dict(repository="distro", service="postgresql", bin_dir="/usr/bin", disable_dnf_module=False,
                     packages=["postgresql17-server", "postgresql17", "python3-psycopg2"]),
    "amazon2023": dict(repository="distro", family="redhat", service="postgresql", data_dir="/var/lib/pgsql/data",
                       bin_dir="/usr/bin", initdb=["/usr/bin/postgresql-setup", "--initdb"], disable_dnf_module=False,
                       packages=["postgresql17-server", "postgresql17", "python3-psycopg2"],
                       app_python="/usr/bin/python3.12",
                       app_packages=["python3.12", "python3.12-pip", "python3-packaging", "rsync"]),
    "amazon2023-pg16": dict(repository="distro", service="postgresql",
                            packages=["postgresql16-server", "postgresql16", "python3-psycopg2"]),
    # The RHEL family's values: PGDG's EL repository, side by side.
    "oraclelinux9": dict(repository="pgdg", service="postgresql-17", data_dir="/var/lib/pgsql/17/data",
                         bin_dir="/usr/pgsql-17/bin", initdb=["/usr/pgsql-17/bin/postgresql-17-setup", "initdb"],
                         clusters_root="/var/lib/pgsql", disable_dnf_module=True,
                         dnf_url="https://download.postgresql.org/pub/repos/yum/17/redhat/rhel-9-x86_64",
                         app_python="/usr/bin/python3"),
    "centosstream9": dict(repository="pgdg", service="postgresql-17", data_dir="/var/lib/pgsql/17/data",
                          disable_dnf_module=True,
                          dnf_url="https://download.postgresql.org/pub/repos/yum/17/redhat/rhel-9-x86_64"),
}


@pytest.mark.parametrize("host", sorted(EXPECTED))
def test_platform_resolves(resolved, host):
    results, log = resolved
    assert host in results, f"{host} did not resolve: {log[-2000:]}"
    for key, want in EXPECTED[host].items():
        assert results[host][key] == want, f"{host}.{key}: {results[host][key]!r} != {want!r}"


def test_every_platform_resolves(resolved):
    results, log = resolved
    missing = [p for p in PLATFORMS if p not in results]
    assert not missing, log[-2000:]


@pytest.mark.parametrize("host,message", [
    ("debian13-pg16-distro", "postgresql_version 16 is not available from the distro repository on Debian 13. "
                             "Accepted there: 17; set postgresql_repository: pgdg for 16, 17, 18."),
    ("debian12-distro", "postgresql_version 17 is not available from the distro repository on Debian 12. "
                        "Accepted there: 15"),
    ("debian14-distro", "postgresql_version 17 is not available from the distro repository on Debian 14. "
                        "Accepted there: 18"),
    ("amazon2023-pg18", "postgresql_version 18 is not available from the distro repository on Amazon 2023. "
                        "Accepted there: 16, 17."),
    ("fedora45-pgdg", "postgresql_version 17 is not available from the pgdg repository on Fedora 45. "
                      "Accepted there: none; set postgresql_repository: distro for 16, 17, 18."),
    ("fedora44-upgrade", "fedora44-upgrade runs Fedora, whose own PostgreSQL packages hold one major at a time (in "
                         "/usr/bin and /var/lib/pgsql/data): playbooks/upgrade.yml runs the old and new clusters side "
                         "by side, so it does not upgrade there."),
])
def test_unavailable_version_is_refused(resolved, host, message):
    results, log = resolved
    assert host not in results
    assert message in log
