"""Whisper speech-to-text with faster-whisper (CTranslate2): offline Whisper's decoding, greedy.

Every call decodes as ``WhisperModel.transcribe(audio, beam_size=1, temperature=0,
condition_on_previous_text=False)`` would: Whisper's full 30 s encoder window, timestamp tokens on, and the
seek loop that decodes again from the last complete segment. bench/wer_parity.py measured what the engine's
former shortcuts cost: decoding without timestamp tokens turned "as dinosaurs" into "as a nurse or as" on a
FLEURS utterance with any window, 15 s or 30 s, and a 15 s encoder window changed words on four of twelve
clips (three for the worse); with both gone the engine writes offline Whisper's words on every clip measured.
The full window costs time: about 150 ms more per utterance on an idle 2-core machine (docs/benchmarks.md).

Two differences from faster-whisper's defaults, both measured: no sampled temperature fallback (the same
audio always gives the same words; no clip's WER changed), and no previous-text conditioning, which made
Whisper repeat a sentence across the seek loop on sparse audio (an agent's answer with long gaps) and
changed one word of 71 on the one clip longer than 30 s. Utterances from the gateway are at most 28 s.

Two ways to trade words for time, both measured: partial transcripts (while the caller speaks) take
:meth:`WhisperSTT.transcribe_draft`, a 15 s window, so that a final transcription never queues ~300 ms behind a
partial; and the ``short_window_s`` option gives finals the short window too (off by default: it changed words
on the shared clips, 1.6 WER points pooled).

One encoder pass serves language detection and decoding when a multilingual model must detect the language
(``transcribe`` would encode the first window twice); that changes no result.

The transcript carries the decoded segments with their times. ``TranscribeOptions`` (OpenAI's transcription API:
gateway/speech/openai_audio.py) add a prompt, a sampling temperature, word times or translation to English;
without them a call decodes exactly as above. ``transcribe_segments`` hands the segments out as the seek loop
decodes them, one step per ``next()``.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import Segment, TranscriptionOptions, get_suppressed_tokens

from engines.base import Capabilities, Needs, TranscribeOptions, Transcript, TranscriptSegment, Word
from engines.models import DEFAULT_CACHE_DIR, resolve_whisper_model

__all__ = ["WhisperSTT", "clean_transcript"]

SAMPLE_RATE = 16_000
_WINDOW_SAMPLES = 30 * SAMPLE_RATE
_WINDOW_FRAMES = 3000  # mel frames in Whisper's 30 s window
_FRAMES_PER_S = 100
_DRAFT_WINDOW_FRAMES = 15 * _FRAMES_PER_S
_MARGIN_FRAMES = 2 * _FRAMES_PER_S  # a short window holds the utterance plus at least 2 s of padding

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

    Greedy decoding (``beam_size`` 1, temperature 0: the same audio always gives the same words) with Whisper's
    own settings otherwise (see the module's docstring). A window is dropped as non-speech when Whisper's
    no-speech probability is high and its confidence low (Whisper's own rule), and digital silence never
    reaches the model. ``min_window_s`` is accepted so that existing settings still load, and ignored: a window
    shorter than 30 s changes words against offline Whisper (bench/wer_parity.py, docs/benchmarks.md).
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
        min_window_s: float | None = None,
        short_window_s: float = 0.0,
    ) -> None:
        self.model_name = model
        self.model_path = resolve_whisper_model(model, cache_dir)
        self.beam_size = beam_size
        self.no_speech_threshold = no_speech_threshold
        self.log_prob_threshold = log_prob_threshold
        self.silence_peak = silence_peak
        self.min_window_s = min_window_s  # not used: see the class docstring
        self.short_window_frames = min(_WINDOW_FRAMES, round(short_window_s * _FRAMES_PER_S))
        self.model = _WindowedWhisper(
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
            translates=self.multilingual,
            word_timestamps=True,
            transcribe_options=True,
            device=device,
            # One decode at a time (CTranslate2 spreads one over ``cpu_threads``); counted as CPU work even
            # on a GPU, as before, so the LLM still pauses while a turn is transcribed.
            needs=Needs(concurrency=1, cpu_heavy=True),
            extra={"model": model, "path": self.model_path, "compute_type": compute_type},
        )
        # (tokenizer, options) per language and task; building them costs more than a short decode step.
        self._decoding: dict[tuple[str, str], tuple[Tokenizer, TranscriptionOptions]] = {}
        self._decoding_lock = threading.Lock()
        self._warm = False

    def transcribe_draft(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        """A cheaper transcription for partial transcripts while the caller speaks: a 15 s encoder window
        whenever it holds the audio (about 100 ms instead of 300 on 2 cores). Its words may differ from
        :meth:`transcribe`'s, which alone writes final transcripts."""
        return self.transcribe(audio, language, _window=_DRAFT_WINDOW_FRAMES)

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        options: TranscribeOptions | None = None,
        _window: int | None = None,
    ) -> Transcript:
        """Transcribe 16 kHz mono float32 ``audio``; ``language`` None means detect (multilingual models).

        ``options`` asks for a prompt, a sampling temperature, translation to English (multilingual models)
        or word times; the segments always carry their times."""
        steps = self.transcribe_segments(audio, language, options, _window)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def transcribe_segments(
        self,
        audio: np.ndarray,
        language: str | None = None,
        options: TranscribeOptions | None = None,
        _window: int | None = None,
    ) -> Generator[TranscriptSegment, None, Transcript]:
        """The segments ``transcribe`` returns, each as soon as the seek loop has decoded it; the generator's
        return value is the whole ``Transcript``. Each ``next()`` does one step of the work (the first window
        with language detection, then a window at a time), so a caller may hand the engine's thread to other
        jobs between steps."""
        run = self._start(audio, language, options, _window)
        if run.segments is None:
            return Transcript(text="", language=run.language, duration_s=run.duration, no_speech_prob=1.0)
        decoded: list[Segment] = []
        timed: list[TranscriptSegment] = []
        for segment in run.segments:
            decoded.append(segment)
            kept = None if run.silent else _timed(segment)
            if kept is not None:
                timed.append(kept)
                yield kept
        # generate_segments already skips a window that fails the no-speech rule; silence is never words.
        text = "" if run.silent else " ".join(s.text.strip() for s in decoded)
        no_speech = max((s.no_speech_prob for s in decoded), default=1.0)
        return Transcript(
            text=clean_transcript(text),
            language=run.language,
            duration_s=run.duration,
            no_speech_prob=no_speech,
            segments=tuple(timed),
        )

    def _start(
        self, audio: np.ndarray, language: str | None, options: TranscribeOptions | None, window: int | None
    ) -> _Run:
        options = options or _PLAIN
        audio = _as_float32(audio)
        duration = len(audio) / SAMPLE_RATE
        if options.task == "translate" and not self.multilingual:
            raise ValueError(f"Whisper {self.model_name} is English-only: it cannot translate")
        if not self.multilingual:
            language = "en"  # an English-only model cannot be asked for anything else
        # The first call always runs the model, so a warm-up with silence still pays the lazy allocations.
        silent = audio.size == 0 or float(np.max(np.abs(audio))) < self.silence_peak
        if silent and (self._warm or audio.size == 0 or len(audio) > _WINDOW_SAMPLES):
            return _Run(language or "en", duration, True, None)
        self._warm = True
        fw = self.model
        features = fw.feature_extractor(audio)
        frames = self._window_for(features.shape[-1] - 1, window or self.short_window_frames)
        fw.window_frames = frames
        encoder_output = None
        if language is None:
            # The decoder's first window, exactly (generate_segments leaves out the last frame), encoded
            # once: the language is read from it and the decoder reuses it.
            first = features[:, : min(_WINDOW_FRAMES, features.shape[-1] - 1)]
            encoder_output = fw.encode(pad_or_trim(first))
            language = fw.model.detect_language(encoder_output)[0][0][0][2:-2]
        tokenizer, decoding = self._decoding_for(language, options.task)
        if len(audio) <= _WINDOW_SAMPLES:
            # Bounds a hallucination loop on noise; real speech stays far below ~12 tokens a second. At most
            # half the model's length, so a prompt carrying the previous segment's text still fits.
            cap = min(int(duration * 12) + 16, fw.max_length // 2 - 4)
            decoding = dataclasses.replace(decoding, max_new_tokens=cap)
        if options != _PLAIN:
            decoding = dataclasses.replace(
                decoding,
                initial_prompt=options.prompt.strip() if options.prompt and options.prompt.strip() else None,
                temperatures=[options.temperature],
                word_timestamps=options.word_timestamps,
            )
        segments = _in_window(
            fw, frames, fw.generate_segments(features, tokenizer, decoding, False, encoder_output)
        )
        return _Run(language, duration, silent, segments)

    def _window_for(self, content_frames: int, short: int) -> int:
        """The encoder window for an utterance: ``short`` frames when they hold the audio plus 2 s, else 30 s.

        A 30 s window costs 210 ms to encode on a 2-core machine against 44 ms for 15 s (self-attention grows
        with the square of the window). bench/wer_parity.py measures what a short window costs in words: on
        the shared clips, against offline Whisper, 1.6 points pooled (docs/benchmarks.md)."""
        if 0 < short and content_frames + _MARGIN_FRAMES <= short:
            return short
        return _WINDOW_FRAMES

    def _decoding_for(
        self, language: str, task: str = "transcribe"
    ) -> tuple[Tokenizer, TranscriptionOptions]:
        cached = self._decoding.get((language, task))
        if cached is not None:
            return cached
        with self._decoding_lock:
            fw = self.model
            tokenizer = Tokenizer(
                fw.hf_tokenizer,
                self.multilingual,
                task=task,
                language=language if self.multilingual else None,
            )
            # WhisperModel.transcribe's defaults, but greedy at temperature 0 only (no sampled fallback) and
            # without previous-text conditioning (see the module's docstring).
            options = TranscriptionOptions(
                beam_size=self.beam_size,
                best_of=5,
                patience=1,
                length_penalty=1,
                repetition_penalty=1,
                no_repeat_ngram_size=0,
                log_prob_threshold=self.log_prob_threshold,
                no_speech_threshold=self.no_speech_threshold,
                compression_ratio_threshold=2.4,
                condition_on_previous_text=False,
                prompt_reset_on_temperature=0.5,
                temperatures=[0.0],
                initial_prompt=None,
                prefix=None,
                suppress_blank=True,
                suppress_tokens=list(get_suppressed_tokens(tokenizer, [-1]) or ()),
                without_timestamps=False,
                max_initial_timestamp=1.0,
                word_timestamps=False,
                prepend_punctuations="\"'“¿([{-",
                append_punctuations="\"'.。,，!！?？:：”)]}、",
                multilingual=False,
                max_new_tokens=None,
                clip_timestamps=[0.0],
                hallucination_silence_threshold=None,
                hotwords=None,
            )
            self._decoding[(language, task)] = (tokenizer, options)
            return self._decoding[(language, task)]


def _in_window(model: _WindowedWhisper, frames: int, segments: Iterator[Segment]) -> Iterator[Segment]:
    """``segments``, each decoded in ``frames`` (the seek loop encodes each window lazily, and the engine's
    thread may run other jobs between two segments)."""
    while True:
        model.window_frames = frames
        segment = next(segments, None)
        if segment is None:
            return
        yield segment


class _WindowedWhisper(WhisperModel):
    """faster-whisper's model with a settable encoder window: ``generate_segments`` pads every window to 30 s
    of mel frames and ``encode`` trims that padding back to ``window_frames`` (the decoder attends to what the
    encoder returns, so timestamps and the seek loop work unchanged)."""

    window_frames: int = _WINDOW_FRAMES

    def encode(self, features: np.ndarray) -> Any:
        if features.shape[-1] > self.window_frames:
            features = features[..., : self.window_frames]
        return super().encode(features)


def _as_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio.astype(np.float32) / 32768.0
    return audio.astype(np.float32, copy=False)


_PLAIN = TranscribeOptions()


@dataclass
class _Run:
    """One decode begun: the language, and the seek loop's segments (None: nothing to decode)."""

    language: str
    duration: float
    silent: bool
    segments: Iterator[Segment] | None


def _timed(segment: Segment) -> TranscriptSegment | None:
    """A decoded segment as the engine reports it: annotations dropped, None when no words remain."""
    text = clean_transcript(segment.text)
    if not text:
        return None
    words = tuple(
        Word(start=round(w.start, 3), end=round(w.end, 3), word=w.word, probability=round(w.probability, 4))
        for w in segment.words or ()
    )
    return TranscriptSegment(
        start=round(segment.start, 3),
        end=round(segment.end, 3),
        text=text,
        words=words,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
        temperature=segment.temperature or 0.0,
        tokens=tuple(segment.tokens),
        seek=segment.seek,
    )
