"""Which listed choice, or which exit of an llm node, a caller's answer names: whole words, then spelling."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

from flows.extract_tokens import MAX_ANSWER_CHARS, tokenize

__all__ = ["DEFAULT_EXIT_PHRASES", "MAX_FUZZY_COMPARISONS", "match_choice", "match_exit"]


@lru_cache(maxsize=16384)  # the same choices and exit phrases are normalized on every answer
def _words(text: str) -> str:
    return " ".join(tokenize(text))


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
