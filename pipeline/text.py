"""Text shaping between the LLM and the TTS engine (``pipeline/normalize.py`` rewrites it into words).

``ClauseSplitter`` cuts the LLM's streamed deltas into clauses so synthesis can start before the reply ends;
``cut_at_heard`` estimates what a listener heard when playback was interrupted.
"""

from __future__ import annotations

import re

# -- clause splitting ------------------------------------------------------------------------------------------

_CLOSERS = "\"'”’)]»"
_SENTENCE_END = re.compile(rf"[.!?…]+[{re.escape(_CLOSERS)}]*$")
_SOFT_END = re.compile(rf"(?:[,;:—–]|--)[{re.escape(_CLOSERS)}]*$")
_OPENERS = "\"'“‘(["
# Dots that end these do not end a sentence (titles before names, Latin abbreviations).
_NO_SPLIT_AFTER = set("dr. mr. mrs. ms. st. prof. mt. e.g. i.e. etc. vs. approx. cf.".split())
_INITIALS = re.compile(r"^(?:[a-z]\.)+$", re.I)  # "J.", "U.S.", "a.m."
_LIST_NUMBER = re.compile(r"^\d{1,3}\.$")
_WHITESPACE = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _is_word(token: str) -> bool:
    return any(c.isalnum() for c in token)


def _is_abbreviation(token: str) -> bool:
    core = token.lstrip(_OPENERS).lower()
    if core.endswith(".."):  # an ellipsis is a real stop
        return False
    return core in _NO_SPLIT_AFTER or bool(_INITIALS.match(core))


class ClauseSplitter:
    """Cut streamed LLM text into speakable clauses.

    ``push`` returns the clauses completed by a delta; ``flush`` returns the rest at the end of a response and
    resets for the next one. Cuts happen only at whitespace, so ``" ".join(clauses)`` equals the input with
    whitespace collapsed, and the result does not depend on how the text was split into deltas. A clause ends:

    * after sentence punctuation (``. ! ? …``), except after abbreviations such as "Dr." or "e.g." and
      after a list number ("1.") that starts a line;
    * after ``, ; :`` or a spaced dash once it holds ``min_words`` words (``first_min_words`` for the first
      clause of a response, so the first audio starts early);
    * at a line break (markdown headings and list items carry no punctuation);
    * at the last word boundary before ``max_chars``;
    * for the first clause only, after ``eager_first_words`` words if that is set.
    """

    def __init__(
        self,
        min_words: int = 3,
        first_min_words: int = 2,
        max_chars: int = 160,
        eager_first_words: int | None = None,
    ) -> None:
        eager = 1 if eager_first_words is None else eager_first_words
        if min(min_words, first_min_words, max_chars, eager) < 1:
            raise ValueError("ClauseSplitter limits must be positive")
        self.min_words = min_words
        self.first_min_words = first_min_words
        self.max_chars = max_chars
        self.eager_first_words = eager_first_words
        self._buf = ""
        self._first = True

    def push(self, delta: str) -> list[str]:
        """Add an LLM text delta; return the clauses it completed (stripped, non-empty)."""
        self._buf += delta
        clauses: list[str] = []
        while (cut := self._find_cut()) is not None:
            clauses.append(_collapse(self._buf[:cut]))
            self._buf = self._buf[cut:]  # keep the whitespace: a line break there starts a list item
            self._first = False
        return clauses

    def flush(self) -> str | None:
        """Return the unfinished tail at end of stream (None if nothing is left) and reset for a new response."""
        rest = _collapse(self._buf)
        self.reset()
        return rest or None

    def reset(self) -> None:
        """Drop buffered text and treat the next clause as the first of a response."""
        self._buf = ""
        self._first = True

    def _find_cut(self) -> int | None:
        # Every rule decides at a whitespace run from the text before it (plus, for line breaks, the run
        # itself), so the same cut is found whether the text arrived whole or one character at a time.
        buf, words, length, prev_end = self._buf, 0, 0, None
        min_words = self.first_min_words if self._first else self.min_words
        word_start = len(buf) - len(buf.lstrip())
        line_start = self._first or "\n" in buf[:word_start]
        for run in _WHITESPACE.finditer(buf, word_start):
            end = run.start()
            token = buf[word_start:end]
            word_start = run.end()
            list_number = line_start and length == 0 and _LIST_NUMBER.match(token)
            words += _is_word(token)
            length += len(token) + (length > 0)
            if length > self.max_chars:
                return prev_end if prev_end is not None else end
            if _SENTENCE_END.search(token) and not (_is_abbreviation(token) or list_number):
                return end
            if (_SOFT_END.search(token) and words >= min_words) or "\n" in run.group(0):
                return end
            if self._first and self.eager_first_words is not None and words >= self.eager_first_words:
                return end
            prev_end = end
        return None


