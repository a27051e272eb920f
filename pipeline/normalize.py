"""``normalize_for_speech``: written text (markdown, numbers, currencies, times, symbols, emoji) rewritten
into the words a voice should say, before the TTS engine sees it."""

from __future__ import annotations

import re
from collections.abc import Callable

from num2words import num2words

# -- number words ---------------------------------------------------------------------------------------------

_DIGITS = "zero one two three four five six seven eight nine".split()
_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "€": ("euro", "euros", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
}
_SCALES = {"k": "thousand", "m": "million", "b": "billion", "bn": "billion"}


def _tidy(words: str) -> str:
    # num2words writes "one thousand, two hundred and five": commas make TTS pause mid-number.
    return words.replace(",", "").replace(" and ", " ").replace("oh-", "oh ")


def _cardinal(n: int) -> str:
    return _tidy(num2words(n))


def _digits(s: str) -> str:
    return " ".join(_DIGITS[int(d)] for d in s)


def _number(int_part: str, frac: str | None = None) -> str:
    """Words for a decimal numeral such as "1,000" or "2.05" (fraction digits read one by one)."""
    digits = int_part.replace(",", "")
    # Leading zeros and very long digit runs are codes or phone numbers, not quantities.
    code = (len(digits) > 1 and digits[0] == "0") or len(digits) > 9
    words = _digits(digits) if code else _cardinal(int(digits))
    return f"{words} point {_digits(frac)}" if frac else words


def _currency(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCIES[m["sym"]]
    whole, frac = m["int"], m["frac"]
    scale = m["scale"] or _SCALES.get((m["abbr"] or "").lower())
    if scale:
        return f"{_number(whole, frac)} {scale} {many}"
    if frac and len(frac) > 2:
        return f"{_number(whole, frac)} {many}"
    units, cents = int(whole.replace(",", "")), int((frac or "0").ljust(2, "0"))
    main = f"{_cardinal(units)} {one if units == 1 else many}"
    sub = f"{_cardinal(cents)} {sub_one if cents == 1 else sub_many}"
    if not cents:
        return main
    return sub if units == 0 else f"{main} and {sub}"


def _clock(hour: int, minute: int, o_clock: bool) -> str:
    if minute == 0:
        return f"{_cardinal(hour)} o'clock" if o_clock else _cardinal(hour)
    return f"{_cardinal(hour)} {'oh ' + _cardinal(minute) if minute < 10 else _cardinal(minute)}"


def _keep_stop(m: re.Match) -> str:
    # An abbreviation's dot may also end the sentence; keep it so prosody and clause splitting still see it.
    end = m.string[m.end() :]
    return "." if m.group(0).endswith(".") and (not end.strip() or re.match(r"\s+[A-Z]", end)) else ""


def _time_ampm(m: re.Match) -> str:
    hour, minute = int(m["h"]), int(m["m"] or 0)
    if hour > 23 or minute > 59:
        return m.group(0)
    return f"{_clock(hour, minute, o_clock=False)} {m['ap'].lower()} m{_keep_stop(m)}"


def _time_24h(m: re.Match) -> str:
    hour, minute = int(m["h"]), int(m["m"])
    if hour > 23 or minute > 59:
        return m.group(0)
    if minute == 0 and hour > 12:
        return f"{_cardinal(hour)} hundred"
    return _clock(hour, minute, o_clock=True)


def _year(m: re.Match) -> str:
    words = _tidy(num2words(int(m[1]), to="year"))
    if m[2]:  # a decade: "1990s" -> "nineteen nineties"
        words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    return words


def _phone(m: re.Match) -> str:
    return ", ".join(_digits(group) for group in m.group(0).split("-"))


def _plain_number(m: re.Match) -> str:
    sign = "minus " if m["neg"] else ""
    return f"{sign}{_number(m['int'], m['frac'])}"


# -- normalisation rules, compiled once -----------------------------------------------------------------------

_Rule = tuple[re.Pattern, "str | Callable[[re.Match], str]"]

_BLOCK_MARKER = re.compile(r"^\s*(?:#{1,6}\s+|[-*+•]\s+|\d{1,3}[.)]\s+|>\s?)")
_RULE_LINE = re.compile(r"^(?=(?:.*[-*_]){3})[\s|:*_-]+$")  # "---", "* * *", "|---|:--:|"
_CODE_FENCE = re.compile(r"^\s*(```|~~~)")

_MARKDOWN: list[_Rule] = [
    # "[" is not link text: with it, a run of "[" made this quadratic.
    (re.compile(r"!?\[([^\][]*)\]\([^)]*\)"), r"\1"),  # links and images -> label / alt text
    (re.compile(r"`+([^`]*)`+"), r"\1"),
    (re.compile(r"(\*\*|__|~~)(?=\S)(.+?)(?<=\S)\1"), r"\2"),
    (re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)"), r"\1"),
]

_TLD = r"(?:com|org|net|io|ai|dev|co|edu|gov|uk|de|fr|app)"
_URLS: list[_Rule] = [
    (
        # The local part starts where a run of its characters starts and is at most 64 long (RFC 5321):
        # unanchored, a long run without "@" made this pattern quadratic (180 ms for 4,000 characters).
        re.compile(r"(?<![\w.+-])([\w.+-]{1,64})@([\w-]+(?:\.[\w-]+)+)\b"),
        lambda m: f"{m[1].replace('.', ' dot ')} at {m[2].replace('.', ' dot ')}",
    ),
    (
        re.compile(r"\b(?:https?://|www\.)(?:www\.)?([\w-]+(?:\.[\w-]+)*)(?:[^\s<>()]*[^\s<>().,;:!?'\"])?"),
        lambda m: m[1].replace(".", " dot "),
    ),
    (re.compile(rf"\b([a-z][\w-]*\.{_TLD})\b(?![.\w])"), lambda m: m[1].replace(".", " dot ")),
]

_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2b00-\u2bff\u2300-\u23ff\u2190-\u21ff"
    "\ufe0e\ufe0f\u200d\u20e3\U000e0020-\U000e007f]+"
)

