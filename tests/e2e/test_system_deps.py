"""`make test`'s set-up of the system programs the suite drives (tests/system_deps.py) and the
browser lookup the dashboard test uses (tests/browser.py).

apt-get and sudo are stand-ins here (shell scripts on a PATH of their own): the real ones
would change this machine. Each stand-in records how it was called."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import BrowserNotFound, find_chromium
from tests.helpers import ROOT
from tests.system_deps import EXIT_MISSING, apt_prefix


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _run_system_deps(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """The script with only ``bin_dir`` on PATH and no Playwright browser; PostgreSQL comes
    from KILN_TEST_DATABASE_URL so that only the browser is looked for."""
    env = {
        **os.environ,
        "PATH": str(bin_dir),
        "PLAYWRIGHT_BROWSERS_PATH": str(tmp_path / "no-playwright-browsers"),
        "KILN_TEST_DATABASE_URL": "postgresql://kiln@127.0.0.1:1",
    }
    return subprocess.run([sys.executable, "-m", "tests.system_deps"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_find_chromium_takes_the_first_browser_name_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chrome = _executable(tmp_path / "bin" / "google-chrome", "exit 0")
    chromium = _executable(tmp_path / "bin" / "chromium-browser", "exit 0")
    monkeypatch.setenv("PATH", str(chrome.parent))
    assert find_chromium() == chromium


def test_find_chromium_without_a_browser_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("PLAYWRIGHT_BROWSERS_PATH", str(tmp_path / "no-playwright-browsers"))
    with pytest.raises(BrowserNotFound) as raised:
        find_chromium()
    assert "apt-get install -y chromium" in str(raised.value)
    assert "`playwright install chromium` was not run" in str(raised.value)


def test_system_deps_without_apt_get_says_what_to_install(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    done = _run_system_deps(tmp_path, tmp_path / "bin")
    assert done.returncode == EXIT_MISSING, done.stdout + done.stderr
    assert "Chromium (headless browser for the dashboard test)" in done.stderr
    assert "but apt-get is not on PATH" in done.stderr
    assert "`sudo apt-get install -y chromium`" in done.stderr
    assert "PostgreSQL" not in done.stderr


def test_system_deps_installs_a_missing_browser_with_apt_get(tmp_path: Path) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-calls"
    # The stand-in apt-get "installs" chromium by writing an executable of that name on PATH.
    browser = bin_dir / "chromium"
    _executable(bin_dir / "apt-get", f'echo "$@" >> {calls}\n'
                f'[ "$1" = install ] && printf "#!/bin/sh\\n" > {browser} && /bin/chmod 755 {browser}\nexit 0')
    # Not root (CI may run so): the stand-in sudo lets this user in without a password.
    _executable(bin_dir / "sudo", '[ "$1" = -n ] && shift\nPATH=/usr/bin:/bin exec "$@"')
    done = _run_system_deps(tmp_path, bin_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "installing chromium with apt-get" in done.stdout
    assert f"Chromium {browser}" in done.stdout
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq --no-install-recommends chromium"]
    again = _run_system_deps(tmp_path, bin_dir)  # found now: nothing is installed twice
    assert again.returncode == 0 and "installing" not in again.stdout
    assert len(calls.read_text().splitlines()) == 2


def test_system_deps_reports_a_failed_apt_get(tmp_path: Path) -> None:
    _executable(tmp_path / "bin" / "apt-get", "exit 100")
    _executable(tmp_path / "bin" / "sudo", '[ "$1" = -n ] && shift\nPATH=/usr/bin:/bin exec "$@"')
    done = _run_system_deps(tmp_path, tmp_path / "bin")
    assert done.returncode == EXIT_MISSING
    assert "but apt-get failed with status 100" in done.stderr
    assert not (tmp_path / "bin" / "chromium").exists()


@pytest.mark.parametrize(("sudo_status", "expected"), [(0, ["-n"]), (1, None), (None, None)])
def test_apt_prefix_without_root_needs_passwordless_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sudo_status: int | None, expected: list[str] | None
) -> None:
    (tmp_path / "bin").mkdir()
    if sudo_status is not None:  # the stand-in sudo answers `sudo -n true` with this status
        _executable(tmp_path / "bin" / "sudo", f"exit {sudo_status}")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    prefix = apt_prefix(is_root=False)
    assert prefix == (None if expected is None else [str(tmp_path / "bin" / "sudo"), *expected])
    assert apt_prefix(is_root=True) == []
