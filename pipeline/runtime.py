"""The engines and work queues one service shares between all of its sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from engines.base import LLMEngine, STTEngine, TTSEngine, VADEngine
from pipeline.metrics import Metrics
from pipeline.workers import EngineWorker, PriorityGate, VadBatcher


@dataclass
class Runtime:
    """Loaded engines plus the bounded workers that run them off the event loop.

    Background LLM work (flow drafts) runs in its own lane so that it never queues in front of a caller's
    turn: with an in-process LLM the lane has its own engine instance (``background_llm_factory``) on its
    own thread, which pauses between tokens while any caller's STT, LLM or TTS work runs.
    """

    vad: VADEngine
    stt: STTEngine
    llm: LLMEngine
    tts: TTSEngine
    queue_size: int = 64
    llm_concurrency: int = 1
    llm_shares_cpu: bool = True  # in-process LLM: pause its tokens while STT/TTS work (see PriorityGate)
    background_llm_factory: Callable[[], LLMEngine] | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.vad_batcher = VadBatcher(self.vad)
        gate = PriorityGate() if self.llm_shares_cpu else None
        self.stt_worker = EngineWorker("stt", 1, self.queue_size, holds=gate)
        # An in-process llama.cpp model runs one generation at a time; a remote server batches many.
        self._llm_gate = PriorityGate() if self.llm_shares_cpu else None
        self.llm_worker = EngineWorker(
            "llm", self.llm_concurrency, self.queue_size, holds=self._llm_gate, yields_to=gate
        )
        self.tts_worker = EngineWorker("tts", 1, self.queue_size, holds=gate)
        self._background: tuple[EngineWorker, LLMEngine] | None = None
        self._background_loading = asyncio.Lock()
        if self.background_llm_factory is None or not self.llm_shares_cpu:
            # A remote server schedules concurrent requests itself: background work shares the worker.
            self._background = (self.llm_worker, self.llm)
        self._gates = tuple(g for g in (gate, self._llm_gate) if g is not None)

    async def background_llm(self) -> tuple[EngineWorker, LLMEngine]:
        """The worker and engine for background LLM work, loading the lane's engine on first use."""
        if self._background is not None:
            return self._background
        async with self._background_loading:
            if self._background is None:
                assert self.background_llm_factory is not None
                worker = EngineWorker("llm-background", 1, 4, yields_to=self._gates)
                engine = await worker.run(self.background_llm_factory)
                self._background = (worker, engine)
        return self._background

    def workers(self) -> list[EngineWorker]:
        workers = [self.stt_worker, self.llm_worker, self.tts_worker]
        if self._background is not None and self._background[0] is not self.llm_worker:
            workers.append(self._background[0])
        return workers

    async def close(self) -> None:
        await self.vad_batcher.close()
        for worker in self.workers():
            worker.shutdown()
        if self._background is not None and self._background[1] is not self.llm:
            close = getattr(self._background[1], "close", None)
            if close is not None:
                close()