def cut_at_heard(text: str, fraction: float) -> str:
    """The words of ``text`` a listener heard when ``fraction`` of its audio played.

    Speech time is taken as proportional to characters; only words that finished playing count (round down).
    """
    if fraction >= 1:
        return text
    if not fraction > 0:  # also catches NaN
        return ""
    limit = fraction * len(text)
    end = 0
    for word in re.finditer(r"\S+", text):
        if word.end() > limit:
            break
        end = word.end()
    return text[:end]


_FILLER = re.compile(
    r"^(?:u+h+m*|u+m+|e+r+m*|a+h+|o+h+|e+w+|h+u+h+|u+h+-h+u+h+|h*m+(?:-?h*m+)*|x?m+h*m*|m+-?h+m+)$"
)


def only_fillers(text: str) -> bool:
    """True when ``text`` holds no real words: "Hmm.", "Mm-hmm", "uh" (backchannels and noise)."""
    tokens = re.findall(r"[\w'-]+", text.lower())
    return all(_FILLER.match(token.strip("-'")) for token in tokens)


# -- answer shaping --------------------------------------------------------------------------------------------


def _ends_sentence(token: str, line_start: bool) -> bool:
    """Whether ``token`` (a whitespace-free run) ends a sentence, as :class:`ClauseSplitter` decides it."""
    if not _SENTENCE_END.search(token) or _is_abbreviation(token):
        return False
    return not (line_start and _LIST_NUMBER.match(token))


def ends_at_sentence_end(text: str) -> bool:
    """True when ``text`` (stripped) ends with sentence-final punctuation (``. ! ? …``, then any closers)."""
    tokens = text.split()
    return bool(tokens) and _ends_sentence(tokens[-1], line_start=len(tokens) == 1)


def count_words(text: str) -> int:
    return sum(_is_word(token) for token in text.split())


