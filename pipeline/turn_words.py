"""Whether a transcript can end where the caller paused, judged from its words alone.

Speech recognisers hear a pause at a comma as the end of a sentence and often write a full stop there, so the
punctuation alone says little. What does not end an English sentence is a closing word that needs something
after it (``and``, ``to``, ``the``, ``my``, ``could``) or a subordinate clause with no main clause
("When I get home from work,"). Both are cheap to see in the speculative transcript that already exists at
every pause. A question mark wins over everything: "Where are you from?" ends in a preposition and is whole.
The lists are closed word classes, not a model of any test's sentences; bench/turn_end.py measures them.
"""

from __future__ import annotations

import re

# Words that cannot close an English sentence: conjunctions, prepositions that are not also particles
# ("come in", "turn it on"), possessive determiners, contracted subjects still waiting for their verb, subject
# pronouns, and hesitations. Words that often do close one ("I think so", "I like that", "I don't have any",
# "yes I can", "I've seen it before") are left out: a false "unfinished" costs the caller a long wait.
_CONJUNCTIONS = "and but or nor because although while whereas unless if whether than"
_PREPOSITIONS = (
    "to of at for with from about into onto under between through like during without towards toward against "
    "among beside despite except per via"
)
_DETERMINERS = "the a an my your its our their every whose"
_CONTRACTED_SUBJECTS = (
    "i'm you're we're they're i've you've we've they've i'd you'd we'd they'd i'll you'll we'll they'll "
    "gonna wanna gotta"
)
_PRONOUNS_AS_SUBJECT = "i we they he she"  # a subject with no verb yet ("and then I")
_HESITATIONS = "um uh er erm"
_CANNOT_END = frozenset(
    " ".join(
        [_CONJUNCTIONS, _PREPOSITIONS, _DETERMINERS, _CONTRACTED_SUBJECTS, _PRONOUNS_AS_SUBJECT, _HESITATIONS]
    ).split()
)
# Subordinators that open a clause needing a main clause after it. "because" is left out on purpose: "Because
# I'm hungry." is a whole answer to "why?". Those that double as prepositions ("after lunch", "since Monday")
# need a longer clause after them before they count.
_SUBORDINATORS = {
    "if": 2,
    "when": 2,
    "whenever": 2,
    "although": 2,
    "though": 2,
    "while": 2,
    "unless": 2,
    "even though": 2,
    "even if": 2,
    "in case": 2,
    "so that": 2,
    "now that": 2,
    "as soon as": 2,
    "as long as": 2,
    "after": 3,
    "before": 3,
    "since": 3,
    "until": 3,
    "once": 3,
}
# "When does it open." is a question that lost its question mark, not a dangling clause.
_QUESTION_VERBS = frozenset(
    "is are was were am do does did can could will would should shall may might must has have had isn't aren't "
    "don't doesn't didn't can't won't".split()
)
# An embedded clause that stops at its modal: "I was wondering if you could".
_DANGLING_MODAL = re.compile(
    r"\b(?:if|whether|that|because|when)\s+[a-z']+\s+(?:could|would|can|will|should|might|may|must)$"
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# A subject or an imperative after the subordinate clause's own first words starts the main clause, commas or
# not: "unless it rains this afternoon we will have lunch", "if my flight is late please call my sister".
_MAIN_CLAUSE_STARTS = frozenset("i we you they he she it there please let's".split())
_LONG_CLAUSE = 10  # words after the subordinator: longer almost always holds the main clause
_TRAILING_OPEN = (",", ";", ":", "-", "\u2014", "\u2026", "...")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def unfinished_reason(text: str) -> str | None:
    """Why ``text`` cannot be the end of the caller's turn, or None when it can (or when it is empty)."""
    stripped = text.strip().strip("\"'")
    words = _words(stripped)
    if not words:
        return None
    if stripped.endswith("?") or stripped.endswith("!"):
        return None
    if stripped.endswith(_TRAILING_OPEN):
        return "trailing punctuation"
    if words[-1] in _CANNOT_END:
        return f"ends with {words[-1]!r}"
    if _DANGLING_MODAL.search(" ".join(words)):
        return "clause stops at its modal"
    opener = _dangling_subordinate(stripped, words)
    if opener is not None:
        return f"{opener!r} clause without a main clause"
    return None


def _dangling_subordinate(text: str, words: list[str]) -> str | None:
    """The subordinator that opens ``text``'s last sentence when no main clause follows it."""
    last_sentence = re.split(r"(?<=[.!?])\s+", text)[-1]
    sentence_words = _words(last_sentence)
    if len(sentence_words) < 2:
        return None
    joined = " ".join(sentence_words)
    for opener, min_words in _SUBORDINATORS.items():
        if joined.startswith(opener + " "):
            rest = sentence_words[len(opener.split()) :]
            if opener == "when" and rest[0] in _QUESTION_VERBS:
                return None
            # A comma after the clause opens the main clause ("When I get home, I'll call you").
            has_main_clause = (
                ("," in last_sentence and not last_sentence.rstrip(".").endswith(","))
                or any(word in _MAIN_CLAUSE_STARTS for word in rest[2:])
                or len(rest) >= _LONG_CLAUSE
            )
            if len(rest) >= min_words and not has_main_clause:
                return opener
            return None
    return None


def sounds_finished(text: str) -> bool:
    """True when nothing in the words says the caller is still mid-sentence."""
    return unfinished_reason(text) is None
