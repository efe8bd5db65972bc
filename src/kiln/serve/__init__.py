"""The serve stage: HTTP inference with dynamic batching, many models and versions, canary
routing, hot reload, load shedding, auth and Prometheus metrics.

``kiln.serve.run(config)`` serves until SIGTERM; ``kiln.serve.app.create_app(config)`` builds the
ASGI app for embedding or tests.
"""

from __future__ import annotations

from kiln.serve.config import BatchingConfig, ModelConfig, ServeConfig

__all__ = ["BatchingConfig", "ModelConfig", "ServeConfig", "run"]


def run(config: ServeConfig) -> None:
    """Serve ``config``'s models until SIGTERM or Ctrl-C (see ``kiln.serve.server.run``)."""
    from kiln.serve.server import run as run_server

    run_server(config)
