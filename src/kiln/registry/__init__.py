"""The model registry: versions, aliases, lineage, runs and content-addressed packages.

``Registry`` is the Python API; ``resolve_reference`` turns a package path or a reference
(``name@3``, ``name@production``) into a verified local package folder.
"""

from kiln.registry.cache import AliasCache
from kiln.registry.client import Lineage, Registry, resolve_reference
from kiln.registry.domain import (
    AliasMove,
    ApiToken,
    LineageEdge,
    MetricPoint,
    Model,
    ModelVersion,
    Role,
    Run,
    User,
)

__all__ = [
    "AliasCache",
    "AliasMove",
    "ApiToken",
    "Lineage",
    "LineageEdge",
    "MetricPoint",
    "Model",
    "ModelVersion",
    "Registry",
    "Role",
    "Run",
    "User",
    "resolve_reference",
]
