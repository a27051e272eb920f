"""Calendar dates in a caller's answer, relative ones resolved against the session clock."""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from datetime import date, datetime, timedelta

from flows.extract_tokens import normalize, numberize, tokenize

__all__ = ["parse_date"]

MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4, "may": 5,
    "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9, "sep": 9, "sept": 9,
    "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
WEEKDAYS = {
    "monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2, "thursday": 3,
    "thu": 3, "thur": 3, "thurs": 3, "friday": 4, "fri": 4, "saturday": 5, "sat": 5, "sunday": 6, "sun": 6,
}  # fmt: skip


def _next_on_or_after(today: date, month: int, day: int) -> date | None:
    for year in (today.year, today.year + 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue  # Feb 29 in a non-leap year: try the next year
        if candidate >= today:
            return candidate
    return None


def _make_date(year: int | None, month: int, day: int, today: date) -> date | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    if year is None:
        return _next_on_or_after(today, month, day)
    if year < 100:
        year += 2000
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _year_at(tokens: Sequence[str], i: int) -> int | None:
    if i < len(tokens) and tokens[i].isdigit() and len(tokens[i]) == 4 and 1900 <= int(tokens[i]) <= 2200:
        return int(tokens[i])
    return None


def _day_value(token: str) -> int | None:
    return int(token) if token.isdigit() and 1 <= int(token) <= 31 and len(token) <= 2 else None


def parse_date(text: str, now: datetime | date, *, day_first: bool = False) -> str | None:
    """An ISO date (``YYYY-MM-DD``) for ``text``, resolved against ``now``; None if no date is found.

    Understands "today", "tomorrow", "the day after tomorrow", "in 3 days", "in two weeks", weekdays
    ("friday", "this friday" = the next one on or after today, "next friday" = the next one after today,
    "friday next week"), month and day ("december 3rd", "the third of december", "dec 3 2027"), a day of the
    month alone ("on the 15th"), ISO dates and numeric dates ("3/12" is March 12; ``day_first`` reads it as
    3 December). Dates without a year are the next such date on or after today.
    """
    today = now.date() if isinstance(now, datetime) else now
    norm = normalize(text)
    iso = re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", text)  # before normalize drops the hyphens
    if iso:
        found = _make_date(int(iso.group(1)), int(iso.group(2)), int(iso.group(3)), today)
        return found.isoformat() if found else None
    slash = re.search(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2}|\d{4}))?\b", norm)
    if slash:
        a, b = int(slash.group(1)), int(slash.group(2))
        month, day = (b, a) if day_first else (a, b)
        year = int(slash.group(3)) if slash.group(3) else None
        found = _make_date(year, month, day, today)
        return found.isoformat() if found else None

    tokens = numberize(tokenize(text), ordinals=True)
    joined = " ".join(tokens)
    rel = re.search(r"\b(?:in )?(a|an|\d+) (day|days|week|weeks)(?: from (today|now))?\b", joined)
    if rel and (rel.group(0).startswith("in ") or rel.group(3)):
        count = 1 if rel.group(1) in ("a", "an") else int(rel.group(1))
        days = count * (7 if rel.group(2).startswith("week") else 1)
        return (today + timedelta(days=days)).isoformat()
    if re.search(r"\bday after tomorrow\b", joined):
        return (today + timedelta(days=2)).isoformat()
    if re.search(r"\btomorrow\b", joined):
        return (today + timedelta(days=1)).isoformat()
    if re.search(r"\b(today|tonight|this (evening|afternoon|morning))\b", joined):
        return today.isoformat()
    if re.search(r"\byesterday\b", joined):
        return (today - timedelta(days=1)).isoformat()

    found = _month_day(tokens, today)
    if found:
        return found.isoformat()
    found = _weekday(tokens, joined, today)
    if found:
        return found.isoformat()
    # "on the 15th" / "the fifteenth": a day of this month, or of the next if it has passed.
    the_day = re.search(r"\bthe (\d{1,2})\b", joined)
    if the_day:
        day = int(the_day.group(1))
        for offset in (0, 1, 2):
            month = (today.month - 1 + offset) % 12 + 1
            year = today.year + (today.month - 1 + offset) // 12
            if day <= calendar.monthrange(year, month)[1] and date(year, month, day) >= today:
                return date(year, month, day).isoformat()
    return None


def _month_day(tokens: Sequence[str], today: date) -> date | None:
    for i, t in enumerate(tokens):
        month = MONTHS.get(t)
        if month is None:
            continue
        # "may" is also a verb: only a month when a day number sits next to it.
        # Month first: "december 3", "december the 3rd", "dec 3 2027".
        j = i + 1 + (1 if i + 1 < len(tokens) and tokens[i + 1] == "the" else 0)
        day = _day_value(tokens[j]) if j < len(tokens) else None
        if day is not None:
            return _make_date(_year_at(tokens, j + 1), month, day, today)
        # Day first: "3rd of december", "the 3 december".
        k = i - 1 - (1 if i >= 2 and tokens[i - 1] == "of" else 0)
        day = _day_value(tokens[k]) if k >= 0 else None
        if day is not None:
            return _make_date(_year_at(tokens, i + 1), month, day, today)
    return None


def _weekday(tokens: Sequence[str], joined: str, today: date) -> date | None:
    for i, t in enumerate(tokens):
        weekday = WEEKDAYS.get(t)
        if weekday is None:
            continue
        before = tokens[i - 1] if i > 0 else ""
        if re.search(rf"\b(next week (on )?{t}|{t} (of )?next week)\b", joined):
            monday_next = today + timedelta(days=7 - today.weekday())
            return monday_next + timedelta(days=weekday)
        ahead = (weekday - today.weekday()) % 7
        if before == "next" and ahead == 0:
            ahead = 7
        return today + timedelta(days=ahead)
    return None
