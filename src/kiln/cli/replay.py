"""``kiln replay FILE --url URL``: stream headlines through a served sentiment model and watch
the negative share per window and per entity, printing alerts as they fire."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from kiln.config.schema import SentimentMonitorConfig


def replay(
    file: Annotated[Path, typer.Argument(help="Headlines: a .txt file (one per line) or CSV/TSV/JSONL/Parquet")],
    url: Annotated[str, typer.Option(help="Base URL of the Kiln server")] = "http://127.0.0.1:8000",
    model: Annotated[str, typer.Option(help="Served model name")] = "finance",
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe whose monitor section (entities, window, margin) applies")
    ] = None,
    column: Annotated[str, typer.Option(help="Text column of a table file")] = "text",
    encoding: Annotated[str, typer.Option(help="Encoding of FILE")] = "utf-8",
    batch_size: Annotated[int, typer.Option(min=1, help="Headlines per request")] = 32,
    token: Annotated[str | None, typer.Option(help="Bearer token, when the server needs one")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Recipe overrides, e.g. monitor.margin=0.1")] = None,
) -> None:
    """Replay a headline file through the served model; print alerts and each window's shares."""
    import httpx

    from kiln.apps.finance import NegativeShareMonitor
    from kiln.cli.main import user_errors
    from kiln.errors import ConfigError
    from kiln.serve.client import Client

    with user_errors():
        cfg, reference = _monitor_settings(recipe, overrides)
        headlines = _read_headlines(file, column, encoding)
        monitor = NegativeShareMonitor(cfg, reference)
        client = Client(url, token=token)
        typer.echo(f"replaying {len(headlines)} headlines from {file}; reference negative share {reference:.1%}")
        for start in range(0, len(headlines), batch_size):
            batch = headlines[start : start + batch_size]
            try:
                outputs = client.predict(model, batch)["outputs"]
            except httpx.HTTPError as exc:
                raise ConfigError(f"{url}: cannot reach the server ({exc})") from None
            for text, out in zip(batch, outputs, strict=True):
                for alert in monitor.observe(text, out["label"]):
                    typer.echo(f"ALERT {alert.message()}")
    for window in monitor.windows:
        entities = ", ".join(f"{name} {share:.0%} of {n}" for name, (share, n) in window.entities.items())
        typer.echo(f"window {window.window}: negative {window.negative_share:.0%} of {window.count}"
                   + (f" | {entities}" if entities else ""))  # fmt: skip
    typer.echo(f"{len(monitor.windows)} windows, {len(monitor.alerts)} alerts")


def _monitor_settings(recipe: Path | None, overrides: list[str] | None) -> tuple[SentimentMonitorConfig, float]:
    from kiln.config.schema import SentimentMonitorConfig
    from kiln.errors import ConfigError

    if recipe is None:
        cfg = SentimentMonitorConfig()
        if cfg.reference_share is None:
            raise ConfigError("give --recipe (its training labels set the reference share) or a recipe with "
                              "monitor.reference_share")  # fmt: skip
        return cfg, cfg.reference_share
    import kiln.data
    from kiln.config import load_recipe

    loaded = load_recipe(recipe, overrides)
    cfg = loaded.monitor
    if cfg.reference_share is not None:
        return cfg, cfg.reference_share
    dataset = kiln.data.run(loaded)
    if cfg.negative_label not in dataset.label_names:
        raise ConfigError(f"monitor.negative_label {cfg.negative_label!r} is not a label; labels are "
                          f"{', '.join(dataset.label_names)}")  # fmt: skip
    index = dataset.label_names.index(cfg.negative_label)
    return cfg, float((dataset.train.labels == index).mean())


def _read_headlines(file: Path, column: str, encoding: str) -> list[str]:
    from kiln.data.sources import read_table
    from kiln.errors import DataError

    if file.suffix.lower() == ".txt":
        if not file.is_file():
            raise DataError(f"headline file not found: {file}")
        lines = file.read_text(encoding=encoding).splitlines()
    else:
        frame = read_table(file, fmt=None, encoding=encoding, has_header=True)
        if column not in frame.columns:
            raise DataError(f"{file}: column {column!r} not found; columns are {', '.join(map(str, frame.columns))}")
        lines = frame[column].astype(str).tolist()
    headlines = [line.strip() for line in lines if line.strip()]
    if not headlines:
        raise DataError(f"{file}: no headlines")
    return headlines
