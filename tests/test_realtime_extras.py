"""``/v1/realtime`` with the official ``openai`` SDK: the caller's transcription as deltas, ``rate_limits.updated``,
``audio.output.speed`` and server_vad's ``idle_timeout_ms`` (docs/realtime.md)."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.audio import pcm16_to_float
from pipeline.normalize import normalize_for_speech
from tests.speech import energy_dbfs, wer, words
from tests.test_realtime import phone_listener as phone_listener  # the fixture: Whisper base
from tests.test_realtime_client import REALTIME_RATE, Recorder, realtime, silence, speech24k, stream, to16k

pytestmark = pytest.mark.slow

# Long enough (about 4 s of Piper) for Whisper to read it partially while it is being said.
LONG_QUESTION = "Could you please tell me how many people live in the city of Paris today?"
TYPED = "Why is the sky blue?"


async def test_transcription_deltas_add_up_to_the_transcript(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await stream(client, silence(0.4) + speech24k(LONG_QUESTION) + silence(1.5))
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        await client.wait_for("response.done", timeout=90)
    deltas = [e for e in client.of("conversation.item.input_audio_transcription.delta")]
    assert deltas and all(e.item_id == completed.item_id and e.content_index == 0 for e in deltas)
    assert "".join(e.delta for e in deltas) == completed.transcript
    assert wer(LONG_QUESTION, completed.transcript) <= 0.25, completed.transcript
    types = client.types()
    last_delta = max(
        i for i, t in enumerate(types) if t == "conversation.item.input_audio_transcription.delta"
    )
    assert last_delta < types.index("conversation.item.input_audio_transcription.completed")


async def _spoken_answer(client: Recorder, start: int) -> tuple[object, object]:
    """An out-of-band spoken answer to TYPED (its own context, so the same words each time): response.done
    and the rate_limits.updated after it."""
    await client.send({"type": "response.create", "response": {"conversation": "none", "input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": TYPED}]}]}})  # fmt: skip
    done = await client.wait_for("response.done", after=start, timeout=90)
    limits = await client.wait_for("rate_limits.updated", after=start)
    return done, limits


async def test_speed_shortens_the_answer_and_rate_limits_follow_each_response(
    server, runtime, settings, phone_listener
) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        created = await client.wait_for("session.created")
        assert created.session.audio.output.speed == 1.0
        normal, normal_limits = await _spoken_answer(client, 0)
        start = len(client.events)
        await client.send({"type": "session.update", "session": {"audio": {"output": {"speed": 1.5}}}})
        assert (await client.wait_for("session.updated", after=start)).session.audio.output.speed == 1.5
        fast, fast_limits = await _spoken_answer(client, start)
        types = client.types()
    texts = [r.response.output[0].content[0].transcript for r in (normal, fast)]
    assert texts[0] == texts[1] and len(words(texts[0])) >= 4, texts  # the same words, at two speeds
    seconds = [len(client.audio(r.response.id)) / 2 / REALTIME_RATE for r in (normal, fast)]
    # Piper's length scale over 1.5: about 0.67 of the time (the pauses between sentences stay as they are).
    assert seconds[1] < 0.85 * seconds[0], seconds
    fast16k = to16k(client.audio(fast.response.id))
    assert energy_dbfs(fast16k) > -40
    # Read back by Whisper base: tiny.en misheard 1.5x Piper speech past 0.3 in CI ("The sky" -> "This guide",
    # "encounters" -> "lighting counters"), as it does telephone-band speech (test_realtime's phone_listener).
    heard = (await asyncio.to_thread(phone_listener.transcribe, pcm16_to_float(fast16k), "en")).text
    assert wer(normalize_for_speech(texts[1]), normalize_for_speech(heard)) <= 0.3, (texts[1], heard)
    for done, limits in ((normal, normal_limits), (fast, fast_limits)):
        (tokens,) = limits.rate_limits
        used = done.response.usage.output_tokens
        assert tokens.name == "tokens" and tokens.limit == settings.llm_max_tokens  # "inf": the service's
        assert tokens.remaining == max(0, tokens.limit - used) and tokens.reset_seconds == 0
    dones = [i for i, t in enumerate(types) if t == "response.done"]
    assert [types[i + 1] for i in dones] == ["rate_limits.updated"] * 2, types


async def test_response_max_output_tokens_is_the_reported_limit(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                           "content": [{"type": "input_text", "text": TYPED}]}})  # fmt: skip
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"],
                                                                   "max_output_tokens": 12}})  # fmt: skip
        done = await client.wait_for("response.done", timeout=90)
        limits = await client.wait_for("rate_limits.updated")
    (tokens,) = limits.rate_limits
    used = done.response.usage.output_tokens
    assert 0 < used and tokens.limit == 12 and tokens.remaining == max(0, 12 - used), (used, tokens)


async def _quiet_line(client: Recorder) -> None:
    """The caller's line stays open and silent: 100 ms of silence at a time, until cancelled."""
    while True:
        await stream(client, silence(1.0))


