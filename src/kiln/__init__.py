"""Kiln: from raw data to a compressed, monitored HTTP endpoint with one recipe.

Importing ``kiln`` is cheap: stages import torch and friends only when they run.
"""

from kiln.version import __version__ as __version__


def __getattr__(name: str) -> object:
    # ``kiln.Client`` without importing the HTTP client until it is used.
    if name == "Client":
        from kiln.serve.client import Client

        return Client
    raise AttributeError(f"module 'kiln' has no attribute {name!r}")
