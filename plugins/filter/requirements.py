"""The requirements a release's virtualenv is built from: fastpg's base stack and the app's own.

The app's pins win: a base line is dropped when the app names the same package. A hashed lock
file is used as it is (pip refuses to mix hashed and unhashed lines), so it must hold the whole
stack. The one pin refused is a uvicorn that the service's command line does not work with.
"""

import re

try:
    import tomllib
except ImportError:  # Python 3.10 controllers
    tomllib = None

from ansible.errors import AnsibleFilterError
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# The unit passes --timeout-graceful-shutdown (uvicorn 0.22.0) so requests in flight finish
# during a restart.
UVICORN_MINIMUM = Version("0.22.0")
# What database.py and the unit import; a hashed lock file must contain them.
STACK = ("uvicorn", "fastapi", "sqlalchemy", "asyncpg")
# --trusted-host is not among them: it turns TLS verification off for an index. A private
# index's CA goes in fastapi_app_pip_ca_bundle instead.
OPTIONS_PASSED = ("--index-url", "-i", "--extra-index-url", "--find-links", "-f",
                  "--no-binary", "--only-binary", "--prefer-binary", "--pre")


def _lines(text):
    """Logical lines: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n", " ", text or "")
    for raw in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if line:
            yield line


def _requirement(line):
    try:
        return Requirement(re.split(r"\s--hash", line)[0].strip())
    except InvalidRequirement:
        return None


def _name(line):
    req = _requirement(line)
    return canonicalize_name(req.name) if req else None


def _app_lines(text, fmt, extras, origin):
    if fmt == "pyproject.toml":
        if tomllib is None:
            raise AnsibleFilterError("reading pyproject.toml needs Python 3.11 or later on the controller")
        try:
            project = tomllib.loads(text).get("project", {})
        except tomllib.TOMLDecodeError as exc:
            raise AnsibleFilterError(f"{origin} is not valid TOML: {exc}") from exc
        if "dependencies" not in project and "dependencies" not in project.get("dynamic", []):
            raise AnsibleFilterError(
                f"{origin} has no [project] dependencies (PEP 621). Tables of other tools such as "
                f"[tool.poetry] are not read: export a requirements file (poetry export, uv export) "
                f"and set fastapi_app_requirements_file to it.")
        if "dependencies" in project.get("dynamic", []):
            raise AnsibleFilterError(
                f"{origin} declares its dependencies dynamic; fastpg reads static [project] dependencies "
                f"only: list them there, or set fastapi_app_requirements_file to a requirements file.")
        lines = list(project.get("dependencies", []))
        optional = project.get("optional-dependencies", {})
        for extra in extras:
            if extra not in optional:
                raise AnsibleFilterError(
                    f"fastapi_app_pyproject_extras names {extra!r}, which {origin} does not define "
                    f"(it defines: {', '.join(sorted(optional)) or 'none'}).")
            lines += optional[extra]
        return lines
    lines = []
    for line in _lines(text):
        option = line.split()[0].split("=")[0]
        if option == "--trusted-host":
            raise AnsibleFilterError(
                f"{origin}: {line!r} turns TLS verification off for that index; fastpg does not pass it. "
                f"Accepted: the index's CA certificate in fastapi_app_pip_ca_bundle (pip --cert).")
        if line.startswith("-") and option not in OPTIONS_PASSED:
            raise AnsibleFilterError(
                f"{origin}: {line!r} is not supported (accepted: requirement lines, --hash, and the index "
                f"options {', '.join(OPTIONS_PASSED)}); list included files' requirements in the file itself "
                f"or in fastapi_app_requirements, and deploy editable packages as part of the source.")
        lines.append(line)
    return lines


def _check_uvicorn(lines, origin):
    for line in lines:
        if _name(line) != "uvicorn":
            continue
        spec = _requirement(line).specifier
        too_old = any(
            (s.operator in ("==", "===") and not s.version.endswith("*") and Version(s.version) < UVICORN_MINIMUM)
            or (s.operator == "<" and Version(s.version) <= UVICORN_MINIMUM)
            or (s.operator == "<=" and Version(s.version) < UVICORN_MINIMUM)
            for s in spec)
        if too_old:
            raise AnsibleFilterError(
                f"{origin} pins {str(_requirement(line))!r}: fastpg's zero-downtime restarts need uvicorn "
                f"{UVICORN_MINIMUM} or later (the service passes --timeout-graceful-shutdown so requests in "
                f"flight finish). Accepted: a uvicorn pin of {UVICORN_MINIMUM} or later, or none "
                f"(fastpg's base stack then provides it).")


def app_requirements(base, app_text="", app_format="", extra=None, extras=None, origin="the app"):
    """Merged requirements text. app_format: '' (none), requirements.txt or pyproject.toml."""
    extra, extras = list(extra or []), list(extras or [])
    app = _app_lines(app_text, app_format, extras, origin) if app_format else []
    own = app + extra
    _check_uvicorn(own, origin if app else "fastapi_app_requirements")
    names = {_name(line) for line in own} - {None}
    if any("--hash" in line for line in app):
        if extra:
            raise AnsibleFilterError(
                f"{origin} is a hashed lock file, which pip cannot mix with the unhashed "
                f"fastapi_app_requirements; add those packages to the lock file instead.")
        missing = [name for name in STACK if name not in names]
        if missing:
            raise AnsibleFilterError(
                f"{origin} is a hashed lock file, so fastpg adds nothing to it, but it lacks "
                f"{', '.join(missing)}, which the service and database.py import. Add them to the lock file.")
        return "# From the app's hashed lock file, as it is.\n" + "\n".join(app) + "\n"
    kept = [line for line in _lines(base) if _name(line) not in names]
    text = "# fastpg's base stack (packages the app names itself are left to the app).\n" + "\n".join(kept) + "\n"
    if app:
        text += f"# From the app ({app_format}).\n" + "\n".join(app) + "\n"
    if extra:
        text += "# From fastapi_app_requirements.\n" + "\n".join(extra) + "\n"
    return text


class FilterModule:
    def filters(self):
        return {"app_requirements": app_requirements}
