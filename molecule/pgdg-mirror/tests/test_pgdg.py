"""PostgreSQL installed through the role's PGDG path, from the local mirror."""

testinfra_hosts = ["ansible://fastpg-pgdg"]


def test_pgdg_source_is_deb822_with_its_own_key(host):
    sources = host.file("/etc/apt/sources.list.d/pgdg.sources")
    assert sources.exists
    text = sources.content_string
    assert "URIs: http://fastpg-mirror:8080" in text
    assert "Suites: trixie-pgdg" in text
    assert "Components: main" in text
    signed_by = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Signed-By:")]
    assert signed_by and host.file(signed_by[0]).exists


def test_packages_came_from_the_mirror(host):
    for package in ("postgresql-17", "postgresql-client-17"):
        version = host.check_output("dpkg-query -W -f='${Version}' %s", package)
        assert version.endswith(".pgdg13+1"), f"{package} {version} is not the mirror's build"
    policy = host.check_output("apt-cache policy postgresql-17")
    installed = policy.split("***", 1)[1].split("\n")
    assert "fastpg-mirror:8080 trixie-pgdg/main" in "\n".join(installed[:3])


def test_server_runs_utf8_with_checksums(host):
    assert host.service("postgresql@17-main").is_running
    q = "runuser -u postgres -- psql -XAtq -c %s"
    assert host.check_output(q, "SHOW server_version").startswith("17.")
    assert host.check_output(q, "SHOW server_encoding") == "UTF8"
    assert host.check_output(q, "SHOW data_checksums") == "on"


def test_app_database_exists(host):
    out = host.check_output("runuser -u postgres -- psql -XAtq -c %s",
                            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'fastpg'")
    assert out == "fastpg"
