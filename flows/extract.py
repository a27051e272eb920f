"""Deterministic parsers that turn a caller's words into typed values.

Each parser takes one utterance (as transcribed, or typed) and returns a JSON-ready value or ``None`` when it
found nothing it trusts. No model is involved, so the same words always give the same value, and relative
dates are resolved against a ``now`` the caller passes in (the session clock, in the flow's time zone).

Values: numbers are ``int`` (or ``float`` for decimals), yes/no is ``bool``, dates are ISO ``YYYY-MM-DD``,
times are ``HH:MM`` (24 h), a choice is the canonical choice string, text is the stripped utterance.
"""

from __future__ import annotations

import calendar
import difflib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

import regex

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

log = logging.getLogger("voxgate.flows")

# The parsers look at this much of an answer. A spoken answer is a sentence or two; a typed one can be 4,000
# characters, and the choice and time parsers are not linear in it (one long answer held the loop for 3 s).
MAX_ANSWER_CHARS = 400
# Default time limit for one collect pattern on one answer (the gateway's setting flow_regex_timeout_ms).
# Patterns come from flow documents and answers from callers: ``^(a|a)+$`` on 25 characters took 4.6 s.
REGEX_TIMEOUT_S = 0.02

UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90,
}  # fmt: skip
ORDINAL_UNITS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
    "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19,
}  # fmt: skip
ORDINAL_TENS = {"twentieth": 20, "thirtieth": 30}
SCALES = {"thousand": 1000, "million": 1_000_000}
MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4, "may": 5,
    "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9, "sep": 9, "sept": 9,
    "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12, "dec": 12,
}  # fmt: skip
WEEKDAYS = {
    "monday": 0, "mon": 0, "tuesday": 1, "tue": 1, "tues": 1, "wednesday": 2, "wed": 2, "thursday": 3,
    "thu": 3, "thur": 3, "thurs": 3, "friday": 4, "fri": 4, "saturday": 5, "sat": 5, "sunday": 6, "sun": 6,
}  # fmt: skip

