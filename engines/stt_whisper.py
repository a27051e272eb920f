"""Whisper speech-to-text with faster-whisper (CTranslate2), tuned for short voice-agent utterances.

An utterance up to 30 s is one Whisper window, so it is encoded once and decoded greedily straight from that
encoder output: ``WhisperModel.transcribe`` would encode a second time after language detection, which doubles
the cost of a multilingual model. Longer audio goes through ``transcribe`` with the same settings.
"""

from __future__ import annotations

import re
import threading
import zlib
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from engines.base import Capabilities, Needs, Transcript
from engines.models import DEFAULT_CACHE_DIR, resolve_whisper_model

__all__ = ["WhisperSTT", "clean_transcript"]

SAMPLE_RATE = 16_000
_WINDOW_SAMPLES = 30 * SAMPLE_RATE

# Annotations Whisper (and whisper.cpp-style fine-tunes) write for non-speech: "(coughing)", "[Music]",
# "[BLANK_AUDIO]", "*cough*", "<noise>", "♪ ... ♪".
_ANNOTATION = re.compile(r"\([^)]*\)|\[[^\]]*\]|\*[^*]*\*|<[^>]*>|♪[^♪]*♪|[♪♫]")
_WORDISH = re.compile(r"\w")
_SPACES = re.compile(r"\s+")


def clean_transcript(text: str) -> str:
    """Drop non-speech annotations; text with no word characters left (" .", "...") becomes ""."""
    text = _SPACES.sub(" ", _ANNOTATION.sub(" ", text)).strip()
    return text if _WORDISH.search(text) else ""


