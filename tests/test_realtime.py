"""Speech over ``/v1/realtime`` with the official ``openai`` SDK and the embedded default engines: what comes back
is checked for what it says (WER, Whisper reading the agent's audio back), how long it is and its energy."""

from __future__ import annotations

import asyncio
import warnings

import pytest

from engines.stt_whisper import WhisperSTT
from pipeline.audio import pcm16_to_float, resample
from pipeline.normalize import normalize_for_speech
from tests.speech import energy_dbfs, wer, words
from tests.test_realtime_client import REALTIME_RATE, Recorder, realtime, silence, speech24k, stream, to16k

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = pytest.mark.slow

QUESTION = "Why is the ocean salty?"  # Whisper tiny heard Piper's "the sky" as "this guy"
LONG_STORY = "Tell me a long story about a brave knight and a dragon."


async def _transcribe(runtime, pcm16k: bytes) -> str:  # type: ignore[no-untyped-def]
    worker = runtime.stt_worker
    return (await asyncio.to_thread(worker.call, runtime.stt.transcribe, pcm16_to_float(pcm16k))).text


@pytest.fixture(scope="module")
def phone_listener() -> WhisperSTT:
    """Whisper base, to read telephone-band agent audio back. Whisper tiny.en is too weak a listener there:
    on 40 correct Piper sentences through a G.711 round trip it heard 4 with a WER above 0.3 ("The sky on a
    clear day" -> "The sky of one day. Clear day"); base heard none above 0.17."""
    return WhisperSTT("base", cpu_threads=2)


async def _says_its_transcript(  # type: ignore[no-untyped-def]
    runtime, audio16k: bytes, transcript: str, listener: WhisperSTT | None = None
) -> None:
    """The agent's audio, read back by Whisper (the runtime's, or ``listener``), says the transcript it came
    with, at a plausible length."""
    assert energy_dbfs(audio16k) > -40
    seconds = len(audio16k) / 2 / 16000
    predicted = len(words(normalize_for_speech(transcript))) / 2.7  # Piper's joe voice: ~2.7 words/s
    assert 0.5 * predicted <= seconds <= 2.0 * predicted + 0.5, (seconds, predicted, transcript)
    if listener is None:
        heard_back = await _transcribe(runtime, audio16k)
    else:
        heard_back = (await asyncio.to_thread(listener.transcribe, pcm16_to_float(audio16k), "en")).text
    assert wer(normalize_for_speech(transcript), normalize_for_speech(heard_back)) <= 0.3, (
        transcript,
        heard_back,
    )


async def _typed(client: Recorder, text: str) -> None:
    await client.send({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}})  # fmt: skip


async def test_spoken_question_gets_a_spoken_answer(server, runtime) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await stream(client, silence(0.4) + speech24k(QUESTION) + silence(1.5))
        started = await client.wait_for("input_audio_buffer.speech_started")
        stopped = await client.wait_for("input_audio_buffer.speech_stopped")
        committed = await client.wait_for("input_audio_buffer.committed")
        transcribed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        done = await client.wait_for("response.done", timeout=90)
    assert started.item_id == stopped.item_id == committed.item_id == transcribed.item_id
    assert 200 <= started.audio_start_ms <= 700, started.audio_start_ms
    spoken_s = len(speech24k(QUESTION)) / 2 / REALTIME_RATE
    assert abs((stopped.audio_end_ms - started.audio_start_ms) / 1000 - spoken_s) < 0.6
    assert wer(QUESTION, transcribed.transcript) <= 0.25, transcribed.transcript
    response = done.response
    assert response.status == "completed" and response.output_modalities == ["audio"]
    item = response.output[0]
    assert item.role == "assistant" and item.status == "completed"
    transcript = item.content[0].transcript
    assert len(words(transcript)) >= 2
    deltas = [
        e.delta for e in client.of("response.output_audio_transcript.delta") if e.response_id == response.id
    ]
    assert "".join(deltas) == transcript == client.of("response.output_audio_transcript.done")[-1].transcript
    audio = client.audio(response.id)
    assert len(audio) % 960 == 0  # 20 ms frames of 24 kHz PCM16
    await _says_its_transcript(runtime, to16k(audio), transcript)
    assert response.usage.input_tokens > 10 and response.usage.output_tokens > 0
    assert abs(response.usage.model_extra["output_audio_seconds"] - len(audio) / 2 / REALTIME_RATE) < 0.05
    types = client.types()
    expected = [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
        "conversation.item.added", "conversation.item.input_audio_transcription.completed",
        "conversation.item.done", "response.created", "response.output_item.added", "response.content_part.added",
        "response.output_audio.delta", "response.output_audio.done", "response.output_audio_transcript.done",
        "response.content_part.done", "response.output_item.done", "response.done",
    ]  # fmt: skip
    positions = [types.index(t) for t in expected]
    assert positions == sorted(positions), types


