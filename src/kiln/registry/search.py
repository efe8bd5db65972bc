"""Version search: filters, ordering and keyset pagination, shared by the API, CLI and HTTP API.

A ``VersionQuery`` names what to find (model, tags, metric thresholds, task, format, creation
time, alias) and how to order it (by version or by one metric). A page ends with an opaque
cursor: the sort key of its last row plus a fingerprint of the query, so the next page starts
right after that row with an indexed range scan (keyset pagination) instead of an ``OFFSET``,
and a cursor handed to another query is refused rather than silently misread.

Text forms (CLI flags, HTTP query parameters): ``tag=team=vision``, ``metric=accuracy>=0.9``,
``order_by=version`` or ``order_by=metric:accuracy``, ``created_after=2026-01-31T00:00:00Z``,
``alias=production`` (``alias=*``: any alias).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kiln.registry.domain import ModelVersion
from kiln.registry.errors import RegistryError

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
ANY_ALIAS = "*"
ORDER_BY_VERSION = "version"
METRIC_ORDER_PREFIX = "metric:"
COMPARISONS = (">=", "<=", ">", "<", "=")
# Every field a text query may carry; anything else is refused by name.
QUERY_FIELDS = (
    "model", "tag", "metric", "task", "format", "created_after", "created_before", "alias",
    "order_by", "descending", "limit", "cursor",
)
_METRIC = re.compile(r"^(?P<name>[^<>=\s]+)\s*(?P<op>>=|<=|>|<|=)\s*(?P<value>\S+)$")


class QueryError(RegistryError):
    """A search field with a value that cannot be used; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class MetricFilter:
    """Keep versions whose metric ``name`` compares to ``value`` as ``op`` says."""

    name: str  # metric name, e.g. "accuracy"
    op: str  # one of >=, <=, >, <, =
    value: float  # the threshold

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise QueryError("metric", f"comparison must be one of {', '.join(COMPARISONS)}, got {self.op!r}")
        if not math.isfinite(self.value):
            raise QueryError("metric", f"threshold of {self.name!r} must be a finite number, got {self.value}")

    @classmethod
    def parse(cls, text: str) -> MetricFilter:
        """``accuracy>=0.9`` (also ``>``, ``<=``, ``<``, ``=``)."""
        match = _METRIC.match(text.strip())
        if match is None:
            raise QueryError("metric", f"expected NAME>=NUMBER (or >, <=, <, =), got {text!r}")
        try:
            value = float(match["value"])
        except ValueError:
            raise QueryError(
                "metric", f"threshold of {match['name']!r} must be a number, got {match['value']!r}"
            ) from None
        return cls(match["name"], match["op"], value)