class SentenceBudget:
    """Lets an LLM answer through so that it ends at a sentence end, within a sentence and word budget.

    ``push`` takes a streamed delta and returns the text that may be said now; ``finish`` returns what may
    still be said when the stream ends. The first sentence goes through as it streams (the first words are
    spoken early). After it, each sentence is held until it ends, then let through whole, so text after the
    last sentence end is never said: when the stream stops mid-sentence (the token cap, or the model's own
    end), that unfinished sentence is dropped. ``done`` turns true once the answer is complete: it holds
    ``max_sentences`` sentences, or ``max_words`` words at a sentence end, or the next sentence would take it
    past ``max_words`` (that sentence is dropped). The caller should then stop generating. A first sentence
    longer than ``max_words`` is kept whole (nothing else would be left to say). ``None`` means no limit.

    The text let through, concatenated, is a prefix of the text pushed (nothing is rewritten), so it can be
    continued by an LLM that picks up an assistant prefix. Sentence ends are found as
    :class:`ClauseSplitter` finds them: a token such as "3." or "Dr." counts only once whitespace follows it
    and it is not an abbreviation or a list number.
    """

    def __init__(self, max_sentences: int | None = None, max_words: int | None = None) -> None:
        if (max_sentences is not None and max_sentences < 1) or (max_words is not None and max_words < 1):
            raise ValueError("SentenceBudget limits must be positive (or None)")
        self.max_sentences = max_sentences
        self.max_words = max_words
        self.sentences = 0  # complete sentences let through
        self.words = 0  # words let through
        self.done = False
        self.at_sentence_end = False  # the text ``push`` just returned ends a sentence (whitespace follows)
        self.dropped = ""  # an unfinished or over-budget sentence that was not let through
        self._held = ""  # text after the last sentence end let through, not yet let through
        self._tail = ""  # streaming the first sentence: its last token so far (let through, still open)
        self._line_start = True

    def seed(self, text: str) -> None:
        """Count ``text`` as already said (a resumed answer's earlier part), so the budget covers it too.

        ``at_sentence_end`` then says whether ``text`` ends a sentence."""
        self.at_sentence_end = False
        tokens = _tokens(text)
        open_end = not text[-1:].isspace()
        for i, (token, line_start) in enumerate(tokens):
            ends = _ends_sentence(token, line_start)
            if i == len(tokens) - 1 and open_end and not ends and self.sentences == 0:
                # The first sentence goes on in the continuation ("Par" + "is"): stream on from this token.
                self._tail, self._line_start = token, line_start
                break
            self.words += _is_word(token)
            self.sentences += ends
            self._line_start = False
            self.at_sentence_end = ends
        self._check_done()

    def push(self, delta: str) -> str:
        """Add a delta; return what may be said now (possibly "")."""
        self.at_sentence_end = False
        if self.done or not delta:
            return ""
        if self.sentences == 0:
            return self._stream_first(delta)
        self._held += delta
        return self._release_held(final=False)

    def finish(self) -> str:
        """The stream ended: what may still be said (a held last sentence, if it ended)."""
        self.at_sentence_end = False
        if self.done:
            return ""
        if self.sentences == 0:
            self._close_tail(final=True)
            return ""
        return self._release_held(final=True)

    # -- internals -----------------------------------------------------------------------------------------

    def _stream_first(self, delta: str) -> str:
        """Streaming the first sentence: everything goes through until a whitespace confirms its end."""
        text = self._tail + delta
        out_end = len(delta)
        pos = 0
        for run in _WHITESPACE.finditer(text):
            token = text[pos : run.start()]
            if token:
                line_start = self._line_start
                self._line_start = False
                self.words += _is_word(token)
                if _ends_sentence(token, line_start):
                    self.sentences += 1
                    # The first sentence ended at this whitespace: hold everything after it.
                    cut = run.start() - len(self._tail)
                    self._tail = ""
                    out, rest = delta[:cut], delta[cut:]
                    self.at_sentence_end = True
                    self._check_done()
                    if not self.done:
                        self._held = rest
                        out += self._release_held(final=False)
                    return out
            if "\n" in run.group(0):
                self._line_start = True
            pos = run.end()
        self._tail = text[pos:]
        return delta[:out_end]

    def _close_tail(self, final: bool) -> None:
        if self._tail:
            self.words += _is_word(self._tail)
            if final and _ends_sentence(self._tail, self._line_start):
                self.sentences += 1
            self._tail = ""

    def _release_held(self, final: bool) -> str:
        """Let through each whole sentence in ``_held`` that fits the budget."""
        out = ""
        while not self.done:
            end, words = self._sentence_in_held(final)
            if end is None:
                if self.max_words is not None and self.words + words > self.max_words:
                    self._drop()  # this sentence can only go past the word budget
                elif final:
                    self._drop()  # the stream ended mid-sentence
                return out
            if self.max_words is not None and self.words + words > self.max_words:
                self._drop()
                return out
            out += self._held[:end]
            self._held = self._held[end:]
            self.at_sentence_end = not final
            self.words += words
            self.sentences += 1
            self._check_done()
        return out

    def _sentence_in_held(self, final: bool) -> tuple[int | None, int]:
        """Where the first sentence in ``_held`` ends (None if it does not yet), and its words so far."""
        held, words, pos = self._held, 0, 0
        line_start = "\n" in held[: len(held) - len(held.lstrip())]
        runs = list(_WHITESPACE.finditer(held))
        for run in runs:
            token = held[pos : run.start()]
            if token:
                words += _is_word(token)
                if _ends_sentence(token, line_start):
                    return run.start(), words
                line_start = False
            if "\n" in run.group(0):
                line_start = True
            pos = run.end()
        token = held[pos:]
        if token:
            words += _is_word(token)
            if final and _ends_sentence(token, line_start):
                return len(held), words
        return None, words

    def _drop(self) -> None:
        self.dropped = self._held
        self._held = ""
        self.done = True

    def _check_done(self) -> None:
        if self.sentences == 0:
            return
        if self.max_sentences is not None and self.sentences >= self.max_sentences:
            self.done = True
        elif self.max_words is not None and self.words >= self.max_words:
            self.done = True


def _tokens(text: str) -> list[tuple[str, bool]]:
    """The whitespace-free tokens of ``text``, each with whether it starts a line."""
    out: list[tuple[str, bool]] = []
    line_start = True
    for match in re.finditer(r"\S+|\s+", text):
        piece = match.group(0)
        if piece.isspace():
            line_start = line_start or "\n" in piece
        else:
            out.append((piece, line_start))
            line_start = False
    return out
