"""The feedback store's bounds: size and age, on an injected clock, counted in a metric."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kiln.monitor.config import MonitorConfig
from kiln.monitor.feedback import FeedbackStore
from kiln.monitor.predlog import FEEDBACK, PredictionLog, read_log
from kiln.monitor.service import Monitor


class Clock:
    """A settable clock in seconds."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_feedback_store_drops_the_oldest_beyond_max_rows() -> None:
    drops: list[tuple[str, int]] = []
    clock = Clock()
    store = FeedbackStore(max_rows=3, max_age_s=3600, clock=clock, on_drop=lambda r, n: drops.append((r, n)))
    for i in range(5):
        clock.now += 1
        store.add("s", f"r{i}", "pos")
    assert len(store) == 3
    assert [store.label(f"r{i}", 0) for i in range(5)] == [None, None, "pos", "pos", "pos"]
    assert drops == [("size", 1), ("size", 1)]


def test_feedback_store_drops_labels_older_than_max_age() -> None:
    drops: list[tuple[str, int]] = []
    clock = Clock(0.0)
    store = FeedbackStore(max_rows=100, max_age_s=60, clock=clock, on_drop=lambda r, n: drops.append((r, n)))
    store.add("s", "old", "neg")
    clock.now = 30.0
    store.add("s", "new", "pos")
    clock.now = 60.0
    assert store.prune() == 1
    assert (store.label("old", 0), store.label("new", 0)) == (None, "pos")
    clock.now = 95.0
    assert store.prune() == 1 and len(store) == 0
    assert drops == [("age", 1), ("age", 1)]


def test_feedback_store_keeps_one_label_per_input() -> None:
    store = FeedbackStore(max_rows=2, max_age_s=60, clock=Clock())
    store.add("s", "r", "neg")
    store.add("s", "r", "pos")
    assert len(store) == 1 and store.label("r", 0) == "pos"


@pytest.mark.parametrize(("max_rows", "max_age_s", "words"), [(0, 1.0, "max_rows must be >= 1, got 0"),
                                                                (1, 0.0, "max_age_s must be > 0, got 0.0")])
def test_feedback_store_refuses_bad_bounds(max_rows: int, max_age_s: float, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        FeedbackStore(max_rows=max_rows, max_age_s=max_age_s)


def test_monitor_counts_dropped_feedback_in_a_prometheus_counter(tmp_path: Path) -> None:
    clock = Clock()
    registry = CollectorRegistry()
    config = MonitorConfig(enabled=True, log_dir=tmp_path, max_feedback_rows=2, feedback_retention_s=60)
    monitor = Monitor(config, repository=None, registry=registry, clock=clock)
    for i in range(4):  # two over the size bound
        monitor.feedback("s", f"r{i}", "pos", 0)
    clock.now += 61  # the two kept ones age out
    monitor.log.flush()
    exposition = generate_latest(registry).decode()
    assert 'kiln_feedback_dropped_total{reason="size"} 2.0' in exposition
    assert 'kiln_feedback_dropped_total{reason="age"} 2.0' in exposition


def test_predlog_feedback_files_go_once_every_label_in_them_is_dropped(tmp_path: Path) -> None:
    clock = Clock()
    log = PredictionLog(tmp_path, max_feedback_rows=2, feedback_retention_s=60, clock=clock)
    for i in range(4):  # one file per label
        clock.now += 1
        log.add_feedback("s", f"r{i}", "pos")
        log.flush()
    assert sorted(read_log(tmp_path, FEEDBACK)["request_id"]) == ["r2", "r3"]
    clock.now += 60
    log.flush()
    assert read_log(tmp_path, FEEDBACK).empty


def test_predlog_restores_kept_feedback_at_start(tmp_path: Path) -> None:
    clock = Clock()
    first = PredictionLog(tmp_path, max_feedback_rows=10, feedback_retention_s=60, clock=clock)
    first.add_feedback("s", "early", "neg")
    clock.now += 30
    first.add_feedback("s", "late", "pos", index=2)
    first.flush()
    clock.now += 40  # "early" is past its age now, "late" is not
    restarted = PredictionLog(tmp_path, max_feedback_rows=10, feedback_retention_s=60, clock=clock)
    assert restarted.restore_feedback() == 1
    assert (restarted.true_label("early", 0), restarted.true_label("late", 2)) == (None, "pos")
