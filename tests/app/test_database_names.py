"""database.py keeps every name the README promises: apps written against a tutorial import them."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def documented_names():
    text = README.read_text()
    listed = text.split("- **database.py.**", 1)[1].split("\n- **", 1)[0]
    replicas = text.split("**Reads on the replicas.**", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"`([A-Za-z_]\w*)`", listed + replicas)
    return sorted({n for n in names if not n.startswith(("FASTPG_", "fastapi_app_"))})


def test_the_readme_lists_the_tutorials_names():
    assert {"DATABASE_URL", "engine", "Base", "AsyncSessionLocal", "get_database_session",
            "read_engine"} <= set(documented_names())


def test_database_py_exports_every_documented_name(app_module):
    database = app_module.database
    missing = [n for n in documented_names() if not hasattr(database, n)]
    assert not missing, f"database.py lacks {missing}, which README.md lists"


def test_database_url_carries_the_password_the_file_does_not(app_module, app_dir, monkeypatch):
    database = app_module.database
    assert database.DATABASE_URL.startswith("postgresql+asyncpg://")
    assert database.make_url(database.DATABASE_URL) == database.database_url()
    assert "PASSWORD" not in (app_dir / "database.py").read_text().split('"""', 2)[2].replace(
        "FASTPG_DATABASE_PASSWORD", "")
