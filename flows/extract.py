"""Deterministic parsers that turn a caller's words into typed values.

Each parser takes one utterance (as transcribed, or typed) and returns a JSON-ready value or ``None`` when it
found nothing it trusts. No model is involved, so the same words always give the same value, and relative
dates are resolved against a ``now`` the caller passes in (the session clock, in the flow's time zone).

Values: numbers are ``int`` (or ``float`` for decimals), yes/no is ``bool``, dates are ISO ``YYYY-MM-DD``,
times are ``HH:MM`` (24 h), a choice is the canonical choice string, text is the stripped utterance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from flows.extract_choices import DEFAULT_EXIT_PHRASES, match_choice, match_exit
from flows.extract_dates import parse_date
from flows.extract_numbers import parse_number
from flows.extract_pattern import REGEX_TIMEOUT_S, match_pattern
from flows.extract_times import parse_time
from flows.extract_tokens import MAX_ANSWER_CHARS
from flows.extract_yes_no import parse_yes_no

__all__ = [
    "DEFAULT_EXIT_PHRASES",
    "MAX_ANSWER_CHARS",
    "REGEX_TIMEOUT_S",
    "extract",
    "match_choice",
    "match_exit",
    "match_pattern",
    "parse_date",
    "parse_number",
    "parse_time",
    "parse_yes_no",
]


def extract(
    kind: str,
    text: str,
    *,
    now: datetime | None = None,
    choices: Iterable[tuple[str, Sequence[str]]] = (),
    pattern: str | None = None,
    regex_timeout_s: float = REGEX_TIMEOUT_S,
) -> Any:
    """Dispatch to the parser for a collect ``kind``; None when nothing usable was said.

    Only the first :data:`MAX_ANSWER_CHARS` characters are parsed (``text`` answers are kept whole). A
    ``regex`` pattern gets ``regex_timeout_s`` in all; a match that runs out of time is no match.
    """
    if kind == "text":
        stripped = text.strip()
        return stripped or None
    if kind == "regex":
        return match_pattern(pattern, text, timeout_s=regex_timeout_s) if pattern else None
    text = text[:MAX_ANSWER_CHARS]
    if kind == "number":
        return parse_number(text)
    if kind == "yes_no":
        return parse_yes_no(text)
    if kind == "date":
        return parse_date(text, now or datetime.now())
    if kind == "time":
        return parse_time(text)
    if kind == "choice":
        return match_choice(text, choices)
    raise ValueError(f"unknown collect kind {kind!r}")
