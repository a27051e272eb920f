"""Yes or no in a caller's answer."""

from __future__ import annotations

import re

from flows.extract_tokens import tokenize

__all__ = ["parse_yes_no"]

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
    t = " ".join(tokenize(text))
    if not t or _UNSURE.search(t):
        return None
    t = _YES_IDIOMS.sub(" yes ", t)
    if _NO.search(t):
        return False
    if _YES.search(t):
        return True
    return None
