"""Collect patterns (regular expressions from flow documents) run on callers' answers under a time limit."""

from __future__ import annotations

import logging
import time

import regex

from flows.extract_tokens import UNITS, normalize

__all__ = ["REGEX_TIMEOUT_S", "match_pattern"]

log = logging.getLogger("voxgate.flows")


# Default time limit for one collect pattern on one answer (the gateway's setting flow_regex_timeout_ms).
# Patterns come from flow documents and answers from callers: ``^(a|a)+$`` on 25 characters took 4.6 s.
REGEX_TIMEOUT_S = 0.02


def _spoken_digits(text: str) -> str:
    """``text`` with runs of single spoken digits joined ("one two three" -> "123") for regex answers."""
    words = {**{k: v for k, v in UNITS.items() if v < 10}, "oh": 0, "o": 0}
    out: list[str] = []
    for tok in normalize(text).split():
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