async def test_manual_turns_commit_then_respond(server, runtime) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send(
            {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
        )
        updated = await client.wait_for("session.updated")
        assert updated.session.audio.input.turn_detection is None
        await stream(client, speech24k(QUESTION) + silence(0.5), realtime=False)  # as fast as it can send
        await asyncio.sleep(1.0)
        assert not client.of("input_audio_buffer.speech_started")  # no VAD: the client decides
        await client.send({"type": "input_audio_buffer.commit"})
        transcribed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert wer(QUESTION, transcribed.transcript) <= 0.25, transcribed.transcript
        await asyncio.sleep(1.0)
        assert not client.of("response.created")  # manual turns are answered when asked
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done", timeout=90)
    assert done.response.status == "completed"
    transcript = done.response.output[0].content[0].transcript
    await _says_its_transcript(runtime, to16k(client.audio(done.response.id)), transcript)


async def test_server_vad_without_create_response(server, runtime) -> None:  # type: ignore[no-untyped-def]
    """OpenAI's server_vad (silence alone ends a turn) with create_response false: the turn is committed and
    transcribed, and answered only on response.create."""
    async with realtime(server) as client:
        created = await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "type": "server_vad", "silence_duration_ms": 500, "create_response": False}}}}})  # fmt: skip
        detection = (await client.wait_for("session.updated")).session.audio.input.turn_detection
        assert detection.type == "server_vad" and detection.create_response is False
        await stream(client, silence(0.3) + speech24k(QUESTION) + silence(1.5))
        transcribed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert wer(QUESTION, transcribed.transcript) <= 0.25, transcribed.transcript
        await asyncio.sleep(1.0)
        assert not client.of("response.created")
        session = server.state.sessions.live[created.session.id]
        assert session.turns[-1].user_text == transcribed.transcript and session.turns[-1].response_id is None
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done", timeout=90)
    assert done.response.status == "completed"
    transcript = done.response.output[0].content[0].transcript
    await _says_its_transcript(runtime, to16k(client.audio(done.response.id)), transcript)


