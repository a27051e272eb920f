"""The flows' ``complete`` function on the service's own LLM engine (through its worker, off the loop)."""

from __future__ import annotations

from typing import Any

from engines.base import GenerationOptions
from flows.runner import CompleteFn
from pipeline.runtime import Runtime


def engine_complete(runtime: Runtime) -> CompleteFn:
    """(messages, JSON schema or None, max_tokens) -> text, constrained by the schema when one is given.

    ``response_format`` is the OpenAI form: llama.cpp (embedded or its server) turns it into a grammar and
    vLLM into guided decoding, so the same flow works on every backend.
    """

    async def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int) -> str:
        extra: dict[str, Any] = {}
        if schema is not None:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": schema},
            }
        options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, extra=extra)
        llm = runtime.llm
        return await runtime.llm_worker.run(lambda: "".join(llm.stream_chat(messages, options)))

    return complete