_NUMBER_TOKEN = re.compile(r"^\d+(?:\.\d+)?$")
_TOKEN = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?::\d+|\.\d+)?(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?")


def _normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    # "p.m." / "a.m." before punctuation goes, or they become two stray letters.
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = re.sub(r"(\d)\s*(am|pm)\b", r"\1 \2", text)
    text = text.replace("o'clock", "oclock").replace("-", " ")
    return text


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(_normalize(text))


def _number_phrase(tokens: Sequence[str], i: int) -> tuple[float | int, int] | None:
    """A number spelt in words starting at ``tokens[i]``: (value, index after it), or None."""
    t = tokens[i]
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    # Idioms first: they start with words that are not numbers on their own.
    if t == "half" and nxt == "a" and i + 2 < len(tokens) and tokens[i + 2] == "dozen":
        return 6, i + 3
    if t in ("a", "an") and nxt in ("dozen", "couple", "pair"):
        end = i + 2 + (1 if i + 2 < len(tokens) and tokens[i + 2] == "of" else 0)
        return (12 if nxt == "dozen" else 2), end
    if t in ("a", "one") and nxt in ("hundred", "thousand"):
        i += 1
        t = tokens[i]
    elif t in ("dozen", "couple"):
        return (12 if t == "dozen" else 2), i + 1
    if t not in UNITS and t not in TENS and t not in ("hundred", "thousand"):
        return None
    total, current, last = 0, 0, ""
    j = i
    while j < len(tokens):
        t = tokens[j]
        if t in UNITS:
            value = UNITS[t]
            # "seven thirty" is two numbers (a time), "twenty twelve" is not twenty-twelve.
            if last == "unit" or (last == "tens" and value > 9):
                break
            current += value
            last = "unit"
        elif t in TENS:
            if last in ("unit", "tens"):
                break
            current += TENS[t]
            last = "tens"
        elif t == "hundred":
            if last == "hundred":
                break
            current = (current or 1) * 100
            last = "hundred"
        elif t in SCALES:
            if last == "scale":
                break
            total += (current or 1) * SCALES[t]
            current = 0
            last = "scale"
        elif t == "dozen" and last in ("unit", "tens"):
            current *= 12
            last = "scale"
        elif (
            t == "and"
            and last in ("hundred", "scale")
            and j + 1 < len(tokens)
            and (tokens[j + 1] in UNITS or tokens[j + 1] in TENS)
        ):
            pass
        else:
            break
        j += 1
    return total + current, j


def _digits(token: str) -> float | int | None:
    token = re.sub(r"(st|nd|rd|th)$", "", token).replace(",", "")
    if not _NUMBER_TOKEN.match(token):
        return None
    number = float(token)
    return int(number) if "." not in token else number


def _numberize(tokens: Sequence[str], ordinals: bool = False) -> list[str]:
    """Tokens with spelt numbers (and, if asked, ordinal words) replaced by digit strings."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if ordinals:
            if t in TENS and i + 1 < len(tokens) and tokens[i + 1] in ORDINAL_UNITS:
                out.append(str(TENS[t] + ORDINAL_UNITS[tokens[i + 1]]))
                i += 2
                continue
            if t in ORDINAL_UNITS or t in ORDINAL_TENS:
                out.append(str(ORDINAL_UNITS.get(t) or ORDINAL_TENS[t]))
                i += 1
                continue
        # For dates, "a" stays a word ("in a week"); elsewhere "a dozen" / "a couple" are numbers.
        phrase = None if ordinals and t in ("a", "an") else _number_phrase(tokens, i)
        if phrase is not None:
            value, i = phrase
            out.append(str(value))
            continue
        value = _digits(t) if ":" not in t else None
        out.append(str(value) if value is not None else t)
        i += 1
    return out


# Speech recognisers write a small number as its homophone ("we are for people", "a table to guests").
# Only before a word that counts people or things, so "for dinner" or "to book" stay words.
_HOMOPHONES = {"for": 4, "fore": 4, "to": 2, "too": 2}
_COUNTED = {"people", "persons", "person", "guests", "adults", "kids", "children", "of", "seats", "tickets"}


def parse_number(text: str) -> int | float | None:
    """The first number in ``text``: digits ("12", "1,200", "2.5") or words ("twenty two", "a dozen");
    failing those, a homophone before a counted noun ("for people" is 4)."""
    tokens = _tokens(text)
    for i, t in enumerate(tokens):
        value = _digits(t) if ":" not in t else None
        if value is not None:
            return value
        phrase = _number_phrase(tokens, i)
        if phrase is not None:
            return phrase[0]
    for t, nxt in zip(tokens, tokens[1:], strict=False):
        if t in _HOMOPHONES and nxt in _COUNTED:
            return _HOMOPHONES[t]
    return None


# --- yes / no -------------------------------------------------------------------------------------------

_UNSURE = re.compile(r"\b(not sure|unsure|don't know|dont know|do not know|dunno|maybe|perhaps|no idea)\b")
_YES_IDIOMS = re.compile(r"\b(no problem|no worries|why not|not a problem|no doubt)\b")
_NO = re.compile(
    r"\b(no|nope|nah|negative|incorrect|wrong|cancel|never|not|don't|dont|do not|doesn't|isn't|is not|"
    r"wasn't|won't|can't|cannot|mistake)\b"
)
_YES = re.compile(
    r"\b(yes|yeah|yea|yep|yup|ya|sure|correct|right|absolutely|definitely|certainly|of course|affirmative|"
    r"ok|okay|alright|all right|sounds good|perfect|great|fine|confirm|confirmed|exactly|indeed|please do|"
    r"go ahead|that works|i do|i will|it is|uh huh|mhm|yes please|book it|do it|agreed)\b"
)


def parse_yes_no(text: str) -> bool | None:
    """True for yes-like answers, False for no-like ones, None when unclear ("maybe", silence, other words).

    A negation wins over a yes word ("that's not right" is no), except idioms like "no problem".
    """
    t = " ".join(_tokens(text))
    if not t or _UNSURE.search(t):
        return None
    t = _YES_IDIOMS.sub(" yes ", t)
    if _NO.search(t):
        return False
    if _YES.search(t):
        return True
    return None


# --- dates ----------------------------------------------------------------------------------------------


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
    norm = _normalize(text)
    iso = re.search(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", text)  # before _normalize drops the hyphens
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

    tokens = _numberize(_tokens(text), ordinals=True)
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


# --- times ----------------------------------------------------------------------------------------------

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
    for t in _tokens(text):
        # Split clock tokens before numberizing, or "7.30" would become the number 7.3.
        if re.fullmatch(r"\d{1,2}[:.]\d{2}", t):
            h, m = re.split(r"[:.]", t)
            raw.extend([h, ":", m])
        else:
            raw.append(t)
    tokens = _numberize(raw)
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


# --- choices and intents --------------------------------------------------------------------------------


@lru_cache(maxsize=16384)  # the same choices and exit phrases are normalized on every answer
def _words(text: str) -> str:
    return " ".join(_tokens(text))


def _contains(haystack: str, needle: str) -> bool:
    return bool(_find_all(haystack, needle))


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789'")


def _find_all(haystack: str, needle: str) -> list[tuple[int, int]]:
    """(start, end) of each place ``needle`` stands as whole words in ``haystack``.

    Plain ``str.find`` rather than a regular expression per phrase: a choice list can hold thousands of
    phrases, and compiling a pattern for each took a second per answer.
    """
    spans: list[tuple[int, int]] = []
    if not needle:
        return spans
    start = haystack.find(needle)
    while start >= 0:
        end = start + len(needle)
        before = haystack[start - 1] if start else " "
        after = haystack[end] if end < len(haystack) else " "
        if before not in _WORD_CHARS and after not in _WORD_CHARS:
            spans.append((start, end))
            start = haystack.find(needle, end)  # matches do not overlap
        else:
            start = haystack.find(needle, start + 1)
    return spans


def match_choice(
    text: str, choices: Iterable[tuple[str, Sequence[str]]], *, cutoff: float = 0.82
) -> str | None:
    """The value of the choice named in ``text``: ``choices`` are ``(value, synonyms)`` pairs.

    An exact answer wins, then a choice or synonym said as whole words (a phrase inside a longer matched one,
    like "room" in "dining room", does not count), then a close spelling (a transcription slip such as
    "pattio"). Two different choices named, or tied for the closest spelling, give None.
    """
    said = _words(text[:MAX_ANSWER_CHARS])
    if not said:
        return None
    options: list[tuple[str, str]] = []  # (normalized phrase, value)
    for value, synonyms in choices:
        for phrase in (value, *synonyms):
            norm = _words(phrase)
            if norm:
                options.append((norm, value))
    for norm, value in options:
        if said == norm:
            return value
    hits = [(start, end, value) for norm, value in options for start, end in _find_all(said, norm)]
    if hits:
        # A phrase inside a longer one ("room" in "dining room") does not count; two separate choices
        # ("inside or outside") are ambiguous.
        kept = {
            v for s, e, v in hits if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2, _ in hits)
        }
        return kept.pop() if len(kept) == 1 else None
    return _fuzzy_choice(said.split(), options, cutoff)


# Fuzzy matching costs one comparison per (phrase, word window): a long answer against a long choice list
# could take seconds. Past this many comparisons the rest of the answer is not searched.
MAX_FUZZY_COMPARISONS = 2_000


def _fuzzy_choice(words: list[str], options: list[tuple[str, str]], cutoff: float) -> str | None:
    """Compare each phrase with word windows of the same length; the closest spelling wins."""
    best: tuple[float, str] | None = None
    tie = False
    budget = MAX_FUZZY_COMPARISONS
    windows: dict[int, list[str]] = {}
    for norm, value in options:
        n = norm.count(" ") + 1
        if n not in windows:
            windows[n] = [" ".join(words[k : k + n]) for k in range(max(len(words) - n + 1, 1))]
        matcher: difflib.SequenceMatcher[str] | None = None
        for window in windows[n]:
            budget -= 1
            if budget < 0:
                return None if best is None or tie else best[1]
            # Upper bounds of ratio() first: most windows are ruled out by their length or letters alone.
            if 2 * min(len(window), len(norm)) < cutoff * (len(window) + len(norm)):
                continue
            if matcher is None:
                matcher = difflib.SequenceMatcher(None, b=norm)  # caches what it learns about the phrase
            matcher.set_seq1(window)
            if matcher.quick_ratio() < cutoff:
                continue
            ratio = matcher.ratio()
            if ratio < cutoff:
                continue
            if best is None or ratio > best[0]:
                best, tie = (ratio, value), False
            elif ratio == best[0] and value != best[1]:
                tie = True
    return None if best is None or tie else best[1]


# Trigger phrases for common exit names, used when an exit lists no phrases of its own.
DEFAULT_EXIT_PHRASES: dict[str, tuple[str, ...]] = {
    "human": (
        "talk to a person", "talk to someone", "speak to a person", "speak to someone", "speak with someone",
        "talk to a human", "speak to a human", "real person", "human", "agent", "representative", "operator",
        "customer service",
    ),
    "goodbye": ("goodbye", "good bye", "bye", "that's all", "that is all", "nothing else", "hang up"),
}  # fmt: skip
_NAME_GROUPS = {
    "human": {"human", "agent", "operator", "representative", "person", "staff", "transfer"},
    "goodbye": {"bye", "goodbye", "hangup", "done", "finished", "end"},
}


def _default_phrases(name: str) -> tuple[str, ...]:
    parts = set(name.lower().split("_"))
    for group, words in _NAME_GROUPS.items():
        if parts & words:
            return DEFAULT_EXIT_PHRASES[group]
    return ()


def match_exit(text: str, exits: Iterable[Any]) -> str | None:
    """The name of the exit whose trigger phrase ``text`` says, or None.

    ``exits`` are objects (or dicts) with ``name`` and optional ``phrases``; exits without phrases get
    defaults from their name (``wants_human`` -> "talk to a person", "agent", ...; ``goodbye`` -> "bye", ...).
    The longest matching phrase wins, so "talk to a person" beats a shorter phrase of another exit.
    """
    said = _words(text[:MAX_ANSWER_CHARS])
    if not said:
        return None
    best: tuple[int, str] | None = None
    for ex in exits:
        name = ex["name"] if isinstance(ex, dict) else ex.name
        phrases = (ex.get("phrases") if isinstance(ex, dict) else ex.phrases) or _default_phrases(name)
        for phrase in phrases:
            norm = _words(phrase)
            if _contains(said, norm) and (best is None or len(norm) > best[0]):
                best = (len(norm), name)
    return best[1] if best else None


# --- dispatch -------------------------------------------------------------------------------------------


def _spoken_digits(text: str) -> str:
    """``text`` with runs of single spoken digits joined ("one two three" -> "123") for regex answers."""
    words = {**{k: v for k, v in UNITS.items() if v < 10}, "oh": 0, "o": 0}
    out: list[str] = []
    for tok in _normalize(text).split():
        bare = tok.strip(".,;!?")
        if bare in words:
            digit = str(words[bare])
            if out and out[-1].isdigit():
                out[-1] += digit
            else:
                out.append(digit)
        elif bare.isdigit() and out and out[-1].isdigit():
            out[-1] += bare
        else:
            out.append(tok)
    return " ".join(out)


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


def match_pattern(pattern: str, text: str, *, timeout_s: float = REGEX_TIMEOUT_S) -> str | None:
    """The first group (or the whole match) of ``pattern`` in ``text`` as said or with spoken digits joined.

    Runs on the ``regex`` engine with a time limit for both tries together, so a pattern that backtracks
    catastrophically costs at most ``timeout_s``: running out of time (or a pattern that does not compile)
    counts as no match, and is logged.
    """
    deadline = time.monotonic() + timeout_s
    for candidate in (text, _spoken_digits(text)):
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            found = regex.search(pattern, candidate, flags=regex.IGNORECASE, timeout=left)
        except TimeoutError:
            log.warning("collect pattern %.60r ran out of time (%g ms): no match", pattern, timeout_s * 1000)
            return None
        except regex.error as exc:  # only an unvalidated flow gets here
            log.warning("collect pattern %.60r does not compile: %s", pattern, exc)
            return None
        if found:
            return found.group(1) if found.groups() else found.group(0)
    return None
