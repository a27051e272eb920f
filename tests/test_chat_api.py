"""Chat over HTTP (/v1/chat, /v1/voice-chat) on real sessions: the embedded LLM, stored turns, flows.

Nothing here depends on the tiny model's wording: the tests check what the LLM was given (its context, the
history), how the reply was delivered (SSE deltas against the final text), and that audio says its text.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from typing import Any

import av
import httpx
import pytest

from pipeline.audio import pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.speech import energy_dbfs, piper_pcm, wer, words

pytestmark = pytest.mark.slow

FLOW = {
    "id": "chat-api-test",
    "name": "Chat API test",
    "version": 1,
    "start": "greet",
    "variables": {"desk": "the test desk"},
    "nodes": [
        {"id": "greet", "type": "say", "text": "Welcome to {{ desk }}. How can I help?", "next": "talk"},
        {"id": "talk", "type": "llm", "max_turns": 4, "on_max_turns": "bye", "max_tokens": 40,
         "instructions": "You answer questions about a help desk, briefly.",
         "exits": [{"name": "goodbye", "description": "the caller says goodbye", "next": "bye",
                    "phrases": ["goodbye", "bye"]}]},
        {"id": "bye", "type": "end", "reason": "completed", "text": "Thanks for visiting {{ desk }}. Goodbye!"},
    ],
}  # fmt: skip


FOLLOW_UP = "Tell me more about that city."


def _client(server) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    # Generous: on a loaded 2-core machine the tiny LLM was seen taking 60 s over one answer.
    return httpx.AsyncClient(base_url=server.http, timeout=300)


async def _chat(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _contexts(server, conversation_id: str) -> list[list[dict[str, Any]]]:  # type: ignore[no-untyped-def]
    """The messages the LLM read for each of the conversation's answers, in order."""
    session = server.app.state.chat_conversations.get(conversation_id).session
    return [session.answers.get(t.response_id).messages for t in session.turns if t.response_id]


async def test_a_conversation_continues_by_id(server) -> None:  # type: ignore[no-untyped-def]
    async with _client(server) as client:
        first = await _chat(client, message="My name is Alice and I live in Paris.")
        conversation_id = first["conversation_id"]
        assert first["reply"].strip() and first["turn_count"] == 1 and first["ended"] is False
        second = await _chat(client, message="What is my name?", conversation_id=conversation_id)
        assert second["conversation_id"] == conversation_id and second["turn_count"] == 2
        assert second["reply"].strip() and second["turn_id"] != first["turn_id"]
        history = (await client.get(f"/v1/chat/{conversation_id}")).json()["history"]
    # The history holds both exchanges in order, and the second answer's prompt held the first exchange.
    assert [(m["role"], m["content"]) for m in history[1:]] == [
        ("user", "My name is Alice and I live in Paris."),
        ("assistant", first["reply"]),
        ("user", "What is my name?"),
        ("assistant", second["reply"]),
    ]
    contexts = _contexts(server, conversation_id)
    assert [m["content"] for m in contexts[1][1:]] == [
        "My name is Alice and I live in Paris.",
        first["reply"],
        "What is my name?",
    ]
    # Stored like any session: /v1/sessions shows the conversation's turns (storage lags a write interval).
    deadline = time.monotonic() + 10
    replies = [first["reply"], second["reply"]]
    async with _client(server) as client:
        while True:
            stored = (await client.get(f"/v1/sessions/{conversation_id}")).json()
            stored_replies = [t["response_text"] for t in stored.get("turns", [])]
            if stored_replies == replies or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    assert stored["transport"] == "chat" and stored["turn_count"] == 2
    assert [t["user_text"] for t in stored["turns"]] == [
        "My name is Alice and I live in Paris.",
        "What is my name?",
    ]
    assert stored_replies == replies
    # Ended by the client: gone from the open conversations, closed in storage.
    async with _client(server) as client:
        assert (await client.delete(f"/v1/chat/{conversation_id}")).status_code == 204
        assert (await client.get(f"/v1/chat/{conversation_id}")).status_code == 404
        again = await client.post("/v1/chat", json={"message": "Hi", "conversation_id": conversation_id})
        assert again.status_code == 404
        deadline = time.monotonic() + 10
        while (stored := (await client.get(f"/v1/sessions/{conversation_id}")).json())["closed_at"] is None:
            assert time.monotonic() < deadline, stored
            await asyncio.sleep(0.2)
    assert stored["close_reason"] == "client_closed" and stored["turn_count"] == 2


