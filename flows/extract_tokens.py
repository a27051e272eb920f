"""The groundwork every parser of caller answers shares: words to tokens, spoken numbers to digits.

An answer is lower-cased and normalised (curly quotes, "p.m.", "o'clock", hyphens) and cut into tokens;
numbers spelt in words ("twenty two", "a dozen", and for dates "the third") become digit tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["MAX_ANSWER_CHARS", "UNITS", "digit_value", "normalize", "number_phrase", "numberize", "tokenize"]

# The parsers look at this much of an answer. A spoken answer is a sentence or two; a typed one can be 4,000
# characters, and the choice and time parsers are not linear in it (one long answer held the loop for 3 s).
MAX_ANSWER_CHARS = 400

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

_NUMBER_TOKEN = re.compile(r"^\d+(?:\.\d+)?$")
_TOKEN = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+(?::\d+|\.\d+)?(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?")


def normalize(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    # "p.m." / "a.m." before punctuation goes, or they become two stray letters.
    text = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", text)
    text = re.sub(r"(\d)\s*(am|pm)\b", r"\1 \2", text)
    text = text.replace("o'clock", "oclock").replace("-", " ")
    return text


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def number_phrase(tokens: Sequence[str], i: int) -> tuple[float | int, int] | None:
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


def digit_value(token: str) -> float | int | None:
    token = re.sub(r"(st|nd|rd|th)$", "", token).replace(",", "")
    if not _NUMBER_TOKEN.match(token):
        return None
    number = float(token)
    return int(number) if "." not in token else number


def numberize(tokens: Sequence[str], ordinals: bool = False) -> list[str]:
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
        phrase = None if ordinals and t in ("a", "an") else number_phrase(tokens, i)
        if phrase is not None:
            value, i = phrase
            out.append(str(value))
            continue
        value = digit_value(t) if ":" not in t else None
        out.append(str(value) if value is not None else t)
        i += 1
    return out
