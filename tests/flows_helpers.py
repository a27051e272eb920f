"""Shared helpers for the flow tests: a scripted FlowHost, fake and real LLMs, a local HTTP API."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from flows.runner import FlowRunner
from flows.schema import Flow

# A Monday afternoon, so "tomorrow", "friday" and "next monday" have fixed answers.
FIXED_NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


class ScriptedHost:
    """A FlowHost that records everything instead of speaking."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ended: str | None = None
        self.transfers: list[tuple[str, str]] = []

    async def say(self, text: str) -> None:
        self.said.append(text)

    async def emit(self, type: str, **fields: Any) -> None:
        self.events.append((type, fields))

    async def end(self, reason: str) -> None:
        self.ended = reason

    async def transfer(self, target: str, handoff: str) -> None:
        self.transfers.append((target, handoff))

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [fields for t, fields in self.events if t == kind]

    def nodes_entered(self) -> list[str]:
        return [f["node"] for f in self.of_type("flow.node_entered")]


class Clock:
    """A settable clock for the runner."""

    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeLLM:
    """A ``complete`` function answering from a script; records every call."""

    def __init__(self, replies: list[Any] | None = None) -> None:
        self.replies = list(replies or [])
        self.calls: list[tuple[list[dict[str, Any]], dict[str, Any] | None, int]] = []

    async def __call__(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int
    ) -> str:
        self.calls.append((messages, schema, max_tokens))
        reply = self.replies.pop(0) if self.replies else {"say": "Okay.", "exit": "stay"}
        if isinstance(reply, Exception):
            raise reply
        return reply if isinstance(reply, str) else json.dumps(reply)


def make_runner(
    doc: dict[str, Any], *, clock: Clock | None = None, **kwargs: Any
) -> tuple[FlowRunner, ScriptedHost]:
    host = ScriptedHost()
    runner = FlowRunner(Flow.model_validate(doc), host, clock=clock or Clock(), **kwargs)
    return runner, host


def flow(nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A minimal flow document around ``nodes`` (start = the first node)."""
    return {"id": "t", "name": "test", "start": nodes[0]["id"], "nodes": nodes, **extra}


# -- a real local HTTP API ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalApi:
    """A small starlette app served by uvicorn in a thread: bookings, a slow endpoint, a failing one."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_count = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def app(self):  # type: ignore[no-untyped-def]
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
        from starlette.routing import Route

        async def record(request: Request) -> dict[str, Any]:
            body = await request.body()
            entry = {
                "method": request.method,
                "path": request.url.path,
                "headers": dict(request.headers),
                "json": json.loads(body) if body else None,
            }
            self.requests.append(entry)
            return entry

        async def bookings(request: Request) -> JSONResponse:
            entry = await record(request)
            return JSONResponse({"booking_id": f"BK-{len(self.requests):04d}", "received": entry["json"]})

        async def nested(request: Request) -> JSONResponse:
            await record(request)
            return JSONResponse({"data": {"items": [{"id": "first"}, {"id": "second"}], "count": 2}})

        async def slow(request: Request) -> JSONResponse:
            await record(request)
            await asyncio.sleep(1.5)
            return JSONResponse({"late": True})

        async def fail(request: Request) -> PlainTextResponse:
            await record(request)
            self.fail_count += 1
            return PlainTextResponse("boom", status_code=500)

        async def flaky(request: Request) -> JSONResponse:
            await record(request)
            self.fail_count += 1
            if self.fail_count == 1:
                return JSONResponse({"error": "try again"}, status_code=503)
            return JSONResponse({"ok": True})

        async def text(request: Request) -> PlainTextResponse:
            await record(request)
            return PlainTextResponse("not json")

        async def redirect(request: Request) -> RedirectResponse:
            await record(request)
            return RedirectResponse("http://example.com/", status_code=302)

        return Starlette(
            routes=[
                Route("/bookings", bookings, methods=["POST"]),
                Route("/nested", nested, methods=["GET"]),
                Route("/slow", slow, methods=["GET", "POST"]),
                Route("/fail", fail, methods=["GET", "POST"]),
                Route("/flaky", flaky, methods=["GET"]),
                Route("/text", text, methods=["GET"]),
                Route("/redirect", redirect, methods=["GET"]),
            ]
        )


@contextmanager
def serve_local_api() -> Iterator[LocalApi]:
    import uvicorn

    api = LocalApi()
    config = uvicorn.Config(api.app(), host="127.0.0.1", port=api.port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="flows-test-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the local test API did not start")
        time.sleep(0.02)
    try:
        yield api
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -- the real embedded model -------------------------------------------------------------------------------


class ModelComplete:
    """``complete`` on the embedded SmolLM2-135M: one model, every call on one worker thread."""

    def __init__(self) -> None:
        from engines.llm_llama import LlamaCppLLM
        from engines.models import smollm2_gguf_path

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flows-llm")
        self._llm = self._executor.submit(lambda: LlamaCppLLM(str(smollm2_gguf_path()))).result()
        self.calls = 0

    def _generate(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int
    ) -> str:
        from engines.base import GenerationOptions

        extra = {"json_schema": schema} if schema is not None else {}
        options = GenerationOptions(max_tokens=max_tokens, temperature=0.0, extra=extra)
        return "".join(self._llm.stream_chat(messages, options))

    async def __call__(
        self, messages: list[dict[str, Any]], schema: dict[str, Any] | None, max_tokens: int
    ) -> str:
        self.calls += 1
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._generate, messages, schema, max_tokens)

    def close(self) -> None:
        self._executor.submit(self._llm.close).result()
        self._executor.shutdown(wait=True)


# Scripted caller answers by collect kind, for running any flow (drafted ones included) to its end.
SCRIPTED_ANSWERS = {
    "number": "four",
    "yes_no": "yes",
    "date": "tomorrow",
    "time": "7 pm",
    "text": "Ada Lovelace",
}


async def drive_to_end(runner: FlowRunner, max_inputs: int = 40) -> list[str]:
    """Answer every question a scripted caller can until the flow ends; returns what the caller said."""
    said: list[str] = []
    if runner.current_node is None:
        await runner.start()
    for _ in range(max_inputs):
        if runner.ended:
            break
        node = runner.flow.node(runner.current_node or "")
        if node.type == "collect":
            kind = node.kind  # type: ignore[union-attr]
            if kind == "choice":
                text = node.choice_list()[0].value  # type: ignore[union-attr]
            elif kind == "regex":
                text = "12345"
            else:
                text = SCRIPTED_ANSWERS[kind]
        elif node.type == "dtmf_menu":
            text = node.options[0].label or node.options[0].digit  # type: ignore[union-attr]
        else:  # llm: say goodbye, which default exit phrases catch; else max_turns ends it
            text = "that's all, goodbye"
        said.append(text)
        await runner.on_user_text(text)
    return said