class WhisperSTT:
    """Whole-utterance Whisper STT on a local CTranslate2 model (``tiny.en``, ``base`` or a folder).

    Greedy decoding without timestamps or previous-text conditioning: the fastest setting, and the right one for
    independent short turns. A decode is dropped as non-speech when Whisper's no-speech probability is high and
    its confidence low (Whisper's own rule), and digital silence never reaches the model.
    """

    def __init__(
        self,
        model: str = "tiny.en",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 2,
        cache_dir: str = DEFAULT_CACHE_DIR,
        beam_size: int = 1,
        no_speech_threshold: float = 0.6,
        log_prob_threshold: float = -1.0,
        silence_peak: float = 1e-3,
        device_index: int | list[int] = 0,
        min_window_s: float | None = 15.0,
    ) -> None:
        self.model_name = model
        self.model_path = resolve_whisper_model(model, cache_dir)
        self.beam_size = beam_size
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.silence_peak = silence_peak
        self.min_window_s = min_window_s
        self.model = WhisperModel(
            self.model_path,
            device=device,
            device_index=device_index,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            local_files_only=True,
        )
        self.multilingual: bool = bool(self.model.model.is_multilingual)
        languages = tuple(self.model.supported_languages) if self.multilingual else ("en",)
        self.capabilities = Capabilities(
            streaming=False,
            batched=False,
            languages=languages,
            detects_language=self.multilingual,
            device=device,
            # One decode at a time (CTranslate2 spreads one over ``cpu_threads``); counted as CPU work even
            # on a GPU, as before, so the LLM still pauses while a turn is transcribed.
            needs=Needs(concurrency=1, cpu_heavy=True),
            extra={"model": model, "path": self.model_path, "compute_type": compute_type},
        )
        # (tokenizer, prompt, suppressed tokens) per language; building them costs more than a short decode step.
        self._prompts: dict[str, tuple[Tokenizer, list[int], list[int]]] = {}
        self._prompts_lock = threading.Lock()
        self._warm = False

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """Transcribe 16 kHz mono float32 ``audio``; ``language`` None means detect (multilingual models)."""
        audio = _as_float32(audio)
        duration = len(audio) / SAMPLE_RATE
        if not self.multilingual:
            language = "en"  # an English-only model cannot be asked for anything else
        # The first call always runs the model, so a warm-up with silence still pays the lazy allocations.
        silent = audio.size == 0 or float(np.max(np.abs(audio))) < self.silence_peak
        if silent and (self._warm or audio.size == 0 or len(audio) > _WINDOW_SAMPLES):
            return Transcript(text="", language=language or "en", duration_s=duration, no_speech_prob=1.0)
        if len(audio) > _WINDOW_SAMPLES:
            return self._transcribe_long(audio, language, duration)

        self._warm = True
        features = self.model.feature_extractor(audio)
        if self.min_window_s:
            frames = self._window_frames(features.shape[-1])
            raw, transcript = self._decode(features, language, duration, frames, silent)
            if not _looks_looped(raw):
                return transcript
        return self._decode(features, language, duration, None, silent)[1]

    def _window_frames(self, frames: int) -> int:
        """Encoder frames for a short utterance: the audio plus 2 s, at least ``min_window_s``.

        CTranslate2 encodes a shorter window in proportion to its length. bench/stt_window.py, 40 short Piper
        and espeak-ng questions: 15 s gave WER 0.137 in 168 ms against 0.123 in 321 ms for 30 s; 10-12 s
        windows were less stable (WER 0.14-0.28 over runs) and sometimes looped. Looping output falls back to 30 s.
        """
        assert self.min_window_s is not None
        per_second = 100  # mel frames
        return min(3000, max(frames + 2 * per_second, int(self.min_window_s * per_second)))

    def _decode(
        self, features: np.ndarray, language: str | None, duration: float, frames: int | None, silent: bool
    ) -> tuple[str, Transcript]:
        """Encode ``frames`` mel frames (None: Whisper's full 30 s) and decode greedily; returns raw text too."""
        fw = self.model
        features = pad_or_trim(features) if frames is None else pad_or_trim(features, frames)
        encoder_output = fw.encode(features)
        if language is None:
            # Tokens look like "<|de|>"; best first.
            language = fw.model.detect_language(encoder_output)[0][0][0][2:-2]
        tokenizer, prompt, suppress = self._prompt_for(language)
        # Bounds a hallucination loop on noise; real speech stays far below ~12 tokens a second.
        max_new = min(int(duration * 12) + 16, fw.max_length - len(prompt))
        result = fw.model.generate(
            encoder_output,
            [prompt],
            beam_size=self.beam_size,
            max_length=len(prompt) + max_new,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=suppress,
        )[0]
        tokens = result.sequences_ids[0]
        # Same recovery of the average log-probability as faster-whisper (length_penalty 1).
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        non_speech = silent or self._is_non_speech(result.no_speech_prob, avg_logprob)
        raw = tokenizer.decode(tokens)
        text = "" if non_speech else raw
        transcript = Transcript(
            text=clean_transcript(text),
            language=language,
            duration_s=duration,
            no_speech_prob=float(result.no_speech_prob),
        )
        return raw, transcript

    def _is_non_speech(self, no_speech_prob: float, avg_logprob: float) -> bool:
        return no_speech_prob > self.no_speech_threshold and avg_logprob < self.log_prob_threshold

    def _prompt_for(self, language: str) -> tuple[Tokenizer, list[int], list[int]]:
        cached = self._prompts.get(language)
        if cached is not None:
            return cached
        with self._prompts_lock:
            fw = self.model
            tokenizer = Tokenizer(
                fw.hf_tokenizer,
                self.multilingual,
                task="transcribe",
                language=language if self.multilingual else None,
            )
            prompt = fw.get_prompt(tokenizer, [], without_timestamps=True)
            suppress = get_suppressed_tokens(tokenizer, [-1]) or ()
            self._prompts[language] = (tokenizer, prompt, list(suppress))
            return self._prompts[language]

    def _transcribe_long(self, audio: np.ndarray, language: str | None, duration: float) -> Transcript:
        options: dict[str, Any] = {
            "beam_size": self.beam_size,
            "temperature": 0.0,
            "without_timestamps": True,
            "condition_on_previous_text": False,
            "vad_filter": False,
            "no_speech_threshold": self.no_speech_threshold,
            "log_prob_threshold": self.log_prob_threshold,
        }
        segments, info = self.model.transcribe(audio, language=language, **options)
        kept = [s for s in segments if not self._is_non_speech(s.no_speech_prob, s.avg_logprob)]
        text = clean_transcript(" ".join(s.text.strip() for s in kept))
        no_speech = max((s.no_speech_prob for s in kept), default=1.0)
        return Transcript(text=text, language=info.language, duration_s=duration, no_speech_prob=no_speech)


def _as_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32, copy=False)


def _looks_looped(text: str) -> bool:
    """Whisper's own hallucination test: text that compresses too well (a repeated phrase) is suspect."""
    data = text.encode()
    return len(data) > 40 and len(data) / len(zlib.compress(data)) > 2.4
