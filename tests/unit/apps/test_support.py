"""Hand-off threshold calibration and FAQ loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln.apps.support import calibrate_threshold, handoff_report
from kiln.data.faq import load_faq
from kiln.errors import DataError


def test_calibrate_threshold_picks_the_lowest_confidence_meeting_the_target() -> None:
    confidence = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    is_correct = np.array([True, True, True, False, True, False])
    # Answering down to 0.8 gives 3/3, down to 0.6 gives 4/5 = 0.8, down to 0.5 gives 4/6.
    assert calibrate_threshold(confidence, is_correct, 0.8) == 0.6
    assert calibrate_threshold(confidence, is_correct, 0.9) == 0.8
    assert calibrate_threshold(confidence, is_correct, 0.5) == 0.5


def test_calibrate_threshold_hands_off_everything_when_the_target_is_out_of_reach() -> None:
    confidence = np.array([0.9, 0.4])
    threshold = calibrate_threshold(confidence, np.array([False, True]), 0.99)
    assert threshold > 0.9


def test_handoff_report_counts_messages_below_the_threshold() -> None:
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
    report = handoff_report(probs, np.array([0, 1, 1]), threshold=0.7)
    assert report == {"handoff_rate": pytest.approx(1 / 3), "answered_accuracy": 1.0}


def test_load_faq_reads_the_bundled_english_pairs() -> None:
    questions, answers = load_faq()
    assert len(questions) > 500 and len(questions) == len(answers) == len(set(q.lower() for q in questions))


def test_load_faq_reads_a_user_csv_and_names_a_missing_column(tmp_path: Path) -> None:
    good = tmp_path / "faq.csv"
    good.write_text("question,answer\nHow do I reset my PIN?,Use the app.\nhow do i reset my pin?,dup\n")
    assert load_faq(good) == (["How do I reset my PIN?"], ["Use the app."])
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a\nx,y\n")
    with pytest.raises(DataError, match="FAQ column 'question' not found"):
        load_faq(bad)
