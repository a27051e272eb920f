"""The engines and work queues one service shares between all of its sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from engines.base import LLMEngine, STTEngine, TTSEngine, VADEngine
from pipeline.metrics import Metrics
from pipeline.workers import EngineWorker, PriorityGate, VadBatcher


@dataclass
class Runtime:
    """Loaded engines plus the bounded workers that run them off the event loop."""

    vad: VADEngine
    stt: STTEngine
    llm: LLMEngine
    tts: TTSEngine
    queue_size: int = 64
    llm_concurrency: int = 1
    llm_shares_cpu: bool = True  # in-process LLM: pause its tokens while STT/TTS work (see PriorityGate)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.vad_batcher = VadBatcher(self.vad)
        gate = PriorityGate() if self.llm_shares_cpu else None
        self.stt_worker = EngineWorker("stt", 1, self.queue_size, holds=gate)
        # An in-process llama.cpp model runs one generation at a time; a remote server batches many.
        self.llm_worker = EngineWorker("llm", self.llm_concurrency, self.queue_size, yields_to=gate)
        self.tts_worker = EngineWorker("tts", 1, self.queue_size, holds=gate)

    def workers(self) -> list[EngineWorker]:
        return [self.stt_worker, self.llm_worker, self.tts_worker]

    async def close(self) -> None:
        await self.vad_batcher.close()
        for worker in self.workers():
            worker.shutdown()
