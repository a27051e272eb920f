"""The embedded LLM's chat template rendered piecewise: a conversation's prefix, and a partial assistant message.

llama-cpp-python renders a chat template only for whole conversations that end with a generation prompt. The
embedded engine (engines/llm_llama.py) also needs the tokens a conversation's next prompt is sure to begin with
(to prefill the KV cache) and a prompt that ends exactly at a partial assistant message (to continue it). Both
render the template with a sentinel in place of the text and cut there, whatever markup the template adds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp
from llama_cpp import llama_chat_format

from engines.llm_openai import LLMError

# Appended to the partial assistant text before rendering the chat template, then cut off with everything
# after it: whatever end-of-turn markup a template adds, the prompt then ends exactly at the partial text.
PREFIX_SENTINEL = "\u0000voxgate-prefix-end\u0000"
# Text that stands in for a user's words when finding where a prompt prefix stops tokenizing the same.
PREFILL_PROBE = "Hello, what"

Formatter = Callable[..., llama_chat_format.ChatFormatterResponse]


def find_prefix_formatter(llama: llama_cpp.Llama) -> Formatter | None:
    """A prompt formatter for the model's chat format, or None if there is none we can render."""
    fmt = llama.chat_format or ""
    metadata = llama.metadata
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
    eos_id, bos_id = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=_token_text(llama, eos_id),
        bos_token=_token_text(llama, bos_id),
        add_generation_prompt=False,
        stop_token_ids=[eos_id],
    )


def prefill_tokens(llama: llama_cpp.Llama, formatter: Formatter, messages: list[dict[str, Any]]) -> list[int]:
    """The tokens every prompt of ``messages`` plus a new user message begins with.

    The chat template is rendered with a placeholder user message and cut where its text starts, so the
    prefix holds the user turn's opening markup too. Tokens are compared with the same prefix followed
    by probe words, so a token that would merge with the user's first word is left out.
    """
    clean = [*clean_messages(messages), {"role": "user", "content": PREFIX_SENTINEL}]
    result = formatter(messages=clean)
    cut = result.prompt.find(PREFIX_SENTINEL)
    if cut < 0:
        return []
    head = result.prompt[:cut]
    add_bos = not result.added_special

    def tokenize(text: str) -> list[int]:
        return llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    tokens = tokenize(head)
    return tokens[: common_prefix(tokens, tokenize(head + PREFILL_PROBE))]


def continuation_prompt(
    llama: llama_cpp.Llama, formatter: Formatter, messages: list[dict[str, Any]]
) -> tuple[list[int], list[str], llama_cpp.StoppingCriteriaList | None]:
    """The prompt's tokens for continuing ``messages``' last (partial assistant) message, and the template's
    stop strings and stopping criteria. Raises :class:`LLMError` when the template drops that message."""
    clean = clean_messages(messages)
    last = clean[-1]
    clean[-1] = {**last, "content": (last.get("content") or "") + PREFIX_SENTINEL}
    result = formatter(messages=clean)
    cut = result.prompt.rfind(PREFIX_SENTINEL)
    if cut < 0:
        raise LLMError("the chat template dropped the partial assistant message")
    tokens = llama.tokenize(
        result.prompt[:cut].encode("utf-8"), add_bos=not result.added_special, special=True
    )
    stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
    return tokens, stop, result.stopping_criteria


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies without our ``prefix`` marker, which chat templates do not know."""
    return [{k: v for k, v in m.items() if k != "prefix"} for m in messages]


def _token_text(llama: llama_cpp.Llama, token_id: int) -> str:
    if token_id < 0:
        return ""
    return llama.detokenize([token_id], special=True).decode("utf-8", errors="ignore")