_TITLES = {"Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz"}
_LATIN = {"e.g": "for example", "i.e": "that is", "etc": "et cetera", "approx": "approximately"}
_WORDS: list[_Rule] = [
    (re.compile(r"\b(Dr|Mr|Mrs|Ms)\.(?=\s)"), lambda m: _TITLES[m[1]]),
    # "St. Louis" (a name follows) is a saint; "Main St." is a street.
    (re.compile(r"\bSt\.(?=\s+[A-Z])"), "Saint"),
    (re.compile(r"\bSt\."), lambda m: "Street" + _keep_stop(m)),
    (
        re.compile(r"\b(e\.g|i\.e|etc|approx)\.(?!\w)", re.I),
        lambda m: _LATIN[m[1].lower()] + _keep_stop(m),
    ),
    (re.compile(r"\bvs\.?(?=\s)", re.I), "versus"),
    (re.compile(r"\s*&\s*"), " and "),
    (re.compile(r"#(?=\d)"), "number "),
]


def _padded(fn: Callable[[re.Match], str]) -> Callable[[re.Match], str]:
    """Wrap a number rule so its words are spaced off letters and digits ("5G" -> "five G")."""

    def repl(m: re.Match) -> str:
        before, after = m.string[m.start() - 1 : m.start()], m.string[m.end() : m.end() + 1]
        pre = " " if before.isalnum() else ""
        post = " " if after.isalnum() else ""
        return f"{pre}{fn(m)}{post}"

    return repl


_NUMBERS: list[_Rule] = [
    # Ranges read "to": any en dash between numbers, a hyphen only between short ones ("3-4", not dates).
    (re.compile(r"(?<=\d)\s?–\s?(?=[$€£]?\d)"), " to "),
    (re.compile(r"(?<![\w.,-])(\d{1,3})-(\d{1,3})(?![\w-]|[.,]\d)"), r"\1 to \2"),
    (
        re.compile(
            r"(?P<sym>[$€£])\s?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
            r"(?:\s(?P<scale>thousand|million|billion|trillion)\b|(?P<abbr>[kKmMbB]|bn)\b)?"
        ),
        _padded(_currency),
    ),
    (
        re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?\s?%"),
        _padded(lambda m: f"{_number(m[1], m[2])} percent"),
    ),
    (
        re.compile(r"(?<![\d:])(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s?(?P<ap>[aApP])\.?\s?[mM](?!\w)\.?"),
        _padded(_time_ampm),
    ),
    (re.compile(r"(?<![\d:])(?P<h>\d{1,2}):(?P<m>\d{2})(?![\d:])"), _padded(_time_24h)),
    (
        re.compile(r"(?<![\d.,])(\d+)(?:st|nd|rd|th)\b", re.I),
        _padded(lambda m: _tidy(num2words(int(m[1]), to="ordinal"))),
    ),
    (re.compile(r"(?<![\d.,\-])\b(1[1-9]\d\d|20\d\d)(s)?\b(?![.,]\d)"), _padded(_year)),
    # Phone-like digit groups ("1-800-555-0199", "555-1234") are read digit by digit.
    (re.compile(r"(?<![\w.-])\d{1,3}(?:-\d{3,4}){1,3}(?![\w-])(?<=\d{4})"), _padded(_phone)),
    (
        re.compile(r"\s?°\s?([CF]\b)?"),
        lambda m: " degrees" + {"C": " Celsius", "F": " Fahrenheit"}.get(m[1], ""),
    ),
    (
        re.compile(
            r"(?P<neg>(?<![^\s(])[-−])?(?<![\d.,])(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
        ),
        _padded(_plain_number),
    ),
]

_CLEANUP: list[_Rule] = [
    (re.compile(r"[*`•|]+"), " "),
    (re.compile(r"\s+"), " "),
    (re.compile(r" (?=[.,!?;:])"), ""),
]


def _apply(text: str, rules: list[_Rule]) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


def _strip_blocks(text: str) -> str:
    """Drop markdown block markers line by line; end headings, list items and table rows with a stop."""
    lines = [ln.strip() for ln in text.splitlines() if not _CODE_FENCE.match(ln) and not _RULE_LINE.match(ln)]
    last = max((i for i, ln in enumerate(lines) if ln), default=-1)
    for i, line in enumerate(lines):
        if line.startswith("|"):  # a table row: read its cells as a list
            lines[i] = ", ".join(cell.strip() for cell in line.strip("|").split("|"))
        else:
            lines[i] = _BLOCK_MARKER.sub("", line)
        if lines[i] != line and lines[i] and i < last and lines[i][-1] not in ".!?:;,":
            lines[i] += "."
    return "\n".join(lines)


def normalize_for_speech(text: str, language: str = "en") -> str:
    """Rewrite written text (markdown, URLs, emoji, numbers, money, times, abbreviations) as speakable words.

    ``language`` is the voice's: the number and abbreviation words are English, so for another language the
    digits are left to the voice, which reads them in its own (espeak-ng, and Piper through espeak-ng)."""
    text = _strip_blocks(text)
    text = _apply(text, _MARKDOWN)
    text = _apply(text, _URLS)
    text = _EMOJI.sub(" ", text)
    if language.lower().startswith("en"):
        text = _apply(text, _WORDS)
        text = _apply(text, _NUMBERS)
    return _apply(text, _CLEANUP).strip()
