"""Rolling negative share per window and per entity, and its alerts."""

from __future__ import annotations

import pytest

from kiln.apps.finance import NegativeShareMonitor
from kiln.config.schema import SentimentMonitorConfig


def monitor(**kw: object) -> NegativeShareMonitor:
    cfg = SentimentMonitorConfig(window_size=10, margin=0.2, min_entity_count=3,
                                 entities={"nokia": ["Nokia"], "banks": ["bank", "lender"]}, **kw)  # type: ignore[arg-type]
    return NegativeShareMonitor(cfg, reference_share=0.2)


def test_monitor_alerts_when_a_window_rises_above_reference_plus_margin() -> None:
    mon = monitor()
    calm = [("Markets steady", "neutral")] * 9 + [("Shares slip", "negative")]
    assert mon.observe_all(calm) == []
    stormy = [("Shares slump", "negative")] * 5 + [("Markets steady", "neutral")] * 5
    alerts = mon.observe_all(stormy)
    assert [(a.window, a.entity, a.negative_share) for a in alerts] == [(2, "(all)", 0.5)]
    assert [w.negative_share for w in mon.windows] == [0.1, 0.5]


def test_monitor_tracks_entities_by_keyword_and_needs_enough_mentions() -> None:
    mon = monitor()
    stream = [("Nokia cuts jobs", "negative")] * 3 + [("Bank profits rise", "positive")] * 2
    stream += [("Lender warns on loans", "negative")] + [("Markets steady", "neutral")] * 4
    alerts = mon.observe_all(stream)
    # nokia 3 of 3 negative alerts; banks 1 of 3 and all 4 of 10 stay at or below 0.2 + 0.2.
    assert {a.entity for a in alerts} == {"nokia"}
    assert mon.windows[0].entities["nokia"] == (1.0, 3)
    assert mon.windows[0].entities["banks"] == (pytest.approx(1 / 3), 3)


def test_monitor_entity_match_is_case_insensitive_whole_word() -> None:
    mon = monitor()
    assert mon.entities_of("NOKIA and a BANK") == ["nokia", "banks"]
    assert mon.entities_of("bankruptcy fears") == []