@dataclass(frozen=True)
class VersionQuery:
    """Which versions to list, in what order, and which page."""

    model: str | None = None  # one model's versions, or every model's when None
    tags: Mapping[str, str] = field(default_factory=dict)  # every tag must have this value
    metrics: tuple[MetricFilter, ...] = ()  # every threshold must hold
    task: str | None = None  # the model's task, e.g. "image-classification"
    format: str | None = None  # package format, e.g. "onnx"
    created_after: datetime | None = None  # registered at or after (UTC when naive)
    created_before: datetime | None = None  # registered before (UTC when naive)
    alias: str | None = None  # an alias pointing at it; "*" for any alias
    order_by: str = ORDER_BY_VERSION  # "version" or "metric:NAME"
    is_descending: bool = False  # newest / highest first
    limit: int = DEFAULT_PAGE_SIZE  # page size, 1..MAX_PAGE_SIZE
    cursor: str | None = None  # ``next_cursor`` of the previous page

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise QueryError("limit", f"must be between 1 and {MAX_PAGE_SIZE}, got {self.limit}")
        if self.order_by != ORDER_BY_VERSION and not (
            self.order_by.startswith(METRIC_ORDER_PREFIX) and len(self.order_by) > len(METRIC_ORDER_PREFIX)
        ):
            raise QueryError("order_by", f"must be 'version' or 'metric:NAME', got {self.order_by!r}")
        for name in ("created_after", "created_before"):
            value = getattr(self, name)
            if value is not None:  # naive means UTC; the database compares UTC times
                aware = value if value.tzinfo else value.replace(tzinfo=UTC)
                object.__setattr__(self, name, aware.astimezone(UTC))
        if self.cursor is not None:
            decode_cursor(self)  # refuse a malformed or foreign cursor before any query runs

    @property
    def order_metric(self) -> str | None:
        """The metric the query orders by, or None when it orders by version."""
        if self.order_by.startswith(METRIC_ORDER_PREFIX):
            return self.order_by[len(METRIC_ORDER_PREFIX):]
        return None

    def fingerprint(self) -> str:
        """A short hash of everything but the page: a cursor is valid only for its query."""
        data = {
            "model": self.model, "tags": sorted(self.tags.items()),
            "metrics": [(m.name, m.op, m.value) for m in self.metrics], "task": self.task,
            "format": self.format,
            "after": self.created_after.isoformat() if self.created_after else None,
            "before": self.created_before.isoformat() if self.created_before else None,
            "alias": self.alias, "order": self.order_by, "desc": self.is_descending,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class VersionPage:
    """One page of a search; ``next_cursor`` is None on the last page."""

    versions: tuple[ModelVersion, ...]  # this page's versions, in the query's order
    next_cursor: str | None  # pass as ``cursor`` to get the next page


@dataclass(frozen=True)
class CursorKey:
    """Where a page ended: the sort value of its last row (a metric, or None) and its row id."""

    value: float | None
    row_id: int


def encode_cursor(query: VersionQuery, key: CursorKey) -> str:
    """The opaque cursor of the page that ended at ``key``."""
    raw = json.dumps({"q": query.fingerprint(), "v": key.value, "i": key.row_id})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(query: VersionQuery) -> CursorKey | None:
    """The position ``query.cursor`` points at; None without a cursor.

    Raises:
        QueryError: the cursor is malformed or belongs to another query.
    """
    if query.cursor is None:
        return None
    text = query.cursor
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
        fingerprint, value, row_id = data["q"], data["v"], data["i"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise QueryError("cursor", "is not a cursor this registry handed out") from None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not isinstance(row_id, int) or (value is not None and not is_number):
        raise QueryError("cursor", "is not a cursor this registry handed out")
    if fingerprint != query.fingerprint():
        raise QueryError("cursor", "belongs to another query (filters or order changed)")
    return CursorKey(None if value is None else float(value), row_id)


def parse_query(params: Mapping[str, Sequence[str]]) -> VersionQuery:
    """A ``VersionQuery`` from text fields (HTTP query parameters, CLI flags).

    ``params`` maps each field of ``QUERY_FIELDS`` to its values; ``tag`` and ``metric`` may
    repeat, the others are given at most once.

    Raises:
        QueryError: an unknown field, a repeated one, or a value that cannot be read.
    """
    unknown = sorted(set(params) - set(QUERY_FIELDS))
    if unknown:
        raise QueryError(unknown[0], f"unknown filter field; allowed: {', '.join(QUERY_FIELDS)}")
    for name, values in params.items():
        if name not in ("tag", "metric") and len(values) > 1:
            raise QueryError(name, f"given {len(values)} times, allowed once")

    def one(name: str) -> str | None:
        values = params.get(name) or []
        return values[0] if values else None

    limit_text = one("limit")
    return VersionQuery(
        model=one("model"),
        tags=dict(_parse_tag(t) for t in params.get("tag", [])),
        metrics=tuple(MetricFilter.parse(m) for m in params.get("metric", [])),
        task=one("task"),
        format=one("format"),
        created_after=_parse_time("created_after", one("created_after")),
        created_before=_parse_time("created_before", one("created_before")),
        alias=one("alias"),
        order_by=one("order_by") or ORDER_BY_VERSION,
        is_descending=_parse_bool("descending", one("descending")),
        limit=_parse_int("limit", limit_text) if limit_text is not None else DEFAULT_PAGE_SIZE,
        cursor=one("cursor"),
    )


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise QueryError("tag", f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parse_time(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(name, f"expected an ISO 8601 time such as 2026-01-31T12:00:00Z, got {text!r}") from None


def _parse_bool(name: str, text: str | None) -> bool:
    if text is None:
        return False
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise QueryError(name, f"expected true or false, got {text!r}")


def _parse_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise QueryError(name, f"expected an integer, got {text!r}") from None


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a search can filter and order by: top-level finite numbers (not booleans)."""
    return {
        str(k): float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
