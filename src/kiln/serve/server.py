"""Run the app under uvicorn (uvloop + httptools) in one process or ``workers`` processes.

SIGTERM (or Ctrl-C): uvicorn stops accepting connections, lets in-flight requests finish for up
to ``grace_period_s``, then the app's lifespan drains every batcher and the process exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

from kiln.serve.config import ModelConfig, ServeConfig
from kiln.serve.models import read_source_identity

logger = logging.getLogger(__name__)


def models_from_specs(specs: Iterable[str]) -> list[ModelConfig]:
    """Model configs from ``--model`` values (package folders or registry references).

    Versions of one name are grouped into one model (``--model s@3 --model s@4``).

    Raises:
        ModelLoadError: a source that is neither a package folder nor a resolvable reference.
    """
    grouped: dict[str, dict[int, str]] = {}
    for spec in specs:
        name, version = read_source_identity(spec)
        versions = grouped.setdefault(name, {})
        if version in versions:
            raise_duplicate(name, version, versions[version], spec)
        versions[version] = spec
    return [ModelConfig(name=name, versions=versions) for name, versions in grouped.items()]


def raise_duplicate(name: str, version: int, first: str, second: str) -> None:
    """Refuse two sources for one version of one model."""
    from kiln.errors import ConfigError

    raise ConfigError(
        f"--model {second}: model {name!r} version {version} is already given by {first}"
    )


def run(config: ServeConfig) -> None:
    """Serve until SIGTERM / Ctrl-C.

    Raises:
        ConfigError: no models, a non-loopback bind without tokens, a bad token file.
        ModelLoadError: a model source that does not resolve.
    """
    import uvicorn

    from kiln.errors import ConfigError
    from kiln.serve.app import create_app

    if not config.models:
        raise ConfigError("no models to serve: pass --model PATH_OR_REF or a config with models")
    for model in config.models:
        for source in model.versions.values():
            read_source_identity(source)  # fail fast, before binding, on a source that is wrong
    common: dict[str, Any] = dict(
        host=config.host,
        port=config.port,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=config.grace_period_s,
        log_level="info",
        access_log=False,
    )
    if config.workers == 1:
        app = create_app(config)
        uvicorn.Server(uvicorn.Config(app, **common)).run()
        return
    create_app(config)  # validate tokens and bind address once, in the parent
    os.environ["KILN_SERVE_CONFIG"] = config.model_dump_json()
    uvicorn.run(
        "kiln.serve.app:app_from_environment",
        factory=True,
        workers=config.workers,
        **common,
    )
