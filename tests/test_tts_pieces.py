"""Bounded TTS inputs (engines/tts_pieces.py) and what they are for: Piper's memory stays flat."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from hypothesis import given
from hypothesis import strategies as st

from engines.tts_pieces import bounded_pieces
from tests.voxgate_process import ROOT


def test_short_text_is_one_piece() -> None:
    assert bounded_pieces("  Hello there.  ", 40) == ["Hello there."]
    assert bounded_pieces("   ", 40) == []


def test_cuts_at_sentences_then_clauses_then_words() -> None:
    text = "The castle stood on the hill. The knight rode up to it, slowly, and knocked on the door."
    assert bounded_pieces(text, 60) == [
        "The castle stood on the hill.",
        "The knight rode up to it, slowly, and knocked on the door.",
    ]
    assert bounded_pieces(text, 40) == [
        "The castle stood on the hill.",
        "The knight rode up to it, slowly,",
        "and knocked on the door.",
    ]
    assert bounded_pieces("one two three four five six", 9) == ["one two", "three", "four five", "six"]


def test_a_word_longer_than_the_limit_is_cut_inside() -> None:
    assert bounded_pieces("a " + "x" * 25, 10) == ["a", "x" * 10, "x" * 10, "x" * 5]


@given(st.text(alphabet=st.sampled_from("ab ,.;-\n"), max_size=300), st.integers(1, 80))
def test_pieces_keep_every_word_in_order_within_the_limit(text: str, limit: int) -> None:
    pieces = bounded_pieces(text, limit)
    assert all(0 < len(p) <= limit for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_piper_memory_does_not_grow_with_the_longest_sentence() -> None:
    # Before the bound, a 100-word sentence left the process 600 MB larger for good (a 20-word one 100 MB).
    script = textwrap.dedent(
        """
        from engines.tts_piper import PiperTTS

        def rss():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS"))

        tts = PiperTTS()
        tts.load()
        sum(c.size for c in tts.synthesize("A short sentence first, to settle the heap."))
        before = rss()
        words = "the brave knight rode across the quiet valley toward a distant castle".split()
        text = " ".join(words[i % len(words)] for i in range(100)) + "."
        seconds = sum(c.size for c in tts.synthesize(text)) / tts.sample_rate
        print(seconds, rss() - before)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    seconds, growth_mb = map(float, out.stdout.split()[-2:])
    assert seconds > 25  # the whole text was spoken
    assert growth_mb < 30, growth_mb
