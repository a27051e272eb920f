"""In-process LLM engine on llama.cpp (``llama-cpp-python``) for GGUF models.

One ``Llama`` object is loaded once and shared; it is not thread-safe, so every generation holds a lock for
as long as its iterator is being consumed. Closing the iterator (a barge-in) stops token generation at the
next token and releases the lock. The same object keeps its KV cache between calls, so a conversation that
grows turn by turn only evaluates the new tokens (llama-cpp-python matches the common prompt prefix).
When the prompt's prefix changes (a conversation's history window moves), :meth:`LlamaCppLLM.prefill` reads
the new prefix ahead of time, so the turn that needs it still evaluates only its new tokens.

The chat template's piecewise rendering lives in engines/llm_chat_template.py, and the options' translation
into llama-cpp-python's arguments (sampling, grammars, logits processors) in engines/llm_decoding.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp

from engines.base import Capabilities, GenerationOptions, Needs
from engines.llm_chat_template import (
    clean_messages,
    common_prefix,
    continuation_prompt,
    find_prefix_formatter,
    prefill_tokens,
)
from engines.llm_decoding import DecodingArgs
from engines.llm_openai import LLMError
from engines.llm_sampling import NgramBan, SentenceCloser  # re-exported: tests import them from here
from engines.models import smollm2_gguf_path

__all__ = ["LLMError", "LlamaCppLLM", "NgramBan", "SentenceCloser"]

# Tokens a prefill evaluates per step: a caller's turn that arrives meanwhile waits for one step at most
# (SmolLM2-135M reads ~32 tokens in tens of ms on 2 cores; smaller steps cost throughput).
_PREFILL_STEP = 32


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
        self._decoding = DecodingArgs(self._llama)
        self._prefix_formatter = find_prefix_formatter(self._llama)
        # How many prompt tokens the last generation evaluated (the rest came from the KV cache), and how
        # many the last prefill did: llama.cpp's own account, taken from the library's eval calls.
        self.last_prompt_tokens_evaluated: int | None = None
        self.last_prefill_tokens_evaluated: int | None = None
        self._prompt_pending = False
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
        tokens = prefill_tokens(self._llama, self._prefix_formatter, messages)
        with self._lock:
            llama = self._llama
            self._prompt_pending = False
            self.last_prefill_tokens_evaluated = 0
            if not tokens or len(tokens) >= llama.n_ctx():
                return
            cached = common_prefix(llama._input_ids.tolist(), tokens)
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
        kwargs = self._decoding(options, messages)

        def start() -> Iterator[dict[str, Any]]:
            return self._llama.create_chat_completion(
                messages=clean_messages(messages), stream=True, **kwargs
            )

        return self._run(start, lambda chunk: chunk["choices"][0]["delta"].get("content"))

    def _stream_continuation(
        self, messages: list[dict[str, Any]], options: GenerationOptions
    ) -> Iterator[str]:
        kwargs = self._decoding(options, messages[:-1])
        assert self._prefix_formatter is not None  # stream_chat checked
        tokens, template_stop, stopping_criteria = continuation_prompt(
            self._llama, self._prefix_formatter, messages
        )
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
