"""Logits processors the embedded LLM applies to answers: whole sentences, no copied runs.

They work on token ids and scores only, so they are independent of llama.cpp's API beyond the
``logits_processor(input_ids, scores) -> scores`` call it makes for each token.
"""

from __future__ import annotations

from typing import Any


class SentenceCloser:
    """A llama.cpp logits processor that ends answers at a sentence end.

    The end-of-message token may come only right after a sentence end, so the model cannot stop on
    "The best way to". Past ``soft_share`` of the token cap, sentence ends get steadily likelier, so the cap
    never cuts a sentence off (and answers stay voice-sized): a voice answer that stops mid-sentence sounds broken, and a small model rarely
    plans its length.
    """

    def __init__(self, enders: list[int], ends: list[int], max_tokens: int, soft_share: float = 0.4) -> None:
        self.enders = enders
        self.ends = ends
        self.max_tokens = max_tokens
        self.soft = max(1, int(max_tokens * soft_share))
        self.step = 20.0 / max(1, max_tokens - 1 - self.soft)  # +20 logits by the last token
        self._ender_set = set(enders)
        self._prompt_len: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self._prompt_len is None:
            self._prompt_len = len(input_ids)
        generated = len(input_ids) - self._prompt_len
        if generated == 0 or int(input_ids[-1]) not in self._ender_set:
            scores[self.ends] = -float("inf")
        if not self.enders:
            return scores
        if generated >= self.max_tokens - 1 and int(input_ids[-1]) not in self._ender_set:
            # The last token the cap allows: a sentence end, whatever else the model wanted.
            keep = scores[self.enders].copy()
            scores[:] = -float("inf")
            scores[self.enders] = keep
        elif generated > self.soft:
            scores[self.enders] += self.step * (generated - self.soft)
        return scores


class NgramBan:
    """A llama.cpp logits processor: the next token may not complete a run of ``n`` tokens that one of the
    ``earlier`` token sequences (the previous answers) holds, or that the answer being written already holds.

    A small model copies its own earlier answers, frame and all ("I'm sorry, but as a voice assistant ..."),
    and loops inside one answer (", but you can also ..., but you can also ..."); penalties on single tokens
    cannot stop a whole phrase without also penalising the question's own words, and banning the phrase's
    last token can. Everything shorter than ``n`` tokens stays available.
    """

    def __init__(self, earlier: list[list[int]], n: int) -> None:
        self.n = n
        self._next: dict[tuple[int, ...], set[int]] = {}
        for tokens in earlier:
            self._add(tokens)
        self._prompt_len: int | None = None

    def _add(self, tokens: list[int]) -> None:
        n = self.n
        for i in range(len(tokens) - n + 1):
            self._next.setdefault(tuple(tokens[i : i + n - 1]), set()).add(tokens[i + n - 1])

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        length, n = len(input_ids), self.n
        if self._prompt_len is None:
            self._prompt_len = length  # the first call sees the prompt alone
        elif length - self._prompt_len >= n:
            # The run this answer just completed may not come back later in it.
            self._add([int(t) for t in input_ids[length - n :]])
        if length >= n - 1:
            banned = self._next.get(tuple(int(t) for t in input_ids[length - n + 1 :]))
            if banned:
                scores[list(banned)] = -float("inf")
        return scores
