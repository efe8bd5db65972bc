"""Kiln's home folder, shared by every stage: runs, registry, artifacts, monitoring logs."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "KILN_HOME"


def kiln_home() -> Path:
    """``$KILN_HOME``, or ``./.kiln`` when it is unset or empty."""
    return Path(os.environ.get(HOME_ENV) or ".kiln")
