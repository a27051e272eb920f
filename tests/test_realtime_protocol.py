"""``/v1/realtime`` with the official ``openai`` SDK: the session object, typed items, text-only answers, and bad
input (each refusal is an ``error`` event naming the client's event_id; the session goes on)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.speech import words
from tests.test_realtime_client import realtime

pytestmark = pytest.mark.slow


async def _text_answer(client, question: str):  # type: ignore[no-untyped-def]
    """A typed question answered in text; the response.done event."""
    start = len(client.events)
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}})  # fmt: skip
    await client.wait_for("conversation.item.done", after=start)
    await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    return await client.wait_for("response.done", after=start)


async def test_session_created_and_updated(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server, model="my-agent") as client:
        created = await client.wait_for("session.created")
        session = created.session
        assert session.model == "my-agent" and session.type == "realtime"
        assert session.audio.input.format.type == "audio/pcm" and session.audio.input.format.rate == 24000
        # voxgate's default turn-taking is semantic: each pause judged from the words and the turn engine.
        assert session.audio.input.turn_detection.type == "semantic_vad"
        assert server.state.sessions.live[session.id].config.transport == "realtime"
        await client.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Answer in one word.", "output_modalities": ["text"],
            "max_output_tokens": 20,
            "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": {
                "type": "server_vad", "silence_duration_ms": 700, "create_response": False}},
                "output": {"format": {"type": "audio/pcma"}, "voice": "alloy"}}}})  # fmt: skip
        updated = (await client.wait_for("session.updated")).session
        assert updated.instructions == "Answer in one word." and updated.output_modalities == ["text"]
        assert (
            updated.audio.input.format.type == "audio/pcmu"
            and updated.audio.output.format.type == "audio/pcma"
        )
        assert updated.audio.input.turn_detection.silence_duration_ms == 700
        assert updated.audio.input.turn_detection.create_response is False
        assert updated.max_output_tokens == 20 and updated.audio.output.voice == "alloy"
        live = server.state.sessions.live[session.id]
        assert live.config.vad.end_of_turn_ms == 700 and live.config.max_tokens == 20
        assert live.config.vad.semantic_turns is False  # server_vad: silence alone ends a turn
        assert (live.config.output_rate, live.config.output_encoding) == (8000, "pcm_s16le")
        assert live.auto_answer is False and live.history[0]["content"] == "Answer in one word."


async def test_typed_question_answered_in_text(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        done = await _text_answer(client, "What is the capital of France?")
        response = done.response
        assert response.status == "completed" and response.output_modalities == ["text"]
        text = response.output[0].content[0].text
        assert "paris" in words(text)
        deltas = "".join(
            e.delta for e in client.of("response.output_text.delta") if e.response_id == response.id
        )
        assert deltas == text == client.of("response.output_text.done")[-1].text
        assert not client.of("response.output_audio.delta")  # text only: no audio at all
        usage = response.usage
        assert usage.input_tokens > 10 and 0 < usage.output_tokens <= 60
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
        order = [t for t in client.types() if t.startswith("response.")]
        assert order[:3] == ["response.created", "response.output_item.added", "response.content_part.added"]
        assert order[-4:] == [
            "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.done"
        ]  # fmt: skip
        # An ordinary voxgate session: the turn is stored with its answer.
        session_id = client.of("session.created")[0].session.id
        turns = server.state.sessions.live[session_id].turns
        assert turns[-1].user_text == "What is the capital of France?" and turns[-1].response_text == text


async def test_bad_input_gets_errors_and_the_session_goes_on(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        bad: list[tuple[str, str, str | None]] = []  # (event_id, expected code, expected param)

        async def send(event_id: str, event: dict | str, code: str, param: str | None = None) -> None:
            if isinstance(event, dict):
                event = json.dumps({"event_id": event_id, **event})
            await client.send_raw(event)
            bad.append((event_id, code, param))

        await send("e1", '{"type": "response.create", "event_id": "e1"', "invalid_json")
        await send("e2", {"type": "session.dance"}, "invalid_event_type", "type")
        await send(
            "e3", {"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value", "audio"
        )
        odd = base64.b64encode(b"\x00\x01\x02").decode()  # PCM16 cannot have an odd byte count
        await send("e4", {"type": "input_audio_buffer.append", "audio": odd}, "invalid_value", "audio")
        big = base64.b64encode(bytes(24000 * 2 * 16)).decode()  # 16 s in one append (the limit is 15 s)
        await send(
            "e5", {"type": "input_audio_buffer.append", "audio": big}, "input_audio_too_large", "audio"
        )
        await send("e6", {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/flac"}}}}},
                   "invalid_value", "session.audio.input.format.type")  # fmt: skip
        await send("e7", {"type": "session.update", "session": {"colour": "blue"}}, "unknown_parameter",
                   "session.colour")  # fmt: skip
        await send("e8", {"type": "session.update", "session": {"audio": {"output": {"voice": "nobody"}}}},
                   "invalid_value", "session.audio.output.voice")  # fmt: skip
        await send("e9", {"type": "response.cancel"}, "response_cancel_not_active", "response_id")
        await send("e10", {"type": "conversation.item.truncate", "item_id": "item_nope", "audio_end_ms": 10},
                   "item_not_found", "item_id")  # fmt: skip
        await send("e11", {"type": "conversation.item.create", "item": {"type": "message", "role": "user"}},
                   "missing_required_parameter", "item.content")  # fmt: skip
        await send("e12", {"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty")
        await client.connection.send_raw(b"\x00\x01")  # binary frames carry nothing here
        bad.append(("", "invalid_event", None))
        await client.wait_for("error", count=len(bad))
        errors = [e.error for e in client.of("error")]
        for error, (event_id, code, param) in zip(errors, bad, strict=True):
            assert error.code == code, (event_id, error)
            assert error.event_id == (event_id or None) or (code == "invalid_json" and error.event_id is None)
            assert error.type == "invalid_request_error" and error.message
            if param is not None:
                assert error.param == param, (event_id, error)
        # Nothing above changed the session, and it still answers.
        done = await _text_answer(client, "What is the capital of France?")
        assert done.response.status == "completed" and "paris" in words(
            done.response.output[0].content[0].text
        )
        assert client.of("session.created")[0].session.audio.input.format.type == "audio/pcm"
        assert not client.of("session.updated")


async def test_api_key_is_required_when_set(server) -> None:  # type: ignore[no-untyped-def]
    auth = server.state.auth
    auth.api_key = "sk-voxgate-test"
    try:
        async with realtime(server, api_key="wrong") as client:
            refused = await client.wait_for("error")
            assert refused.error.code == "unauthorized" and not client.of("session.created")
        async with realtime(server, api_key="sk-voxgate-test") as client:
            assert (await client.wait_for("session.created")).session.id.startswith("sess_")
    finally:
        auth.api_key = None


async def test_ephemeral_client_secret_opens_one_session(server) -> None:  # type: ignore[no-untyped-def]
    from openai import AsyncOpenAI, AuthenticationError

    auth = server.state.auth
    auth.api_key = "sk-voxgate-test"
    try:
        backend = AsyncOpenAI(base_url=f"{server.http}/v1", api_key="sk-voxgate-test")
        secret = await backend.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Be brief.", "output_modalities": ["text"]},
        )
        assert secret.value.startswith("ek_") and secret.expires_at > 0
        async with realtime(server, api_key=secret.value) as client:
            session = (await client.wait_for("session.created")).session
            assert session.instructions == "Be brief." and session.output_modalities == ["text"]
        async with realtime(server, api_key=secret.value) as client:  # single-session: spent
            assert (await client.wait_for("error")).error.code == "unauthorized"
        with pytest.raises(AuthenticationError):  # minting one needs the real key
            await AsyncOpenAI(
                base_url=f"{server.http}/v1", api_key=secret.value
            ).realtime.client_secrets.create()
    finally:
        auth.api_key = None


async def test_browser_subprotocols_carry_the_key(server) -> None:  # type: ignore[no-untyped-def]
    import websockets

    url = f"ws://127.0.0.1:{server.port}/v1/realtime?model=voxgate"
    server.state.auth.api_key = "sk-voxgate-test"
    try:
        offered = ["realtime", "openai-insecure-api-key.sk-voxgate-test"]
        async with websockets.connect(url, subprotocols=offered) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "realtime"  # a browser fails the socket unless the server picks it
            assert json.loads(await ws.recv())["type"] == "session.created"
        async with websockets.connect(url, subprotocols=["realtime", "openai-insecure-api-key.wrong"]) as ws:  # type: ignore[list-item]
            assert json.loads(await ws.recv())["error"]["code"] == "unauthorized"
    finally:
        server.state.auth.api_key = None


async def test_model_name_can_choose_a_stored_flow(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server, model="restaurant-booking") as client:
        created = await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"output_modalities": ["audio"]}})
        done = await client.wait_for("response.done", timeout=60)  # the flow greets first
        session = server.state.sessions.live[created.session.id]
        assert session.flow_id == "restaurant-booking"
    transcript = done.response.output[0].content[0].transcript
    assert transcript.startswith("Hi, thanks for calling") and "book a table" in transcript
    assert len(client.audio(done.response.id)) > 24000  # spoken: more than half a second of 24 kHz audio


async def test_out_of_band_response_stays_out_of_the_conversation(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        created = await client.wait_for("session.created")
        await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": "What is the capital of France?"}]}})  # fmt: skip
        user_item = (await client.wait_for("conversation.item.done")).item.id
        session = server.state.sessions.live[created.session.id]
        history = [dict(m) for m in session.history]
        await client.send({"type": "response.create", "response": {
            "conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "topic"},
            "instructions": "Name the topic of the user's message in one or two words.",
            "input": [{"type": "item_reference", "id": user_item}]}})  # fmt: skip
        done = await client.wait_for("response.done")
        assert [dict(m) for m in session.history] == history  # neither the question again nor the answer
        # The conversation goes on as if nothing happened: the next response answers the question.
        answer = await _text_answer(client, "And of Italy?")
    response = done.response
    assert response.status == "completed" and response.conversation_id is None
    assert response.metadata == {"purpose": "topic"} and response.output[0].content[0].text
    added = [e.item.id for e in client.of("conversation.item.added")]
    assert response.output[0].id not in added and user_item in added
    assert "rome" in words(answer.response.output[0].content[0].text)


def test_token_counts_never_load_an_unloaded_llm(runtime) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from gateway.realtime.replies import count_tokens
    from gateway.speech.engine_memory import UnloadedEngine

    loads: list[str] = []
    unloaded = UnloadedEngine("llm", runtime.llm, lambda: loads.append("llm") or runtime.llm)
    text = "The capital of France is Paris."
    loaded_count = count_tokens(SimpleNamespace(rt=SimpleNamespace(llm=runtime.llm)), text)  # type: ignore[arg-type]
    estimate = count_tokens(SimpleNamespace(rt=SimpleNamespace(llm=unloaded)), text)  # type: ignore[arg-type]
    assert loads == []  # counting ran on the event loop: loading there would stall every call
    assert estimate == len(text) // 4 and 0 < loaded_count < len(text)