async def test_idle_timeout_prompts_the_silent_caller(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"output_modalities": ["text"], "audio": {
            "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 2000}}}}})  # fmt: skip
        updated = await client.wait_for("session.updated")
        assert updated.session.audio.input.turn_detection.idle_timeout_ms == 2000
        quiet = asyncio.create_task(_quiet_line(client))
        try:
            await client.send({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                               "content": [{"type": "input_text", "text": "Hello, who are you?"}]}})  # fmt: skip
            await client.send({"type": "response.create"})
            await client.wait_for("response.done", timeout=180)
            answered = time.monotonic()
            triggered = await client.wait_for("input_audio_buffer.timeout_triggered", timeout=30)
            waited = time.monotonic() - answered
            committed = await client.wait_for("input_audio_buffer.committed")
            prompt = await client.wait_for("response.done", count=2, timeout=180)
        finally:
            quiet.cancel()
    assert 1.8 <= waited <= 10.0, waited  # 2 s, and a loaded machine's delays
    # The silence the client sent meanwhile (in real time, or less when the machine lags).
    assert 800 <= triggered.audio_end_ms - triggered.audio_start_ms <= 8000, triggered
    assert committed.item_id == triggered.item_id
    types = client.types()
    assert types.index("input_audio_buffer.timeout_triggered") < types.index("input_audio_buffer.committed")
    assert prompt.response.status == "completed" and words(prompt.response.output[0].content[0].text)


def test_transcript_deltas_only_add_agreed_words() -> None:
    from gateway.realtime.transcripts import TranscriptDeltas

    deltas = TranscriptDeltas()
    sent = [deltas.partial(t) for t in ("What is", "What is the wea", "What is the weather in Par")]
    sent.append(deltas.partial("What is the weather in Paris."))
    # Each reading's last word waits, and so does the punctuation after the last agreed word.
    assert sent == ["", "What", " is the", " weather in"]
    assert deltas.final("What is the weather in Paris today?") == " Paris today?"
    assert "".join(sent) + " Paris today?" == "What is the weather in Paris today?"
    revised = TranscriptDeltas()
    revised.partial("Wear is the")
    assert revised.partial("Wear is the bus") == "Wear is"
    assert revised.final("Where is the bus stop?") == "" and revised.revised  # nothing can be taken back


def test_decision_reader_streams_the_arguments_text() -> None:
    from gateway.realtime.tools import DecisionReader

    text = '{"name": "get_weather", "parameters": {"city": "Pa\\"ris", "days": [1, 2]}}'
    reader, pieces = DecisionReader(), []
    for char in text:  # one character at a time: the worst split a token stream can make
        pieces.append(reader.feed(char))
    assert reader.name == "get_weather" and reader.end is not None
    assert "".join(pieces) == reader.arguments == '{"city": "Pa\\"ris", "days": [1, 2]}'
    assert sum(1 for p in pieces if p) > 10
    none = DecisionReader()
    for char in '{"name": "none"}':
        none.feed(char)
    assert none.name == "none" and none.start is None
    backwards = DecisionReader()  # parameters first: read whole at the end instead (whole_call)
    assert (
        backwards.feed('{"parameters": {"city": "x"}, "name": "get_weather"}') == ""
        and backwards.name is None
    )
