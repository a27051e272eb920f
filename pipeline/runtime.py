"""The engines and work queues one service shares between all of its sessions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engines.base import LLMEngine, Needs, STTEngine, TTSEngine, TurnEngine, VADEngine
from pipeline.metrics import Metrics
from pipeline.workers import EngineWorker, PriorityGate, VadBatcher


def needs_of(engine: Any) -> Needs:
    """What an engine declares it needs (``Capabilities.needs``); the defaults for one that declares nothing."""
    needs = getattr(getattr(engine, "capabilities", None), "needs", None)
    return needs if isinstance(needs, Needs) else Needs()


@dataclass
class Runtime:
    """Loaded engines plus the bounded workers that run them off the event loop.

    Each worker is sized from what its engine declares (``engines.base.Needs``), never from its name: as many
    threads as the engine serves jobs at once, and a CPU priority gate when the LLM competes for this
    machine's cores. Then CPU-heavy STT and TTS jobs hold the gate and the LLM pauses between tokens while
    they run (see ``PriorityGate``).

    Background LLM work (flow drafts) runs in its own lane so that it never queues in front of a caller's
    turn: when a second in-process instance is cheap, the lane has its own (``background_llm_factory``) on
    its own thread, which pauses between tokens while any caller's STT, LLM or TTS work runs. Otherwise
    (a remote server schedules concurrent requests itself) background work shares the LLM worker.
    """

    vad: VADEngine
    stt: STTEngine
    llm: LLMEngine
    tts: TTSEngine
    turn: TurnEngine | None = None  # the sound half of the end-of-turn judgement; None: words alone
    queue_size: int = 64
    background_llm_factory: Callable[[], LLMEngine] | None = None
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.vad_batcher = VadBatcher(self.vad)
        llm = needs_of(self.llm)
        # Only the LLM can make way (it runs far ahead of speech); a remote one takes nothing from this CPU.
        gate = PriorityGate() if llm.cpu_heavy else None
        self.stt_worker = self._worker("stt", self.stt, gate)
        self._llm_gate = PriorityGate() if llm.cpu_heavy else None
        self.llm_worker = EngineWorker(
            "llm", llm.concurrency, self.queue_size, holds=self._llm_gate, yields_to=gate
        )
        self.tts_worker = self._worker("tts", self.tts, gate)
        self.turn_worker = self._worker("turn", self.turn, gate) if self.turn is not None else None
        self._background: tuple[EngineWorker, LLMEngine] | None = None
        self._background_loading = asyncio.Lock()
        if self.background_llm_factory is None or not llm.cheap_second_instance:
            self._background = (self.llm_worker, self.llm)
        self._gates = tuple(g for g in (gate, self._llm_gate) if g is not None)

    def _worker(self, name: str, engine: Any, gate: PriorityGate | None) -> EngineWorker:
        needs = needs_of(engine)
        return EngineWorker(name, needs.concurrency, self.queue_size, holds=gate if needs.cpu_heavy else None)

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

    def replace_engine(self, role: str, engine: Any) -> Any:
        """Put ``engine`` in ``role``'s place (stt, llm, tts or turn) and return the engine it replaces.

        For unloading and reloading while serving (gateway/speech/engine_memory.py). The workers stay: they
        were sized from what the engine declares, and its replacement (the same engine, or a stand-in while
        it is unloaded) declares the same. A job already running keeps the engine it started with; jobs that
        look the engine up later get the new one. Background LLM work follows the LLM: the lane shares it, or
        loads its own instance again on the next draft when a second one is cheap.
        """
        if role not in ("stt", "llm", "tts", "turn") or getattr(self, role) is None:
            raise ValueError(f"no {role} engine to replace")
        old = getattr(self, role)
        setattr(self, role, engine)
        if role == "llm":
            self._background = None
            if self.background_llm_factory is None or not needs_of(engine).cheap_second_instance:
                self._background = (self.llm_worker, engine)
        return old

    def workers(self) -> list[EngineWorker]:
        workers = [self.stt_worker, self.llm_worker, self.tts_worker]
        if self.turn_worker is not None:
            workers.append(self.turn_worker)
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
