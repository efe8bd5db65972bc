"""Where the headless Chromium the browser tests drive lives.

A Chromium or Chrome on ``PATH`` comes first (``apt-get install chromium`` puts one there, and
``make test`` installs it when it can); then the browser Playwright downloaded itself, if one
was (``playwright install chromium``). Nothing is downloaded here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
BROWSER_INSTALL_HELP = (
    "no Chromium or Chrome found: none of {names} is on PATH and Playwright has no browser of "
    "its own ({playwright}). Run `make test` as root or with passwordless sudo so that it runs "
    "`apt-get install chromium`, or install it yourself (Debian/Ubuntu: `sudo apt-get install -y "
    "chromium`) or put a Chromium/Chrome executable on PATH."
)


class BrowserNotFound(RuntimeError):
    """No Chromium or Chrome executable could be found (the message says how to get one)."""


def playwright_chromium() -> Path | None:
    """The Chromium Playwright keeps under its browsers folder, when it was downloaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        path = Path(pw.chromium.executable_path)
    return path if path.is_file() else None


def find_chromium() -> Path:
    """The Chromium (or Chrome) executable to launch headless.

    Raises:
        BrowserNotFound: none on PATH and none downloaded by Playwright.
    """
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    try:
        bundled = playwright_chromium()
    except ImportError:
        bundled, where = None, "Playwright is not installed"
    else:
        where = "`playwright install chromium` was not run"
    if bundled is not None:
        return bundled
    raise BrowserNotFound(BROWSER_INSTALL_HELP.format(names=", ".join(BROWSER_NAMES), playwright=where))
