"""Numbers in a caller's answer: digits, numbers in words, and the homophones speech recognisers write."""

from __future__ import annotations

from flows.extract_tokens import digit_value, number_phrase, tokenize

__all__ = ["parse_number"]

# Speech recognisers write a small number as its homophone ("we are for people", "a table to guests").
# Only before a word that counts people or things, so "for dinner" or "to book" stay words.
_HOMOPHONES = {"for": 4, "fore": 4, "to": 2, "too": 2}
_COUNTED = {"people", "persons", "person", "guests", "adults", "kids", "children", "of", "seats", "tickets"}


def parse_number(text: str) -> int | float | None:
    """The first number in ``text``: digits ("12", "1,200", "2.5") or words ("twenty two", "a dozen");
    failing those, a homophone before a counted noun ("for people" is 4)."""
    tokens = tokenize(text)
    for i, t in enumerate(tokens):
        value = digit_value(t) if ":" not in t else None
        if value is not None:
            return value
        phrase = number_phrase(tokens, i)
        if phrase is not None:
            return phrase[0]
    for t, nxt in zip(tokens, tokens[1:], strict=False):
        if t in _HOMOPHONES and nxt in _COUNTED:
            return _HOMOPHONES[t]
    return None
