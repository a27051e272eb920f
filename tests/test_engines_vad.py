"""Silero VAD on the shipped ONNX: real telephone speech at 8 kHz (native) and 16 kHz agree, batching is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engines.base import VADEngine
from engines.vad_silero import SileroVAD
from pipeline.audio import load_audio

PHONE_CALL = Path("/work/shared/audio/OSR_us_000_0034_8k.wav")  # ten sentences with pauses between them


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def _probs(vad: SileroVAD, audio: np.ndarray, rate: int) -> np.ndarray:
    state = vad.new_state(rate)
    n = rate * 32 // 1000
    chunks = [audio[i : i + n] for i in range(0, len(audio) - n + 1, n)]
    return np.array([vad.speech_probs([state], chunk[None, :])[0] for chunk in chunks])


def _sentences(speech: np.ndarray) -> int:
    """Runs of speech separated by >= 640 ms (20 chunks) of silence (the pauses between these sentences are
    750 ms or more; the comma in the last one is a 580 ms pause)."""
    runs, silent = 0, 20
    for is_speech in speech:
        if is_speech and silent >= 20:
            runs += 1
        silent = 0 if is_speech else silent + 1
    return runs


def test_silero_satisfies_the_protocol(vad: SileroVAD) -> None:
    assert isinstance(vad, VADEngine)
    assert vad.sample_rates == (16000, 8000)
    with pytest.raises(ValueError, match="44100"):
        vad.new_state(44100)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_silero_finds_the_ten_sentences_of_a_phone_recording(vad: SileroVAD, rate: int) -> None:
    probs = _probs(vad, load_audio(str(PHONE_CALL), rate), rate)
    speech = probs >= 0.5
    assert _sentences(speech) == 10, np.flatnonzero(np.diff(speech.astype(int)))
    assert 0.4 < speech.mean() < 0.9, speech.mean()  # speech with pauses, not all or nothing
    assert probs[:5].max() < 0.5, "the recording opens with silence"


def test_silero_at_8k_agrees_with_16k(vad: SileroVAD) -> None:
    at_8k = _probs(vad, load_audio(str(PHONE_CALL), 8000), 8000) >= 0.5
    at_16k = _probs(vad, load_audio(str(PHONE_CALL), 16000), 16000) >= 0.5
    n = min(len(at_8k), len(at_16k))
    assert (at_8k[:n] == at_16k[:n]).mean() > 0.93


def test_silero_batch_equals_streams_one_by_one(vad: SileroVAD) -> None:
    audio = load_audio(str(PHONE_CALL), 8000)[: 8000 * 3]
    offsets = [0, 4000, 8000]  # three streams at different points of the call
    alone = [_probs(vad, audio[o:], 8000)[:20] for o in offsets]
    states = [vad.new_state(8000) for _ in offsets]
    batched = []
    for k in range(20):
        chunks = np.stack([audio[o + k * 256 : o + (k + 1) * 256] for o in offsets])
        batched.append(vad.speech_probs(states, chunks))
    np.testing.assert_allclose(np.array(batched).T, np.array(alone), atol=1e-5)


def test_silero_refuses_mixed_rates_and_wrong_chunks(vad: SileroVAD) -> None:
    with pytest.raises(ValueError, match="one sample rate"):
        vad.speech_probs([vad.new_state(8000), vad.new_state(16000)], np.zeros((2, 256), np.float32))
    with pytest.raises(ValueError, match="shape"):
        vad.speech_probs([vad.new_state(8000)], np.zeros((1, 512), np.float32))
