"""In-process LLM engine on llama.cpp (``llama-cpp-python``) for GGUF models.

One ``Llama`` object is loaded once and shared; it is not thread-safe, so every generation holds a lock for
as long as its iterator is being consumed. Closing the iterator (a barge-in) stops token generation at the
next token and releases the lock. The same object keeps its KV cache between calls, so a conversation that
grows turn by turn only evaluates the new tokens (llama-cpp-python matches the common prompt prefix).
When the prompt's prefix changes (a conversation's history window moves), :meth:`LlamaCppLLM.prefill` reads
the new prefix ahead of time, so the turn that needs it still evaluates only its new tokens.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format, llama_grammar

from engines.base import Capabilities, GenerationOptions, Needs
from engines.llm_openai import LLMError
from engines.llm_sampling import NgramBan, SentenceCloser
from engines.models import smollm2_gguf_path

# Appended to the partial assistant text before rendering the chat template, then cut off with everything
# after it: whatever end-of-turn markup a template adds, the prompt then ends exactly at the partial text.
_PREFIX_SENTINEL = "\u0000voxgate-prefix-end\u0000"

# Tokens a prefill evaluates per step: a caller's turn that arrives meanwhile waits for one step at most
# (SmolLM2-135M reads ~32 tokens in tens of ms on 2 cores; smaller steps cost throughput).
_PREFILL_STEP = 32
# Text that stands in for a user's words when finding where a prompt prefix stops tokenizing the same.
_PREFILL_PROBE = "Hello, what"

# Sampling options that may come through GenerationOptions.extra and mean the same to llama-cpp-python.
_SAMPLING_KEYS = frozenset(
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

_Formatter = Callable[..., llama_chat_format.ChatFormatterResponse]


class LlamaCppLLM:
    """Chat completion with a local GGUF model, streamed as text deltas.

    ``GenerationOptions.extra`` understands ``grammar`` (GBNF text), ``json_schema`` (a JSON schema, dict or
    text), ``response_format`` (OpenAI ``{"type": "json_schema", "json_schema": {"schema": ...}}`` or
    llama-cpp-python's ``{"type": "json_object", "schema": ...}``), vLLM's ``guided_json`` /
    ``guided_grammar`` aliases, and the sampling keys ``top_p``, ``top_k``, ``min_p``, ``typical_p``,
    ``repeat_penalty``, ``presence_penalty``, ``frequency_penalty`` and ``seed``, and ``no_repeat_ngram``
    (n: never write a run of n tokens that an earlier assistant message in ``messages`` holds); other keys are
    ignored so options written for a remote server still work here.

    A last message ``{"role": "assistant", "content": partial, "prefix": True}`` is continued rather than
    answered: the output carries on from ``partial`` and does not repeat it.
    """

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_batch: int = 256,
        seed: int = 0,
        chat_format: str | None = None,
    ) -> None:
        model_path = model_path or smollm2_gguf_path()  # the shipped SmolLM2-135M-Instruct
        self.model_path = model_path
        self._llama = llama_cpp.Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            seed=seed,
            chat_format=chat_format,
            verbose=False,
        )
        self._lock = threading.Lock()
        self._valid_grammars: set[str] = set()
        self._prefix_formatter = self._find_prefix_formatter()
        # How many prompt tokens the last generation evaluated (the rest came from the KV cache), and how
        # many the last prefill did: llama.cpp's own account, taken from the library's eval calls.
        self.last_prompt_tokens_evaluated: int | None = None
        self.last_prefill_tokens_evaluated: int | None = None
        self._prompt_pending = False
        self._enders: list[int] | None = None
        self._count_prompt_evals()
        self.capabilities = Capabilities(
            streaming=True,
            continues_assistant_prefix=self._prefix_formatter is not None,
            prefills_context=self._prefix_formatter is not None,
            device="cpu",
            # One generation at a time; the weights are memory-mapped, so a second instance shares them.
            needs=Needs(concurrency=1, cpu_heavy=True, cheap_second_instance=True),
            extra={"model_path": model_path, "chat_format": self._llama.chat_format, "n_ctx": n_ctx},
        )

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        """Yield text deltas; generation starts at the first ``next()`` and ``close()`` stops it.

        Raises :class:`LLMError`: at once for bad options (an unparsable grammar), else while iterating.
        """
        if messages and messages[-1].get("role") == "assistant" and messages[-1].get("prefix"):
            if self._prefix_formatter is None:
                raise LLMError(f"chat format {self._llama.chat_format!r} cannot continue an assistant prefix")
            return self._stream_continuation(messages, options)
        return self._stream_chat(messages, options)

    def warmup(self, messages: list[dict[str, Any]] | None = None) -> None:
        """Run one tiny generation so the first real call is fast.

        Pass the agent's opening messages (e.g. its system prompt) to leave them in the KV cache as well.
        """
        messages = messages or [{"role": "user", "content": "Hi"}]
        for _ in self.stream_chat(messages, GenerationOptions(max_tokens=1)):
            pass

    def prefill(self, messages: list[dict[str, Any]]) -> Iterator[int]:
        """Read the chat-templated ``messages`` into the KV cache ahead of the turn that will need them.

        The prompt of a later :meth:`stream_chat` that begins with these messages then differs from the
        cache only by its new tokens, which are all llama.cpp evaluates (it reuses the longest common
        prefix). The prefix runs up to where the next user message's text would begin. Only tokens past
        what is cached already are evaluated, ``_PREFILL_STEP`` at a time, holding the engine's lock; each
        step yields the number of tokens cached so far, and closing the iterator stops it between steps
        (what was read stays cached). Does nothing when the chat format cannot be rendered piecewise.
        """
        if self._prefix_formatter is None:
            return
        tokens = self._prefill_tokens(messages)
        with self._lock:
            llama = self._llama
            self._prompt_pending = False
            self.last_prefill_tokens_evaluated = 0
            if not tokens or len(tokens) >= llama.n_ctx():
                return
            cached = _common_prefix(llama._input_ids.tolist(), tokens)
            if cached < llama.n_tokens:
                # Drop what follows the common prefix (``eval`` would too), as ``Llama.generate`` does.
                if not llama._ctx.kv_cache_seq_rm(-1, cached, -1):
                    llama.reset()
                    cached = 0
                llama.n_tokens = cached
                llama._requires_eval = True  # the context's logits are not those of the last cached token
            while llama.n_tokens < len(tokens):
                step = tokens[llama.n_tokens : llama.n_tokens + _PREFILL_STEP]
                llama.eval(step)
                self.last_prefill_tokens_evaluated += len(step)
                yield llama.n_tokens

    @property
    def cached_tokens(self) -> int:
        """Tokens in the KV cache (a prompt's prefix matching them is not evaluated again)."""
        return int(self._llama.n_tokens)

    def count_tokens(self, text: str) -> int:
        """Number of model tokens in ``text`` (no BOS), e.g. to budget the context window."""
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def close(self) -> None:
        """Free the model; the engine is unusable afterwards."""
        with self._lock:
            self._llama.close()

    def _stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        kwargs = self._generation_kwargs(options, messages)

        def start() -> Iterator[dict[str, Any]]:
            return self._llama.create_chat_completion(messages=_clean(messages), stream=True, **kwargs)

        return self._run(start, lambda chunk: chunk["choices"][0]["delta"].get("content"))

    def _stream_continuation(
        self, messages: list[dict[str, Any]], options: GenerationOptions
    ) -> Iterator[str]:
        kwargs = self._generation_kwargs(options, messages[:-1])
        tokens, template_stop, stopping_criteria = self._continuation_prompt(messages)
        kwargs["stop"] = kwargs["stop"] + template_stop

        def start() -> Iterator[dict[str, Any]]:
            # Token ids (not text) so llama-cpp-python adds no BOS of its own: the template decided that.
            return self._llama.create_completion(
                prompt=tokens, stream=True, stopping_criteria=stopping_criteria, **kwargs
            )

        return self._run(start, lambda chunk: chunk["choices"][0].get("text"))

    def _run(
        self, start: Callable[[], Iterator[dict[str, Any]]], text_of: Callable[[dict[str, Any]], str | None]
    ) -> Iterator[str]:
        with self._lock:
            chunks: Iterator[dict[str, Any]] | None = None
            self._prompt_pending = True  # the generation's first eval is its prompt's uncached part
            try:
                chunks = start()
                for chunk in chunks:
                    text = text_of(chunk)
                    if text:
                        yield text
            except GeneratorExit:
                raise
            except LLMError:
                raise
            except (
                Exception
            ) as exc:  # llama-cpp-python raises ValueError/RuntimeError (context full, bad grammar)
                raise LLMError(f"llama.cpp generation failed: {exc}") from exc
            finally:
                # Closing the library's generator chain right here (not whenever it is garbage collected)
                # stops generation before the lock is released.
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()
                self._prompt_pending = False

    def _generation_kwargs(
        self, options: GenerationOptions, messages: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        extra = options.extra
        kwargs: dict[str, Any] = {
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "stop": list(options.stop),
        }
        kwargs.update({k: v for k, v in extra.items() if k in _SAMPLING_KEYS})
        grammar = _grammar_from_extra(extra)
        if grammar is not None:
            self._check_grammar(grammar)
            kwargs["grammar"] = grammar
        processors: list[Any] = []
        if extra.get("end_at_sentence"):
            processors.append(SentenceCloser(self._sentence_enders(), self._end_tokens(), options.max_tokens))
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

    def _end_tokens(self) -> list[int]:
        """The tokens that end the assistant's message: the model's EOS and the chat template's end marker."""
        ends = {int(self._llama.token_eos())}
        for marker in (b"<|im_end|>", b"<|eot_id|>", b"<|end|>", b"</s>"):
            ids = self._llama.tokenize(marker, add_bos=False, special=True)
            if len(ids) == 1:
                ends.add(int(ids[0]))
        return sorted(ends)

    def _sentence_enders(self) -> list[int]:
        """Vocabulary tokens that close a sentence (".", "?", "!", with a closing quote or a newline); found
        once per engine by reading the vocabulary."""
        if self._enders is None:
            enders = []
            for token in range(self._llama.n_vocab()):
                piece = self._llama.detokenize([token]).decode("utf-8", errors="ignore").strip()
                if piece and piece.rstrip("\"')") in {".", "?", "!", "...", "?!"}:
                    enders.append(token)
            self._enders = enders
        return self._enders

    def _check_grammar(self, grammar: llama_cpp.LlamaGrammar) -> None:
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

    def _count_prompt_evals(self) -> None:
        """Wrap the model's ``eval`` to note the size of each generation's prompt evaluation.

        ``Llama.generate`` evaluates the uncached part of the prompt in one ``eval`` call, then one call per
        generated token; the first call after :meth:`_run` starts is the prompt's.
        """
        evaluate = self._llama.eval

        def counted(tokens: Any) -> None:
            if self._prompt_pending:
                self._prompt_pending = False
                self.last_prompt_tokens_evaluated = len(tokens)
            evaluate(tokens)

        self._llama.eval = counted  # type: ignore[method-assign]

    def _prefill_tokens(self, messages: list[dict[str, Any]]) -> list[int]:
        """The tokens every prompt of ``messages`` plus a new user message begins with.

        The chat template is rendered with a placeholder user message and cut where its text starts, so the
        prefix holds the user turn's opening markup too. Tokens are compared with the same prefix followed
        by probe words, so a token that would merge with the user's first word is left out.
        """
        assert self._prefix_formatter is not None
        clean = [*_clean(messages), {"role": "user", "content": _PREFIX_SENTINEL}]
        result = self._prefix_formatter(messages=clean)
        cut = result.prompt.find(_PREFIX_SENTINEL)
        if cut < 0:
            return []
        head = result.prompt[:cut]
        add_bos = not result.added_special

        def tokenize(text: str) -> list[int]:
            return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

        tokens = tokenize(head)
        return tokens[: _common_prefix(tokens, tokenize(head + _PREFILL_PROBE))]

    def _continuation_prompt(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[int], list[str], llama_cpp.StoppingCriteriaList | None]:
        assert self._prefix_formatter is not None
        clean = _clean(messages)
        last = clean[-1]
        clean[-1] = {**last, "content": (last.get("content") or "") + _PREFIX_SENTINEL}
        result = self._prefix_formatter(messages=clean)
        cut = result.prompt.rfind(_PREFIX_SENTINEL)
        if cut < 0:
            raise LLMError("the chat template dropped the partial assistant message")
        tokens = self._llama.tokenize(
            result.prompt[:cut].encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return tokens, stop, result.stopping_criteria

    def _find_prefix_formatter(self) -> _Formatter | None:
        """A prompt formatter for the model's chat format, or None if there is none we can render."""
        fmt = self._llama.chat_format or ""
        metadata = self._llama.metadata
        if not fmt.startswith("chat_template."):
            # Named formats ("chatml", "llama-3", ...) register only a handler; their formatter functions
            # follow the format_<name> naming with "-" dropped or turned into "_".
            for name in (fmt.replace("-", "_"), fmt.replace("-", "")):
                formatter = getattr(llama_chat_format, f"format_{name}", None)
                if callable(formatter):
                    return formatter
            fmt = "chat_template.default"
        key = "tokenizer.chat_template" if fmt == "chat_template.default" else f"tokenizer.{fmt}"
        template = metadata.get(key)
        if not template:
            return None
        eos_id, bos_id = self._llama.token_eos(), self._llama.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos_id),
            bos_token=self._token_text(bos_id),
            add_generation_prompt=False,
            stop_token_ids=[eos_id],
        )

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self._llama.detokenize([token_id], special=True).decode("utf-8", errors="ignore")


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _clean(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies without our ``prefix`` marker, which chat templates do not know."""
    return [{k: v for k, v in m.items() if k != "prefix"} for m in messages]


def _grammar_from_extra(extra: dict[str, Any]) -> llama_cpp.LlamaGrammar | None:
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