async def test_response_cancel_mid_answer(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        created = await client.wait_for("session.created")
        await _typed(client, LONG_STORY)
        await client.send({"type": "response.create"})
        first = await client.wait_for("response.output_audio.delta", timeout=60)
        await client.wait_for("response.output_audio.delta", count=60)  # 1.2 s of audio
        await client.send({"type": "response.cancel"})
        done = await client.wait_for("response.done", timeout=10)
        truncated = await client.wait_for("conversation.item.truncated", timeout=5)
        await asyncio.sleep(1.0)
        session = server.state.sessions.live[created.session.id]
    response = done.response
    assert response.id == first.response_id and response.status == "cancelled"
    assert response.status_details.reason == "client_cancelled"
    after = client.types()[client.types().index("response.done") :]
    assert "response.output_audio.delta" not in after  # nothing of it leaves once cancelled
    played_s = truncated.audio_end_ms / 1000
    assert 0.6 <= played_s <= len(client.audio(response.id)) / 2 / REALTIME_RATE + 0.05
    turn = session.turns[-1]
    assert turn.interrupted and turn.heard_text and len(turn.heard_text) < len(turn.response_text)
    assert session.history[-1] == {"role": "assistant", "content": turn.heard_text}


async def test_barge_in_cancels_and_truncate_cuts_to_what_was_heard(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        created = await client.wait_for("session.created")
        await _typed(client, LONG_STORY)
        await client.send({"type": "response.create"})
        await client.wait_for("response.output_audio.delta", count=50, timeout=60)
        speech = asyncio.create_task(
            stream(client, speech24k("Stop. Tell me about cats instead.") + silence(1.5))
        )
        done = await client.wait_for("response.done", timeout=15)
        assert done.response.status == "cancelled" and done.response.status_details.reason == "turn_detected"
        item_id = done.response.output[0].id
        await speech
        # The client says it played 600 ms of it: the conversation keeps what that much audio said.
        await client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                           "audio_end_ms": 600})  # fmt: skip
        truncated = await client.wait_for("conversation.item.truncated", count=2)
        cats = await client.wait_for("conversation.item.input_audio_transcription.completed")
        session = server.state.sessions.live[created.session.id]
    assert truncated.item_id == item_id and truncated.audio_end_ms == 600
    assert "cats" in words(cats.transcript)
    cut = next(t for t in session.turns if t.user_text == LONG_STORY)
    assert cut.interrupted and len(words(cut.heard_text)) <= 4, cut.heard_text
    assert all(m["content"] != cut.response_text for m in session.history)


async def test_g711_formats(server, runtime, phone_listener) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"audio": {
            "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}})  # fmt: skip
        await client.wait_for("session.updated")
        ulaw = audioop.lin2ulaw(resample(speech24k(QUESTION) + silence(1.5), REALTIME_RATE, 8000), 2)
        await stream(client, ulaw, rate=8000, sample_bytes=1)
        transcribed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert wer(QUESTION, transcribed.transcript) <= 0.4, transcribed.transcript  # telephone band
        done = await client.wait_for("response.done", timeout=90)
        mulaw = client.audio(done.response.id)
        assert len(mulaw) % 160 == 0  # 20 ms of 8 kHz G.711
        transcript = done.response.output[0].content[0].transcript
        await _says_its_transcript(
            runtime, resample(audioop.ulaw2lin(mulaw, 2), 8000, 16000), transcript, phone_listener
        )
        # A-law out, for the next answer.
        await client.send(
            {"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/pcma"}}}}}
        )
        await client.wait_for("session.updated", count=2)
        await _typed(client, "What do bees make?")
        await client.send({"type": "response.create"})
        done = await client.wait_for("response.done", count=2, timeout=90)
    alaw = client.audio(done.response.id)
    assert done.response.audio.output.format.type == "audio/pcma" and len(alaw) % 160 == 0
    transcript = done.response.output[0].content[0].transcript
    pcm16k = resample(audioop.alaw2lin(alaw, 2), 8000, 16000)
    await _says_its_transcript(runtime, pcm16k, transcript, phone_listener)


async def test_interrupt_response_false_lets_the_answer_finish(server) -> None:  # type: ignore[no-untyped-def]
    async with realtime(server) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": {
            "type": "server_vad", "interrupt_response": False}}}}})  # fmt: skip
        await client.wait_for("session.updated")
        await _typed(client, LONG_STORY)
        await client.send({"type": "response.create"})
        await client.wait_for("response.output_audio.delta", count=50, timeout=60)
        await stream(client, speech24k("Stop. Tell me about cats instead.") + silence(1.0))
        done = await client.wait_for("response.done", timeout=90)
    assert client.of("input_audio_buffer.speech_started")  # the caller was heard...
    assert done.response.status == "completed"  # ...and the answer went on to its end
    assert not client.of("conversation.item.truncated")
    audio_s = len(client.audio(done.response.id)) / 2 / REALTIME_RATE
    assert abs(audio_s - done.response.usage.model_extra["output_audio_seconds"]) < 0.05 and audio_s > 2.5
