"""How the embedded LLM decodes: ``GenerationOptions`` turned into llama-cpp-python's completion arguments.

Sampling keys pass through, output constraints (GBNF grammars, JSON schemas) become a checked
``LlamaGrammar``, and ``end_at_sentence`` / ``no_repeat_ngram`` become the logits processors of
engines/llm_sampling.py. The engine (engines/llm_llama.py) keeps one :class:`DecodingArgs` per model, since
the vocabulary scan and the grammar checks it caches belong to that model.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import llama_cpp
from llama_cpp import llama_grammar

from engines.base import GenerationOptions
from engines.llm_openai import LLMError
from engines.llm_sampling import NgramBan, SentenceCloser

# Sampling options that may come through GenerationOptions.extra and mean the same to llama-cpp-python.
SAMPLING_KEYS = frozenset(
    {
        "top_p",
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
        "seed",
    }
)


class DecodingArgs:
    """Builds one model's completion keyword arguments from :class:`GenerationOptions` (see
    :class:`engines.llm_llama.LlamaCppLLM` for the ``extra`` keys understood)."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self._valid_grammars: set[str] = set()
        self._enders: list[int] | None = None

    def __call__(
        self, options: GenerationOptions, messages: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The arguments for a completion of ``messages`` (their assistant turns feed ``no_repeat_ngram``).

        Raises :class:`LLMError` for a grammar llama.cpp cannot parse.
        """
        extra = options.extra
        kwargs: dict[str, Any] = {
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "stop": list(options.stop),
        }
        kwargs.update({k: v for k, v in extra.items() if k in SAMPLING_KEYS})
        grammar = grammar_from_extra(extra)
        if grammar is not None:
            self.check_grammar(grammar)
            kwargs["grammar"] = grammar
        processors: list[Any] = []
        if extra.get("end_at_sentence"):
            processors.append(SentenceCloser(self.sentence_enders(), self.end_tokens(), options.max_tokens))
        n = extra.get("no_repeat_ngram")
        if isinstance(n, int) and n >= 2:
            texts = [str(m.get("content") or "") for m in messages or [] if m.get("role") == "assistant"]
            # Answers the context window no longer shows (pipeline.answer passes the session's latest ones).
            outside = extra.get("earlier_answers")
            if isinstance(outside, list):
                texts.extend(str(t) for t in outside if str(t) not in texts)
            earlier = [self._llama.tokenize(t.encode("utf-8"), add_bos=False) for t in texts if t]
            processors.append(NgramBan(earlier, n))
        if processors:
            kwargs["logits_processor"] = llama_cpp.LogitsProcessorList(processors)
        return kwargs

    def end_tokens(self) -> list[int]:
        """The tokens that end the assistant's message: the model's EOS and the chat template's end marker."""
        ends = {int(self._llama.token_eos())}
        for marker in (b"<|im_end|>", b"<|eot_id|>", b"<|end|>", b"</s>"):
            ids = self._llama.tokenize(marker, add_bos=False, special=True)
            if len(ids) == 1:
                ends.add(int(ids[0]))
        return sorted(ends)

    def sentence_enders(self) -> list[int]:
        """Vocabulary tokens that close a sentence (".", "?", "!", with a closing quote or a newline); found
        once per model by reading the vocabulary."""
        if self._enders is None:
            enders = []
            for token in range(self._llama.n_vocab()):
                piece = self._llama.detokenize([token]).decode("utf-8", errors="ignore").strip()
                if piece and piece.rstrip("\"')") in {".", "?", "!", "...", "?!"}:
                    enders.append(token)
            self._enders = enders
        return self._enders

    def check_grammar(self, grammar: llama_cpp.LlamaGrammar) -> None:
        """Raise :class:`LLMError` unless llama.cpp can parse ``grammar``."""
        # llama-cpp-python hands an unparsable grammar's NULL sampler to llama.cpp, which segfaults the whole
        # process; parse it here first (cheap, and cached) so a bad flow grammar is only an LLMError.
        text = grammar._grammar
        if text in self._valid_grammars:
            return
        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        sampler = llama_cpp.llama_sampler_init_grammar(
            vocab, text.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise LLMError(f"invalid GBNF grammar: {text[:200]!r}")
        llama_cpp.llama_sampler_free(sampler)
        if len(self._valid_grammars) < 256:
            self._valid_grammars.add(text)


def grammar_from_extra(extra: dict[str, Any]) -> llama_cpp.LlamaGrammar | None:
    """The output constraint asked for in ``extra``, as a llama.cpp grammar (None when unconstrained)."""
    grammar = extra.get("grammar", extra.get("guided_grammar"))
    if isinstance(grammar, llama_cpp.LlamaGrammar):
        return grammar
    if grammar:
        return llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
    schema = extra.get("json_schema", extra.get("guided_json"))
    response_format = extra.get("response_format")
    if schema is None and isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":  # OpenAI's shape
            schema = (response_format.get("json_schema") or {}).get("schema")
        elif kind == "json_object":  # llama-cpp-python's shape; no schema means any JSON
            schema = response_format.get("schema")
            if schema is None:
                return llama_cpp.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
    if schema is None:
        return None
    return _schema_grammar(schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True))


@lru_cache(maxsize=64)
def _schema_grammar(schema_json: str) -> llama_cpp.LlamaGrammar:
    # Schema-to-GBNF conversion is pure Python and a flow reuses the same few schemas.
    return llama_cpp.LlamaGrammar.from_json_schema(schema_json, verbose=False)
