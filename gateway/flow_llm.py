"""The flows' ``complete`` function on the service's own LLM engine (through its worker, off the loop)."""

from __future__ import annotations

from typing import Any

from engines.base import GenerationOptions
from flows.runner import CompleteFn
from gateway.settings import SchemaFormat
from pipeline.runtime import Runtime


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


def engine_complete(runtime: Runtime, schema_format: SchemaFormat = "json_schema") -> CompleteFn:
    """(messages, JSON schema or None, max_tokens) -> text, constrained by the schema when one is given.

    ``schema_format`` is how the schema reaches the server (setting ``llm_schema_format``); the embedded
    llama.cpp engine turns any of the forms into a grammar.
    """

    async def complete(messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int) -> str:
        extra = schema_constraint(schema, schema_format) if schema is not None else {}
        options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, extra=extra)
        llm = runtime.llm
        return await runtime.llm_worker.run(lambda: "".join(llm.stream_chat(messages, options)))

    return complete
