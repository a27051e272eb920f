"""Smart Turn v3: does the caller's last utterance *sound* finished?

A small Whisper-encoder classifier (BSD-2-Clause, Daily) over the log-mel spectrogram of the last 8 s of audio.
It hears intonation and trailing-off that a transcript cannot show. It costs about 100 ms per call on one
thread of a small CPU, so the listener asks it once per pause, beside the speculative transcription. Its
weights come out of the ``pipecat-ai`` wheel on PyPI (``engines.models.fetch_smart_turn``); nothing of
Pipecat's code is used.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from faster_whisper.feature_extractor import FeatureExtractor

from engines.base import Capabilities, Needs
from engines.models import DEFAULT_CACHE_DIR, smart_turn_path

_RATE = 16000
_SECONDS = 8  # the model's input: 800 log-mel frames
_FRAMES = _SECONDS * _RATE // 160


class SmartTurn:
    """Turn-completion probability from the sound of an utterance (``engines.base.TurnEngine``)."""

    def __init__(self, threads: int = 1, threshold: float = 0.1, cache_dir: str = DEFAULT_CACHE_DIR) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            smart_turn_path(cache_dir), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._features = FeatureExtractor(feature_size=80, chunk_length=_SECONDS)
        self.threshold = threshold
        # One short job per pause; it shares the CPU with Whisper, so the LLM gives way while it runs.
        self.capabilities = Capabilities(needs=Needs(concurrency=1, cpu_heavy=True))

    def features(self, audio: np.ndarray) -> np.ndarray:
        """[1, 80, 800] Whisper log-mel of the last 8 s, zero-padded in front, waveform normalised first."""
        audio = np.asarray(audio, dtype=np.float32)[-_SECONDS * _RATE :]
        if audio.size < _SECONDS * _RATE:
            audio = np.concatenate([np.zeros(_SECONDS * _RATE - audio.size, np.float32), audio])
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        mel = self._features(audio, padding=0)[:, :_FRAMES]
        return mel[np.newaxis].astype(np.float32)

    def complete_prob(self, audio: np.ndarray) -> float:
        """The probability that the utterance in ``audio`` (16 kHz float32) is a finished turn."""
        (out,) = self._session.run(None, {self._input: self.features(audio)})
        return float(np.asarray(out).reshape(-1)[0])


def no_turn_model() -> None:
    """``turn_engine = "none"``: pauses are judged from the transcript's words alone."""
    return None