async def test_sse_streams_token_deltas_that_make_the_reply(server) -> None:  # type: ignore[no-untyped-def]
    events: list[tuple[str, dict[str, Any], float]] = []
    async with _client(server) as client:
        start = time.perf_counter()
        body = {"message": "Tell me two facts about the moon.", "stream": True}
        async with client.stream("POST", "/v1/chat", json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    assert data["type"] == kind
                    events.append((kind, data, time.perf_counter() - start))
    kinds = [k for k, _, _ in events]
    assert kinds[0] == "conversation" and kinds[-1] == "done" and "error" not in kinds
    deltas = [d["delta"] for k, d, _ in events if k == "delta"]
    done = events[-1][1]
    assert len(deltas) >= 3, deltas  # token by token, not the reply in one piece
    assert done["reply"] and " ".join("".join(deltas).split()) == done["reply"]
    assert done["conversation_id"] == events[0][1]["conversation_id"]
    # The first token left before the reply was complete.
    first_delta = next(t for k, _, t in events if k == "delta")
    assert first_delta < events[-1][2]


async def test_concurrent_conversations_stay_separate_and_take_turns(server) -> None:  # type: ignore[no-untyped-def]
    async with _client(server) as client:
        # Two new conversations at once: each gets its own id and history.
        green, otter = await asyncio.gather(
            _chat(client, message="My favourite colour is green."),
            _chat(client, message="My favourite animal is the otter."),
        )
        assert green["conversation_id"] != otter["conversation_id"]
        # Then two turns sent at once to the first, and one to the second, all concurrently.
        asks = ["Name a fruit.", "Name a city."]
        replies = await asyncio.gather(
            *(_chat(client, message=ask, conversation_id=green["conversation_id"]) for ask in asks),
            _chat(client, message="Which animal do I like?", conversation_id=otter["conversation_id"]),
        )
        green_history = (await client.get(f"/v1/chat/{green['conversation_id']}")).json()["history"]
        otter_history = (await client.get(f"/v1/chat/{otter['conversation_id']}")).json()["history"]
    # Each history holds its own messages and nobody else's.
    assert [m["content"] for m in otter_history if m["role"] == "user"] == [
        "My favourite animal is the otter.",
        "Which animal do I like?",
    ]
    green_users = [m["content"] for m in green_history if m["role"] == "user"]
    assert green_users[0] == "My favourite colour is green." and sorted(green_users[1:]) == sorted(asks)
    # The conversation took its two simultaneous turns one after the other, neither cutting the other short.
    assert sorted(r["turn_count"] for r in replies[:2]) == [2, 3]
    assert [m["role"] for m in green_history] == ["system"] + ["user", "assistant"] * 3
    assert [m["role"] for m in otter_history] == ["system"] + ["user", "assistant"] * 2
    session = server.app.state.chat_conversations.get(green["conversation_id"]).session
    assert not any(t.interrupted for t in session.turns)


async def _store_flow(client: httpx.AsyncClient) -> None:
    if (await client.get(f"/v1/flows/{FLOW['id']}")).status_code == 404:
        created = await client.post("/v1/flows", json=FLOW)
        assert created.status_code == 201, created.text


def _wav16k(text: str) -> bytes:
    """``text`` said by the Piper voice, as a 16 kHz WAV file."""
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(piper_pcm(text))
    return wav.getvalue()


async def test_a_flow_greets_answers_and_ends(server) -> None:  # type: ignore[no-untyped-def]
    async with _client(server) as client:
        await _store_flow(client)
        reply = await _chat(client, message="Goodbye.", flow=FLOW["id"])
        again = await client.post(
            "/v1/chat", json={"message": "Hello?", "conversation_id": reply["conversation_id"]}
        )
    assert reply["greeting"] == "Welcome to the test desk. How can I help?"
    assert reply["reply"] == "Thanks for visiting the test desk. Goodbye!"
    assert reply["flow_id"] == FLOW["id"] and reply["ended"] is True and reply["close_reason"] == "flow_ended"
    assert again.status_code == 404 and "no open conversation" in again.json()["detail"]


async def test_voice_chat_hears_the_question_speaks_the_reply_and_goes_on(server) -> None:  # type: ignore[no-untyped-def]
    question = "What is the capital city of France?"
    async with _client(server) as client:
        # A multipart upload, as `curl -F file=@question.wav` sends it (base64 in JSON is the other way).
        response = await client.post(
            "/v1/voice-chat",
            files={"file": ("question.wav", _wav16k(question), "audio/wav")},
            data={"speed": "fast"},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        # The same conversation goes on: speech as base64 in JSON this time, the reply's audio as FLAC.
        spoken = base64.b64encode(_wav16k(FOLLOW_UP)).decode()
        typed = await client.post(
            "/v1/voice-chat",
            json={"audio": spoken, "conversation_id": body["conversation_id"], "format": "flac"},
        )
    assert wer(question, body["transcript"]) <= 0.2, body["transcript"]
    assert body["reply"].strip() and body["timings"]["stt_ms"] > 0
    audio = body["audio"]
    with wave.open(io.BytesIO(base64.b64decode(audio["audio"])), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    assert rate == audio["sample_rate"] and abs(len(pcm) / 2 / rate - audio["duration_s"]) < 0.002
    # The reply's audio says the reply, sentence by sentence, at a plausible length for the fast speed (its
    # words are the LLM's: names it makes up are misheard, so the read-back check is the flow test's).
    assert " ".join(s["text"] for s in audio["sentences"]) == " ".join(body["reply"].split())
    words_per_s = len(words(normalize_for_speech(body["reply"]))) / audio["duration_s"]
    assert 1.5 < words_per_s < 6.0, (words_per_s, body["reply"])
    assert energy_dbfs(pcm) > -35
    assert typed.status_code == 200, typed.text
    more = typed.json()
    assert more["conversation_id"] == body["conversation_id"] and more["turn_count"] == 2
    assert wer(FOLLOW_UP, more["transcript"]) <= 0.2 and more["audio"]["format"] == "flac"
    flac = base64.b64decode(more["audio"]["audio"])
    assert flac[:4] == b"fLaC"
    with av.open(io.BytesIO(flac)) as container:
        seconds = sum(frame.samples / frame.sample_rate for frame in container.decode(audio=0))
    assert abs(seconds - more["audio"]["duration_s"]) < 0.05, (seconds, more["audio"]["duration_s"])


async def test_voice_chat_from_text_says_a_flows_words(server, runtime) -> None:  # type: ignore[no-untyped-def]
    async with _client(server) as client:
        await _store_flow(client)
        response = await client.post("/v1/voice-chat", json={"message": "Goodbye.", "flow": FLOW["id"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transcript"] is None and body["ended"] is True
    said = f"{body['greeting']} {body['reply']}"
    assert said == "Welcome to the test desk. How can I help? Thanks for visiting the test desk. Goodbye!"
    audio = body["audio"]
    assert [s["text"] for s in audio["sentences"]] == [
        "Welcome to the test desk.",
        "How can I help?",
        "Thanks for visiting the test desk.",
        "Goodbye!",
    ]
    with wave.open(io.BytesIO(base64.b64decode(audio["audio"])), "rb") as w:
        rate, pcm = w.getframerate(), w.readframes(w.getnframes())
    heard = await asyncio.to_thread(
        runtime.stt_worker.call, runtime.stt.transcribe, pcm16_to_float(resample(pcm, rate, 16000))
    )
    assert wer(said, heard.text) <= 0.2, heard.text


@pytest.mark.parametrize(
    ("path", "payload", "status", "needle"),
    [
        ("/v1/chat", {}, 422, "message"),
        ("/v1/chat", {"message": ""}, 422, "message"),
        ("/v1/chat", {"message": "   "}, 422, "message is empty"),
        ("/v1/chat", {"message": "Hi", "stream": "yes please"}, 422, "stream"),
        ("/v1/chat", {"message": "Hi", "mood": "sunny"}, 422, "mood"),
        ("/v1/chat", {"message": "Hi", "conversation_id": "sess_nope"}, 404, "no open conversation"),
        ("/v1/chat", {"message": "Hi", "flow": "no-such-flow"}, 404, "no-such-flow"),
        ("/v1/voice-chat", {}, 422, "exactly one"),
        ("/v1/voice-chat", {"message": "Hi", "audio": "AAAA"}, 422, "exactly one"),
        ("/v1/voice-chat", {"audio": "not base64!"}, 422, "base64"),
        ("/v1/voice-chat", {"audio": base64.b64encode(b"just some bytes").decode()}, 400, "audio"),
        ("/v1/voice-chat", {"message": "Hi", "voice": "nobody"}, 400, "unknown voice"),
        ("/v1/voice-chat", {"message": "Hi", "format": "tape"}, 400, "format"),
    ],
)
def test_bad_chat_input_gets_a_json_refusal(server, path, payload, status, needle) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(f"{server.http}{path}", json=payload, timeout=60)
    assert response.status_code == status, response.text
    assert needle in json.dumps(response.json()["detail"]), response.text


def test_voice_chat_multipart_refusals(server) -> None:  # type: ignore[no-untyped-def]
    url = f"{server.http}/v1/voice-chat"
    not_audio = httpx.post(url, files={"file": ("q.wav", b"just some bytes", "audio/wav")}, timeout=60)
    assert not_audio.status_code == 400 and "could not read the audio" in not_audio.json()["detail"]
    both = httpx.post(
        url, data={"message": "Hi"}, files={"file": ("q.wav", b"RIFF", "audio/wav")}, timeout=60
    )
    assert both.status_code == 422 and "exactly one" in json.dumps(both.json()["detail"])
    neither = httpx.post(url, data={"voice": "x"}, files={"unused": ("a", b"b")}, timeout=60)
    assert neither.status_code == 422, neither.text


def test_a_full_registry_refuses_new_conversations(server) -> None:  # type: ignore[no-untyped-def]
    httpx.get(f"{server.http}/v1/chat/sess_nope", timeout=10)  # the registry exists from the first request
    conversations = server.app.state.chat_conversations
    saved, conversations.max_open = (
        conversations.max_open,
        0,
    )  # white-box: as if chat_max_conversations were open
    try:
        response = httpx.post(f"{server.http}/v1/chat", json={"message": "Hi"}, timeout=60)
    finally:
        conversations.max_open = saved
    assert response.status_code == 503 and "chat_max_conversations" in response.json()["detail"]


def test_unknown_conversation_history_is_404(server) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server.http}/v1/chat/sess_nope", timeout=10)
    assert response.status_code == 404 and "no open conversation" in response.json()["detail"]


@pytest.fixture(scope="module")
def no_llm_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A gateway whose LLM is a server that is not there (nothing listens on its port)."""
    from gateway.settings import Settings
    from tests.conftest import free_port, serving

    settings = Settings(
        llm_engine="openai",
        llm_base_url=f"http://127.0.0.1:{free_port()}/v1",
        llm_model="gone",
        data_dir=tmp_path_factory.mktemp("voxgate-no-llm"),
    )
    with serving(settings) as live:
        yield live


async def test_a_failed_llm_is_a_500_with_its_reason(no_llm_server) -> None:  # type: ignore[no-untyped-def]
    async with _client(no_llm_server) as client:
        start = time.perf_counter()
        response = await client.post("/v1/chat", json={"message": "Hello?"})
        took = time.perf_counter() - start
        assert response.status_code == 500, response.text
        assert "could not answer" in response.json()["detail"] and took < 30
        async with client.stream("POST", "/v1/chat", json={"message": "Hello?", "stream": True}) as stream:
            assert stream.status_code == 200
            kinds = [line[7:] async for line in stream.aiter_lines() if line.startswith("event: ")]
        assert kinds[0] == "conversation" and "error" in kinds and kinds[-1] == "done"
        spoken = await client.post("/v1/voice-chat", json={"message": "Hello?"})
        assert spoken.status_code == 500, spoken.text
    # Nothing stands in for the answer in the history: the turn is there, unanswered.
    conversations = no_llm_server.app.state.chat_conversations
    assert all(
        [m["role"] for m in c.session.history] == ["system", "user"] for c in conversations.open.values()
    )
