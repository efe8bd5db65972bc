"""Reading search fields from text (CLI flags, HTTP query parameters) and cursors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kiln.registry.search import MetricFilter, QueryError, VersionQuery, parse_query


@pytest.mark.parametrize("text_value", ["accuracy>=high", "accuracy>=nan", "accuracy~0.5", ">=0.5"])
def test_metric_filter_refuses_bad_threshold_naming_metric(text_value: str) -> None:
    with pytest.raises(QueryError, match="^metric: ") as caught:
        MetricFilter.parse(text_value)
    assert caught.value.field == "metric"


def test_parse_query_reads_every_field() -> None:
    query = parse_query({
        "model": ["m"], "tag": ["team=nlp", "stage=qa"], "metric": ["accuracy>=0.9", "loss<1"],
        "task": ["text-classification"], "format": ["onnx"],
        "created_after": ["2026-01-31T12:00:00Z"], "created_before": ["2026-02-01T00:00:00+01:00"],
        "alias": ["*"], "order_by": ["metric:accuracy"], "descending": ["true"], "limit": ["7"],
    })
    assert query.tags == {"team": "nlp", "stage": "qa"}
    assert query.metrics == (MetricFilter("accuracy", ">=", 0.9), MetricFilter("loss", "<", 1.0))
    assert query.created_after == datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert query.created_before == datetime(2026, 1, 31, 23, tzinfo=UTC)
    assert (query.order_metric, query.is_descending, query.limit, query.alias) == ("accuracy", True, 7, "*")


@pytest.mark.parametrize(
    ("params", "field_name", "message"),
    [({"colour": ["red"]}, "colour", "unknown filter field"),
     ({"tag": ["team"]}, "tag", "expected KEY=VALUE"),
     ({"metric": ["accuracy>=x"]}, "metric", "must be a number, got 'x'"),
     ({"created_after": ["yesterday"]}, "created_after", "ISO 8601"),
     ({"limit": ["ten"]}, "limit", "expected an integer"),
     ({"limit": ["5000"]}, "limit", "between 1 and 1000, got 5000"),
     ({"descending": ["maybe"]}, "descending", "true or false"),
     ({"task": ["a", "b"]}, "task", "given 2 times"),
     ({"order_by": ["metric:"]}, "order_by", "'version' or 'metric:NAME'"),
     ({"cursor": ["%%%"]}, "cursor", "not a cursor")],
)
def test_parse_query_refuses_bad_field_naming_it(
    params: dict[str, list[str]], field_name: str, message: str
) -> None:
    with pytest.raises(QueryError, match=message) as caught:
        parse_query(params)
    assert caught.value.field == field_name
    assert str(caught.value).startswith(f"{field_name}: ")


def test_cursor_is_bound_to_its_query() -> None:
    from kiln.registry.search import CursorKey, decode_cursor, encode_cursor

    query = VersionQuery(model="m", order_by="metric:f1")
    cursor = encode_cursor(query, CursorKey(0.25, 17))
    assert decode_cursor(VersionQuery(model="m", order_by="metric:f1", cursor=cursor)) == CursorKey(0.25, 17)
    with pytest.raises(QueryError, match="belongs to another query"):
        VersionQuery(model="m", order_by="metric:f1", is_descending=True, cursor=cursor)
