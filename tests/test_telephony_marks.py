"""MarkTracker: what the caller heard, how far ahead the gateway is, and barge-in (clear)."""

from __future__ import annotations

import pytest

from telephony.marks import MarkTracker


def test_marks_are_named_by_response_and_cumulative_ms() -> None:
    marks = MarkTracker()
    assert marks.sent("resp_1", 100) == "resp_1:100"
    assert marks.sent("resp_1", 200) == "resp_1:200"
    assert marks.pending_marks() == ["resp_1:100", "resp_1:200"]
    assert marks.outstanding() == 200
    assert marks.pending_ms("resp_1") == 200


def test_echoes_confirm_playback() -> None:
    marks = MarkTracker()
    for ms in (100, 200, 300):
        marks.sent("r1", ms)
    assert marks.echoed("r1:100") == ("r1", 100)
    assert marks.played_ms("r1") == 100
    assert marks.outstanding() == 200
    assert marks.pending_ms("r1") == 200
    assert marks.echoed("r1:300") == ("r1", 300)  # in-order echoes: r1:200 is confirmed with it
    assert marks.pending_marks() == []
    assert marks.outstanding() == 0 and marks.pending_ms("r1") == 0
    assert marks.played_ms("r1") == 300


def test_unknown_and_repeated_echoes_are_ignored() -> None:
    marks = MarkTracker()
    marks.sent("r1", 100)
    assert marks.echoed("r9:100") is None
    assert marks.echoed("garbage") is None
    assert marks.echoed("r1:100") == ("r1", 100)
    assert marks.echoed("r1:100") is None
    assert marks.played_ms("r1") == 100 and marks.played_ms("nobody") == 0


def test_outstanding_spans_responses() -> None:
    marks = MarkTracker()
    marks.sent("r1", 100)
    marks.sent("r1", 160)
    marks.sent("r2", 40)
    assert marks.outstanding() == 200
    assert marks.pending_ms("r1") == 160 and marks.pending_ms("r2") == 40
    marks.echoed("r1:160")
    assert marks.outstanding() == 40


def test_clear_drops_pending_marks_and_their_late_echoes() -> None:
    marks = MarkTracker()
    for ms in (100, 200, 300, 400):
        marks.sent("r1", ms)
    marks.echoed("r1:100")
    assert marks.clear() == ["r1:200", "r1:300", "r1:400"]
    assert marks.outstanding() == 0 and marks.pending_ms("r1") == 0
    # Twilio echoes the cleared marks right after the clear: they were not played
    for name in ("r1:200", "r1:300", "r1:400"):
        assert marks.echoed(name) is None
    assert marks.played_ms("r1") == 100  # what the caller heard


def test_outstanding_after_a_clear_counts_only_new_audio() -> None:
    marks = MarkTracker()
    marks.sent("r1", 100)
    marks.sent("r1", 300)
    marks.clear()
    marks.sent("r2", 60)
    assert marks.outstanding() == 60
    assert marks.echoed("r2:60") == ("r2", 60)
    assert marks.outstanding() == 0
    # a response that goes on after a clear: only the audio after the last mark is new
    marks.sent("r1", 400)
    assert marks.outstanding() == 100
    marks.echoed("r1:400")
    assert marks.outstanding() == 0 and marks.played_ms("r1") == 400


def test_marks_must_advance() -> None:
    marks = MarkTracker()
    marks.sent("r1", 100)
    with pytest.raises(ValueError):
        marks.sent("r1", 100)
    with pytest.raises(ValueError):
        marks.sent("r1", 50)
    with pytest.raises(ValueError):
        marks.sent("r2", 0)


def test_forget_keeps_responses_with_pending_marks() -> None:
    marks = MarkTracker()
    marks.sent("r1", 100)
    marks.forget("r1")
    assert marks.pending_ms("r1") == 100
    marks.echoed("r1:100")
    marks.forget("r1")
    assert marks.played_ms("r1") == 0
    assert marks.sent("r1", 20) == "r1:20"  # a forgotten id starts over
