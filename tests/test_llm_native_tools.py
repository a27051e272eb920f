"""Realtime function calls through an LLM server's own OpenAI tools (``llm_native_tools``).

The server gets ``tools`` / ``tool_choice`` and streams ``tool_calls``; the official SDK's Realtime client sees
a ``function_call`` item whose arguments stream as ``response.function_call_arguments.delta``. The server is
llama-cpp-python's (SmolLM2, ``chat_format=chatml-function-calling``), reached through a relay that records
each request and, when a test scripts it, answers itself in OpenAI's exact wire format: two calls, a 400
refusal of the tools, words instead of a call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from engines.llm_tool_calls import DecisionText, ToolCallParser, tool_request
from tests.conftest import LiveServer, free_port, serving
from tests.llama_server import LlamaServer
from tests.speech import energy_dbfs, words
from tests.test_realtime_client import REALTIME_RATE, Recorder, realtime

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {"type": "function", "name": "get_time", "description": "The time in a city.",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
QUESTION = "What is the weather in Paris today?"
FAILED_REPLY = "Sorry, I can't answer that right now."  # the service's default failed_reply
VLLM_REFUSAL = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as OpenAI streams it."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}  # fmt: skip


def call_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    """A ``tool_calls`` delta: the first of a call has its id, type and name, the others only arguments."""
    function: dict[str, Any] = {"arguments": arguments}
    head: dict[str, Any] = {}
    if call_id is not None:
        head = {"id": call_id, "type": "function"}
        function = {"name": name, "arguments": arguments}
    return {"tool_calls": [{"index": index, **head, "function": function}]}


WEATHER_PIECES = ['{"', "city", '":"', "Paris", '"}']
CLOCK_PIECES = ['{"city"', ': "Rome"}']
TWO_CALLS = [
    chunk({"role": "assistant", "content": None, **call_delta(0, "", "call_w1", "get_weather")}),
    *(chunk(call_delta(0, piece)) for piece in WEATHER_PIECES),
    chunk(call_delta(1, "", "call_t1", "get_time")),
    *(chunk(call_delta(1, piece)) for piece in CLOCK_PIECES),
    chunk({}, "tool_calls"),
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}},
]


def test_streamed_tool_calls_are_put_together() -> None:
    parser = ToolCallParser()
    for event in TWO_CALLS:
        for choice in event["choices"]:
            parser.feed(choice["delta"].get("tool_calls"))
    assert [(c.index, c.id, c.name, c.arguments) for c in parser.calls.values()] == [
        (0, "call_w1", "get_weather", '{"city":"Paris"}'),
        (1, "call_t1", "get_time", '{"city": "Rome"}'),
    ]
    # llama-cpp-python repeats the id and whole name in every delta; some servers send no index.
    repeated = ToolCallParser()
    for piece in ['{"city":', ' "Oslo"}']:
        repeated.feed([{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": piece}}])
    unindexed = ToolCallParser()
    for delta in [{"id": "a", "function": {"name": "f", "arguments": "{}"}}, {"id": "b", "function": {"name": "g"}},
                  {"function": {"arguments": '{"x": 1}'}}]:  # fmt: skip
        unindexed.feed([delta])
    assert [(c.name, c.arguments) for c in repeated.calls.values()] == [("get_weather", '{"city": "Oslo"}')]
    assert [(c.name, c.arguments) for c in unindexed.calls.values()] == [("f", "{}"), ("g", '{"x": 1}')]


def test_the_first_call_becomes_the_decision_text() -> None:
    decision = DecisionText()
    text = (
        "".join(decision.feed(c["choices"][0]["delta"]) for c in TWO_CALLS if c["choices"]) + decision.close()
    )
    assert json.loads(text) == {"name": "get_weather", "parameters": {"city": "Paris"}}  # get_time dropped
    words_first = DecisionText()
    assert words_first.feed({"content": "\n"}) == "" and not words_first.started  # a blank line is not words
    assert words_first.feed({"content": "It is"}) == '{"name": "none"}' and words_first.finished
    bare = DecisionText()
    assert (
        bare.feed(call_delta(0, "", "c", "get_time")) + bare.close()
        == '{"name": "get_time", "parameters": {}}'
    )
    assert tool_request([WEATHER], True)["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert tool_request([WEATHER, CLOCK], True)["tool_choice"] == "required"
    assert tool_request([WEATHER, CLOCK], False)["tool_choice"] == "auto"


class Relay:
    """An OpenAI-compatible front for the real server: it records every request body and forwards it, unless
    a test scripted the next answer (``answer``)."""

    def __init__(self, upstream: str) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.upstream = upstream
        self.bodies: list[dict[str, Any]] = []
        self.script: list[Any] = []
        app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="relay", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the relay did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def answer(self, events: list[dict[str, Any]] | None = None, status: int = 200, error: str = "") -> None:
        """Script the next chat completion: these SSE events then ``[DONE]``, or an OpenAI error body."""
        self.script.append((events or [], status, error))

    async def handle(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response, StreamingResponse

        raw = await request.body()
        if request.method == "POST":
            self.bodies.append(json.loads(raw))
            if self.script:
                events, status, error = self.script.pop(0)
                if status >= 400:
                    body = {"object": "error", "message": error, "type": "BadRequestError", "code": status}
                    return JSONResponse(body, status_code=status)
                sse = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                return Response(sse, media_type="text/event-stream")
        client = httpx.AsyncClient(base_url=self.upstream, timeout=60)
        upstream = await client.send(
            client.build_request(request.method, request.url.path, content=raw,
                                 headers={"content-type": "application/json"}), stream=True)  # fmt: skip

        async def relayed() -> Any:
            try:
                async for piece in upstream.aiter_raw():
                    yield piece
            finally:  # the gateway hung up (a decision read whole): so does the relay, and the server stops
                await upstream.aclose()
                await client.aclose()

        kind = upstream.headers.get("content-type", "application/json")
        return StreamingResponse(relayed(), status_code=upstream.status_code, media_type=kind)


@pytest.fixture(scope="module")
def relay_server() -> Iterator[Relay]:
    llama = LlamaServer(chat_format="chatml-function-calling")
    try:
        llama.start()
        front = Relay(llama.url)
        front.start()
        try:
            yield front
        finally:
            front.stop()
    finally:
        llama.stop()
        llama.log.close()


@pytest.fixture
def relay(relay_server: Relay) -> Relay:
    relay_server.script.clear()  # a failed test's unused answers must not answer the next test's requests
    return relay_server


@pytest.fixture(scope="module")
def gateway(relay_server: Relay, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings

    settings = Settings(
        llm_engine="openai",
        llm_base_url=relay_server.url,
        llm_model="smollm2",
        llm_native_tools=True,
        instructions="You are a helpful voice assistant. Answer in one short sentence.",
        lead_ms=5000,  # answers' audio is sent as fast as it is made: these tests are not about its pace
        turn_engine="none",  # no audio turns here
        data_dir=tmp_path_factory.mktemp("voxgate-native-tools"),
    )
    with serving(settings) as live:
        yield live


async def _ask(
    client: Recorder, tools: list[dict[str, Any]], modality: str, choice: Any = "required"
) -> None:
    await client.wait_for("session.created")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": [modality], "tools": tools, "tool_choice": "auto"}})  # fmt: skip
    await client.wait_for("session.updated")
    await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": QUESTION}]}})  # fmt: skip
    await client.send({"type": "response.create", "response": {"tool_choice": choice}})


@pytest.mark.slow
async def test_a_real_servers_tool_call_round_trip(gateway: LiveServer, relay: Relay) -> None:
    async with realtime(gateway) as client:
        await _ask(client, [WEATHER], "audio")
        done = await client.wait_for("response.done", timeout=120)
        sent = relay.bodies[-1]
        call = done.response.output[0]
        deltas = client.of("response.function_call_arguments.delta")
        finished = client.of("response.function_call_arguments.done")[0]
        await client.send({"type": "conversation.item.create", "item": {"type": "function_call_output",
                           "call_id": call.call_id, "output": json.dumps({"sky": "sunny", "celsius": 21})}})  # fmt: skip
        await client.send(
            {"type": "response.create", "response": {"tool_choice": "none", "max_output_tokens": 12}}
        )
        answer = await client.wait_for("response.done", count=2, timeout=120)
        audio = client.audio(answer.response.id)
    # The server got OpenAI tools and the conversation as it is: no schema, no tool list in the prompt.
    assert sent["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "parameters",
                                                                                         "description")}}]  # fmt: skip
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "response_format" not in sent and sent["messages"][-1] == {"role": "user", "content": QUESTION}
    assert "functions" not in sent["messages"][0]["content"]
    assert done.response.status == "completed" and call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    # The server's pieces, as they came: several deltas that join into the call's arguments.
    assert len(deltas) >= 3 and "".join(d.delta for d in deltas) == finished.arguments == call.arguments
    assert {d.call_id for d in deltas} == {call.call_id} and finished.name == "get_weather"
    # The answer after the call's output is spoken, and read from a request without tools.
    assert "tools" not in relay.bodies[-1] and "sunny" in json.dumps(relay.bodies[-1]["messages"])
    transcript = answer.response.output[0].content[0].transcript
    seconds = len(audio) / 2 / REALTIME_RATE
    assert answer.response.status == "completed" and words(transcript), transcript
    assert seconds >= 0.15 * len(words(transcript)) and energy_dbfs(audio) > -45, (seconds, transcript)


@pytest.mark.slow
async def test_openai_wire_format_calls_stream_their_pieces(gateway: LiveServer, relay: Relay) -> None:
    relay.answer(TWO_CALLS)
    async with realtime(gateway) as client:
        await _ask(client, [WEATHER, CLOCK], "text")
        done = await client.wait_for("response.done", timeout=60)
    assert relay.bodies[-1]["tool_choice"] == "required" and len(relay.bodies[-1]["tools"]) == 2
    assert [d.delta for d in client.of("response.function_call_arguments.delta")] == WEATHER_PIECES
    (call,) = done.response.output  # a response carries the first call
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city":"Paris"}', "completed")


@pytest.mark.slow
async def test_words_instead_of_a_call_are_answered_as_usual(gateway: LiveServer, relay: Relay) -> None:
    relay.answer(
        [chunk({"role": "assistant", "content": ""}), chunk({"content": "\n"}), chunk({"content": "It"})]
    )
    relay.answer([chunk({"content": "It is sunny in Paris."}), chunk({}, "stop")])
    async with realtime(gateway) as client:
        await _ask(client, [WEATHER], "text", choice="auto")
        done = await client.wait_for("response.done", timeout=60)
    assert relay.bodies[-2]["tool_choice"] == "auto" and "tools" not in relay.bodies[-1]
    assert done.response.output[0].type == "message"
    assert done.response.output[0].content[0].text == "It is sunny in Paris."
    assert not client.of("response.function_call_arguments.delta")


@pytest.mark.slow
async def test_a_server_refusing_tools_is_a_spoken_failure(gateway: LiveServer, relay: Relay) -> None:
    relay.answer(status=400, error=VLLM_REFUSAL)
    async with realtime(gateway) as client:
        await _ask(client, [WEATHER], "audio", choice="auto")
        error = await client.wait_for("error", timeout=30)
        done = await client.wait_for("response.done", timeout=30)
        audio = client.audio(done.response.id)
    assert error.error.code == "response_failed" and error.error.type == "server_error"
    assert "HTTP 400" in error.error.message and VLLM_REFUSAL in error.error.message
    assert "llm_native_tools" in error.error.message
    # The caller hears the failed reply rather than silence.
    assert done.response.output[0].content[0].transcript == FAILED_REPLY
    assert len(audio) / 2 / REALTIME_RATE > 1.0 and energy_dbfs(audio) > -45


@pytest.mark.slow
async def test_a_server_failing_mid_call_fails_the_response(gateway: LiveServer, relay: Relay) -> None:
    head = chunk({"role": "assistant", **call_delta(0, "", "call_w2", "get_weather")})
    relay.answer([head, chunk(call_delta(0, '{"city"')), {"error": {"message": "CUDA out of memory"}}])
    async with realtime(gateway) as client:
        await _ask(client, [WEATHER], "text")
        error = await client.wait_for("error", timeout=30)
        done = await client.wait_for("response.done", timeout=30)
    assert error.error.code == "response_failed" and "CUDA out of memory" in error.error.message
    (call,) = done.response.output
    assert done.response.status == "failed" and done.response.status_details.error.code == "response_failed"
    assert (call.type, call.status, call.arguments) == ("function_call", "incomplete", '{"city"')
