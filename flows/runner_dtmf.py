"""A dtmf menu option the caller named by voice instead of pressing its key."""

from __future__ import annotations

import re

from flows.extract import match_choice
from flows.schema import DtmfMenuNode

__all__ = ["spoken_option"]


_DTMF_WORDS = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "star": "*", "asterisk": "*", "pound": "#", "hash": "#",
}  # fmt: skip


def spoken_option(node: DtmfMenuNode, text: str) -> str | None:
    """The option a caller named instead of pressing a key: its digit ("two", "press 2") or its label."""
    words = re.findall(r"[a-z]+|\d|[*#]", text.lower())
    digits = {o.digit: o.next for o in node.options}
    for word in words:
        digit = _DTMF_WORDS.get(word, word)
        if digit in digits and (word not in ("one", "oh") or len(words) <= 3):  # "one" is also a pronoun
            return digits[digit]
    labels = [(o.digit, _label_words(o.label)) for o in node.options if o.label]
    digit = match_choice(text, labels)
    return digits[digit] if digit else None


def _label_words(label: str) -> list[str]:
    """A dtmf label's alternatives: "sales, buying or orders" -> ["sales", "buying", "orders"]."""
    return [p.strip() for p in re.split(r",|/|;|\bor\b", label) if p.strip()]
