"""Function calling over ``/v1/realtime`` with the official SDK: the LLM's call arrives as a ``function_call`` item
with arguments that follow the tool's schema, the client answers with ``function_call_output`` and the next
response reads the result. On the embedded model (a llama.cpp grammar) and on llama.cpp's own server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, serving
from tests.llama_server import LlamaServer
from tests.speech import words
from tests.test_realtime_client import Recorder, realtime

pytestmark = pytest.mark.slow

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def _round_trip(client: Recorder) -> tuple[dict, str]:  # type: ignore[type-arg]
    """Ask for the weather, answer the call, and return the call's arguments and the final answer's text."""
    await client.wait_for("session.created")
    await client.send({"type": "session.update", "session": {
        "type": "realtime", "output_modalities": ["text"], "tools": [WEATHER], "tool_choice": "auto"}})  # fmt: skip
    assert (await client.wait_for("session.updated")).session.tools[0].name == "get_weather"
    await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "What is the weather in Paris today?"}]}})  # fmt: skip
    await client.send({"type": "response.create", "response": {"tool_choice": "required"}})
    done = await client.wait_for("response.done", timeout=120)
    call = done.response.output[0]
    assert done.response.status == "completed" and call.type == "function_call" and call.name == "get_weather"
    arguments = json.loads(call.arguments)
    deltas = client.of("response.function_call_arguments.delta")
    finished = client.of("response.function_call_arguments.done")[0]
    assert {d.call_id for d in deltas} == {finished.call_id} == {call.call_id}
    # Streamed as the LLM writes them: several pieces, and together exactly the call's arguments.
    assert len(deltas) >= 2 and "".join(d.delta for d in deltas) == finished.arguments == call.arguments
    types = client.types()
    order = ["response.output_item.added", "response.function_call_arguments.delta",
             "response.function_call_arguments.done", "response.done", "rate_limits.updated"]  # fmt: skip
    assert [types.index(t) for t in order] == sorted(types.index(t) for t in order), types
    (tokens,) = client.of("rate_limits.updated")[0].rate_limits
    assert tokens.name == "tokens" and 0 <= tokens.remaining < tokens.limit, tokens  # the call's own budget
    assert not client.of("response.output_text.delta")  # a call says nothing
    await client.send({"type": "conversation.item.create", "item": {"type": "function_call_output",
                       "call_id": call.call_id, "output": json.dumps({"sky": "sunny", "temperature_c": 21})}})  # fmt: skip
    await client.send({"type": "response.create", "response": {"tool_choice": "none"}})
    answer = await client.wait_for("response.done", count=2, timeout=120)
    assert answer.response.status == "completed"
    return arguments, answer.response.output[0].content[0].text


async def test_function_call_round_trip_on_the_embedded_model(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        arguments, text = await _round_trip(client)
        session = server.state.sessions.live[client.of("session.created")[0].session.id]
        history = [m["content"] for m in session.history]
    assert isinstance(arguments["city"], str) and "paris" in arguments["city"].lower(), arguments
    assert any("get_weather returned" in m and "sunny" in m for m in history)
    assert words(text), text


@pytest.fixture(scope="module")
def llama_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from gateway.settings import Settings

    llama = LlamaServer()
    try:
        llama.start()
        settings = Settings(
            llm_engine="openai",
            llm_base_url=f"{llama.url}/v1",
            llm_model="smollm2",
            llm_schema_format="json_object",  # the form llama-cpp-python's server applies
            data_dir=tmp_path_factory.mktemp("voxgate-realtime-tools"),
        )
        with serving(settings) as live:
            yield live
    finally:
        llama.stop()
        llama.log.close()


async def test_function_call_round_trip_on_llama_cpp_server(llama_gateway) -> None:  # type: ignore[no-untyped-def]
    async with realtime(llama_gateway) as client:
        arguments, text = await _round_trip(client)
    assert isinstance(arguments["city"], str) and arguments["city"], arguments
    assert words(text), text


async def test_a_spoken_turn_can_become_a_function_call(server) -> None:  # type: ignore[no-untyped-def]
    from tests.test_realtime_client import silence, speech24k, stream

    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "tools": [WEATHER], "tool_choice": "required"}})  # fmt: skip
        await client.wait_for("session.updated")
        await stream(client, silence(0.3) + speech24k("What is the weather in Paris today?") + silence(1.5))
        said = await client.wait_for("conversation.item.input_audio_transcription.completed")
        done = await client.wait_for("response.done", timeout=120)  # started by the turn, not by the client
    call = done.response.output[0]
    assert "weather" in words(said.transcript)
    assert call.type == "function_call" and call.name == "get_weather"
    assert isinstance(json.loads(call.arguments)["city"], str)
    assert not client.of("response.output_audio.delta")
