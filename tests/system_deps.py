"""Find, or install with apt-get, the system programs the test suite drives for real.

    python -m tests.system_deps        # `make test` runs it before the suite

The dashboard test drives headless Chromium (found as ``tests/browser.py`` finds it) and the
registry tests start a throw-away PostgreSQL cluster (``tests/postgres.py``; not needed when
``KILN_TEST_DATABASE_URL`` names a server). When both are found it prints where and exits 0
without touching the network. A missing one is installed with apt-get when running as root or
with passwordless sudo; otherwise it says what to install and exits with status 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from tests.browser import BrowserNotFound, find_chromium
from tests.postgres import PostgresError, pg_bin_dir

EXIT_MISSING = 2
# Seconds `sudo -n true` may take to say whether sudo needs a password.
SUDO_CHECK_TIMEOUT_S = 10


@dataclass(frozen=True)
class Part:
    """One system program the suite needs."""

    name: str  # what the messages call it
    apt_package: str  # the Debian/Ubuntu package that provides it
    used_for: str  # which tests drive it


CHROMIUM = Part("Chromium", "chromium", "headless browser for the dashboard test")
POSTGRESQL = Part("PostgreSQL server", "postgresql", "initdb, pg_ctl and postgres for the registry tests")


def locate() -> tuple[dict[Part, str], list[Part]]:
    """Where each needed part was found, and the parts that were not."""
    found: dict[Part, str] = {}
    missing: list[Part] = []
    try:
        found[CHROMIUM] = str(find_chromium())
    except BrowserNotFound:
        missing.append(CHROMIUM)
    if os.environ.get("KILN_TEST_DATABASE_URL"):
        found[POSTGRESQL] = "KILN_TEST_DATABASE_URL"
    else:
        try:
            found[POSTGRESQL] = str(pg_bin_dir())
        except PostgresError:
            missing.append(POSTGRESQL)
    return found, missing


def apt_prefix(*, is_root: bool) -> list[str] | None:
    """The command prefix under which apt-get may install: none as root, ``sudo -n`` when sudo
    needs no password, ``None`` when this user cannot install."""
    if is_root:
        return []
    sudo = shutil.which("sudo")
    if sudo is None:
        return None
    try:
        check = subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=SUDO_CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    return [sudo, "-n"] if check.returncode == 0 else None


def install_help(missing: list[Part], reason: str) -> str:
    """What to install by hand, and why it was not installed automatically."""
    packages = " ".join(part.apt_package for part in missing)
    lines = [
        "error: `make test` needs system programs that are not installed:",
        *(f"  - {part.name} ({part.used_for})" for part in missing),
        f"It installs them with apt-get when run as root or with passwordless sudo, but {reason}.",
        f"Install them yourself (Debian/Ubuntu: `sudo apt-get install -y {packages}`) and run it again.",
    ]
    if CHROMIUM in missing:
        lines.append("Any Chromium or Chrome executable on PATH will do for the browser.")
    if POSTGRESQL in missing:
        lines.append(
            "For PostgreSQL, initdb/pg_ctl/postgres on PATH or in /usr/lib/postgresql/<version>/bin will do, "
            "or set KILN_TEST_DATABASE_URL to a server URL whose user may create databases."
        )
    return "\n".join(lines)


def apt_install(prefix: list[str], apt_get: str, packages: list[str]) -> int:
    """``apt-get update`` then ``apt-get install`` the packages; the exit status of the first failure."""
    quiet = {"DEBIAN_FRONTEND": "noninteractive"}
    # sudo resets the environment: under it the setting goes through env(1).
    head = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", apt_get] if prefix else [apt_get]
    for args in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *packages]):
        done = subprocess.run([*head, *args], env={**os.environ, **quiet})
        if done.returncode != 0:
            return done.returncode
    return 0


def install(missing: list[Part]) -> str | None:
    """Install the missing parts with apt-get; why it could not, or ``None`` when apt-get succeeded."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        return "apt-get is not on PATH"
    prefix = apt_prefix(is_root=os.geteuid() == 0)
    if prefix is None:
        return "this user is not root and sudo needs a password (or is missing)"
    packages = [part.apt_package for part in missing]
    print(f"installing {' '.join(packages)} with apt-get", flush=True)
    status = apt_install(prefix, apt_get, packages)
    return f"apt-get failed with status {status}" if status != 0 else None


def main() -> int:
    found, missing = locate()
    if missing:
        failure = install(missing)
        if failure is None:
            found, missing = locate()
            failure = "they were still not found after apt-get installed them" if missing else None
        if failure is not None:
            print(install_help(missing, failure), file=sys.stderr)
            return EXIT_MISSING
    print("system programs: " + ", ".join(f"{part.name} {where}" for part, where in found.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
