"""The flows' ``complete`` function on the service's own LLM engine (through its worker, off the loop)."""

from __future__ import annotations

from typing import Any

from engines.base import GenerationOptions, LLMEngine
from flows.runner import CompleteFn
from gateway.settings import SchemaFormat
from pipeline.runtime import Runtime
from pipeline.workers import EngineWorker


def schema_constraint(schema: dict[str, Any], form: SchemaFormat = "json_schema") -> dict[str, Any]:
    """The request fields that make an LLM server follow ``schema``; servers disagree on the spelling.

    ``json_schema``: OpenAI's ``response_format``, understood by OpenAI, vLLM, llama.cpp's ``llama-server``
    and the embedded engine. ``json_object``: ``{"type": "json_object", "schema": ...}``, the only form
    llama-cpp-python's server applies (it ignores the OpenAI form and answers unconstrained).
    ``guided_json``: vLLM's own parameter.
    """
    if form == "json_object":
        return {"response_format": {"type": "json_object", "schema": schema}}
    if form == "guided_json":
        return {"guided_json": schema}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}}}


async def _generate(
    worker: EngineWorker,
    llm: LLMEngine,
    messages: list[dict[str, Any]],
    schema: dict[str, Any] | None,
    max_tokens: int,
    schema_format: SchemaFormat,
) -> str:
    extra = schema_constraint(schema, schema_format) if schema is not None else {}
    options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, extra=extra)
    # Streamed, not one blocking call: a cancelled caller stops the generation at its next token.
    parts = [delta async for delta in worker.stream(lambda: llm.stream_chat(messages, options))]
    return "".join(parts)


def engine_complete(runtime: Runtime, schema_format: SchemaFormat = "json_schema") -> CompleteFn:
    """(messages, JSON schema or None, max_tokens) -> text, constrained by the schema when one is given.

    For a caller's conversation: it runs on the callers' LLM worker. ``schema_format`` is how the schema
    reaches the server (setting ``llm_schema_format``); the embedded llama.cpp engine turns any of the forms
    into a grammar.
    """

    async def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int) -> str:
        return await _generate(runtime.llm_worker, runtime.llm, messages, schema, max_tokens, schema_format)

    return complete


def background_complete(runtime: Runtime, schema_format: SchemaFormat = "json_schema") -> CompleteFn:
    """The same, for work no caller waits on (flow drafts): it yields to every caller's engine work."""

    async def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int) -> str:
        worker, llm = await runtime.background_llm()
        return await _generate(worker, llm, messages, schema, max_tokens, schema_format)

    return complete
