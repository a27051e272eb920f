"""LLM engine that streams from any OpenAI-compatible ``/v1/chat/completions`` server.

Works with vLLM's OpenAI server, llama.cpp / llama-cpp-python servers, Ollama and OpenAI itself. Engines are
called from worker threads, so this uses one synchronous ``httpx.Client`` (connection pooling, thread-safe)
and parses the server-sent-event stream by hand. Closing the returned iterator closes the HTTP response,
which is how servers learn that the caller barged in and stop generating.

With ``native_tools``, a request that carries OpenAI ``tools`` (the Realtime layer's tool decision) is answered
with the decision text that :mod:`engines.llm_tool_calls` writes from the server's streamed ``tool_calls``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx

from engines.base import Capabilities, GenerationOptions, Needs
from engines.llm_tool_calls import DecisionText

# Server error bodies can be whole HTML pages; keep messages readable.
_MAX_ERROR_TEXT = 500


class LLMError(RuntimeError):
    """A generation failed: the server was unreachable, answered an HTTP error, or the model failed.

    ``status_code`` is the HTTP status when there was one. Messages never contain the API key.
    """

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# What a 400 to a request with tools usually means; vLLM, for one, refuses tools unless started with a parser.
_TOOLS_HINT = (
    " to a request with tools (llm_native_tools is on: does the server take OpenAI tools? vLLM needs "
    "--enable-auto-tool-choice and --tool-call-parser)"
)

_LOCAL_ONLY = frozenset({"no_repeat_ngram", "end_at_sentence", "earlier_answers"})


class OpenAICompatibleLLM:
    """Streams chat completions from an OpenAI-compatible server.

    ``base_url`` may be given with or without the trailing ``/v1`` (``http://host:8000`` and
    ``http://host:8000/v1`` are the same). ``extra_body`` is merged into every request and
    ``GenerationOptions.extra`` into each one (so vLLM's ``guided_json``, ``guided_grammar``,
    ``response_format``... pass through). Set ``continues_assistant_prefix`` only for servers that accept
    ``continue_final_message`` (vLLM does). Set ``native_tools`` for servers that take OpenAI ``tools``:
    a request whose options carry them then streams the tool decision (see the module docstring).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        extra_body: dict[str, Any] | None = None,
        continues_assistant_prefix: bool = False,
        native_tools: bool = False,
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        self.base_url = root
        self.model = model
        self._api_key = api_key
        self._extra_body = dict(extra_body or {})
        headers = {"Accept": "text/event-stream"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Connecting should fail fast (a dead server must not stall a turn); reads may legitimately wait
        # for a busy server's first token, so they get the full timeout.
        self._client = httpx.Client(
            base_url=root,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        )
        self.capabilities = Capabilities(
            streaming=True,
            continues_assistant_prefix=continues_assistant_prefix,
            native_tools=native_tools,
            # No read-ahead: a server's prompt cache is its own (llama.cpp's server reuses prefixes per slot,
            # and a request that only reads a prompt would cost a slot and a generation).
            prefills_context=False,
            device="remote",
            # The server schedules and batches requests itself, on its own hardware.
            needs=Needs(remote=True, concurrency=8, cpu_heavy=False),
            extra={"base_url": root, "model": model},
        )

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        """Yield text deltas; nothing is sent until the first ``next()``. Raises :class:`LLMError`."""
        body = self._request_body(messages, options)
        if self.capabilities.native_tools and body.get("tools"):
            return self._stream_decision(body)
        return self._stream(body)

    def health(self) -> bool:
        """True when the server answers ``GET /v1/models`` with 200."""
        try:
            response = self._client.get("/v1/models", timeout=min(self._client.timeout.read or 5.0, 5.0))
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def __enter__(self) -> OpenAICompatibleLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request_body(self, messages: list[dict[str, Any]], options: GenerationOptions) -> dict[str, Any]:
        continue_prefix = (
            bool(messages) and messages[-1].get("role") == "assistant" and messages[-1].get("prefix")
        )
        # "prefix" is our own marker; OpenAI-style servers reject or misread unknown message keys.
        clean = [{k: v for k, v in m.items() if k != "prefix"} for m in messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": clean,
            "stream": True,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
        }
        if options.stop:
            body["stop"] = list(options.stop)
        if continue_prefix and self.capabilities.continues_assistant_prefix:
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        # Per-call options override constructor defaults, which override ours.
        body.update(self._extra_body)
        # no_repeat_ngram and end_at_sentence are the embedded engine's logits processors; no server knows them.
        body.update({k: v for k, v in options.extra.items() if k not in _LOCAL_ONLY})
        return body

    def _stream(self, body: dict[str, Any]) -> Iterator[str]:
        # closing(): the HTTP response closes the moment this generator is closed, not when it is collected.
        with contextlib.closing(self._deltas(body)) as deltas:
            for delta in deltas:
                content = delta.get("content")
                if isinstance(content, str) and content:
                    yield content

    def _stream_decision(self, body: dict[str, Any]) -> Iterator[str]:
        decision = DecisionText()
        with contextlib.closing(self._deltas(body)) as deltas:
            for delta in deltas:
                text = decision.feed(delta)
                if text:
                    yield text
                if decision.finished:
                    return  # the model answers in words: the generation stops here, the answer is asked anew
        if not decision.started:
            # llama-cpp-python's server, for one, ends a 200 stream with nothing in it when the model picks a
            # function under tool_choice "auto" or "required" (it streams only a named function's call).
            raise LLMError(
                f"LLM server {self.base_url}/v1/chat/completions answered a request with tools with neither a "
                "call nor words (does it stream tool calls for this tool_choice?)"
            )
        text = decision.close()
        if text:
            yield text

    def _deltas(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The first choice's ``delta`` of each streamed chunk (a whole answer's ``message`` as one)."""
        url = f"{self.base_url}/v1/chat/completions"
        try:
            # The context manager closes the response when the consumer closes this generator, which drops
            # the connection and lets the server stop generating.
            with self._client.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise LLMError(
                        f"LLM server {url} answered HTTP {response.status_code}"
                        f"{self._hint(body)}: {self._error_text(response)}",
                        status_code=response.status_code,
                    )
                if response.headers.get("content-type", "").startswith("application/json"):
                    # A server that ignores "stream": true answers one JSON document; still give the answer.
                    response.read()
                    yield self._whole_message(response, url)
                    return
                for event in _sse_data(response.iter_lines()):
                    if event == "[DONE]":
                        return
                    delta = self._delta(event, url)
                    if delta:
                        yield delta
        except httpx.TimeoutException as exc:
            raise LLMError(f"LLM server {url} timed out: {type(exc).__name__}") from exc
        except httpx.HTTPError as exc:
            raise LLMError(
                f"LLM server {url} unreachable: {type(exc).__name__}: {self._redact(str(exc))}"
            ) from exc

    def _delta(self, data: str, url: str) -> dict[str, Any]:
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LLMError(
                f"LLM server {url} sent a malformed event: {self._redact(data[:_MAX_ERROR_TEXT])}"
            ) from exc
        # vLLM and others report failures that happen mid-stream as an event, after the 200 status.
        if isinstance(payload, dict) and payload.get("error"):
            raise LLMError(f"LLM server {url} failed mid-stream: {self._redact(_error_message(payload))}")
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return {}  # e.g. a trailing usage-only chunk
        delta = choices[0].get("delta")
        return delta if isinstance(delta, dict) else {}

    def _whole_message(self, response: httpx.Response, url: str) -> dict[str, Any]:
        try:
            choices = response.json().get("choices") or [{}]
            message = choices[0].get("message") or {}
        except (ValueError, AttributeError) as exc:
            raise LLMError(f"LLM server {url} sent an unreadable answer") from exc
        # A whole message's calls carry no index: their order is it.
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            message = {**message, "tool_calls": [
                {**call, "index": index} for index, call in enumerate(calls) if isinstance(call, dict)]}  # fmt: skip
        return message

    def _hint(self, body: dict[str, Any]) -> str:
        return _TOOLS_HINT if self.capabilities.native_tools and body.get("tools") else ""

    def _error_text(self, response: httpx.Response) -> str:
        try:
            text = _error_message(response.json())
        except ValueError:
            text = response.text
        return self._redact(text.strip()[:_MAX_ERROR_TEXT] or response.reason_phrase)

    def _redact(self, text: str) -> str:
        # Some servers echo request headers in errors; the key must never reach logs.
        return text.replace(self._api_key, "***") if self._api_key else text


def _error_message(payload: Any) -> str:
    """The human part of an error body: OpenAI ``{"error": {"message"}}``, vLLM ``{"message"}``, FastAPI
    ``{"detail"}``, or all."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if isinstance(payload.get("message"), str):  # vLLM: {"object": "error", "message": ...}
            return payload["message"]
        if "detail" in payload:
            detail = payload["detail"]
            return detail if isinstance(detail, str) else json.dumps(detail)
    return json.dumps(payload)


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """Yield the data of each server-sent event; comments (pings) and other fields are skipped."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
