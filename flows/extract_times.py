"""Clock times in a caller's answer ("half past seven", "7:30pm", "nineteen hundred"), as 24 h ``HH:MM``."""

from __future__ import annotations

import re
from collections.abc import Sequence

from flows.extract_tokens import numberize, tokenize

__all__ = ["parse_time"]

_PM_WORDS = re.compile(r"\b(pm|tonight|evening|afternoon|at night)\b")
_AM_WORDS = re.compile(r"\b(in the morning|this morning|morning)\b")
_TIME_LEAD = frozenset({"at", "around", "by", "about", "until", "before", "after"})


def parse_time(text: str) -> str | None:
    """A 24 h ``HH:MM`` time for ``text``; None if there is none.

    Understands "7 pm", "7:30pm", "19:30", "seven thirty in the evening", "half past seven", "quarter to
    eight", "ten past nine", "8 o'clock", "noon", "midnight". An hour without am/pm or a time-of-day word is
    taken as said ("at seven" is 07:00).
    """
    raw: list[str] = []
    for t in tokenize(text):
        # Split clock tokens before numberizing, or "7.30" would become the number 7.3.
        if re.fullmatch(r"\d{1,2}[:.]\d{2}", t):
            h, m = re.split(r"[:.]", t)
            raw.extend([h, ":", m])
        else:
            raw.append(t)
    tokens = numberize(raw)
    joined = " ".join(tokens)
    if re.search(r"\b(noon|midday)\b", joined):
        return "12:00"
    if re.search(r"\bmidnight\b", joined):
        return "00:00"

    best: tuple[int, int, int, int] | None = None  # (score, -position, hour, minute)
    for i, t in enumerate(tokens):
        if not t.isdigit():
            continue
        cand = _time_at(tokens, i)
        if cand is None:
            continue
        hour, minute, end, score = cand
        if i > 0 and tokens[i - 1] in _TIME_LEAD:
            score += 1
        meridiem = tokens[end] if end < len(tokens) and tokens[end] in ("am", "pm") else None
        if meridiem:
            score += 2
        key = (score, -i, *_apply_meridiem(hour, minute, meridiem, joined))
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None or best[2] < 0:
        return None
    return f"{best[2]:02d}:{best[3]:02d}"


def _time_at(tokens: Sequence[str], i: int) -> tuple[int, int, int, int] | None:
    """(hour, minute, index after, score) for a clock time starting at digit token ``i``."""
    value = int(tokens[i])
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    # "half past 7", "quarter to 8", "10 past 9", "20 to 6"
    if i >= 1 and tokens[i - 1] in ("past", "after", "to", "till", "til", "before") and 0 <= value <= 24:
        word = tokens[i - 1]
        lead = tokens[i - 2] if i >= 2 else ""
        minutes = {"half": 30, "quarter": 15}.get(lead)
        if minutes is None and i >= 3 and lead == "minutes" and tokens[i - 3].isdigit():
            minutes = int(tokens[i - 3])
        elif minutes is None and lead.isdigit():
            minutes = int(lead)
        if minutes is not None and 0 < minutes < 60:
            if word in ("past", "after"):
                return value, minutes, i + 1, 4
            if word in ("to", "till", "til") or (word == "before" and lead != ""):
                return (value - 1) % 24, 60 - minutes, i + 1, 4
    if value > 24:
        digits = tokens[i]
        if len(digits) in (3, 4) and int(digits[:-2]) < 24 and int(digits[-2:]) < 60:  # "1930", "730"
            return int(digits[:-2]), int(digits[-2:]), i + 1, 1
        return None
    if nxt == ":" and i + 2 < len(tokens) and tokens[i + 2].isdigit() and int(tokens[i + 2]) < 60:
        return value, int(tokens[i + 2]), i + 3, 3
    if nxt == "oclock":
        return value, 0, i + 2, 3
    if nxt in ("oh", "o") and i + 2 < len(tokens) and tokens[i + 2].isdigit() and int(tokens[i + 2]) < 10:
        return value, int(tokens[i + 2]), i + 3, 3
    if nxt.isdigit() and 10 <= int(nxt) < 60 and value <= 12:  # "seven thirty"
        return value, int(nxt), i + 2, 2
    if nxt in ("hundred",) and value <= 24:  # "nineteen hundred"
        return value, 0, i + 2, 2
    return value, 0, i + 1, 0


def _apply_meridiem(hour: int, minute: int, meridiem: str | None, joined: str) -> tuple[int, int]:
    if hour > 24 or minute > 59:
        return -1, 0
    if meridiem is None:
        if _PM_WORDS.search(joined):
            meridiem = "pm"
        elif _AM_WORDS.search(joined):
            meridiem = "am"
    if meridiem == "pm" and 1 <= hour < 12:
        hour += 12
    elif meridiem == "am" and hour == 12:
        hour = 0
    return hour % 24, minute
