"""Engines declare their options and needs; the runtime and the settings follow the declarations.

No model is loaded here: the engines are small stand-ins that declare what the real ones declare.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from engines.base import Capabilities, GenerationOptions, Needs, Transcript, Voice
from pipeline.runtime import Runtime


class StandinVAD:
    sample_rate = 16000
    sample_rates = (16000,)
    capabilities = Capabilities(batched=True)

    def new_state(self, sample_rate: int = 16000) -> Any:
        return None

    def speech_probs(self, states: list[Any], chunks: np.ndarray) -> np.ndarray:
        return np.zeros(len(chunks), np.float32)


class StandinSTT:
    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(needs=needs or Needs())

    def transcribe(self, audio: np.ndarray, language: str | None = None) -> Transcript:
        return Transcript("hello")


class StandinLLM:
    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(streaming=True, needs=needs or Needs())

    def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
        yield "Hi."


class StandinTTS:
    sample_rate = 16000

    def __init__(self, needs: Needs | None = None) -> None:
        self.capabilities = Capabilities(streaming=True, needs=needs or Needs())

    def voices(self) -> list[Voice]:
        return [Voice("tone", "standin", "en", self.sample_rate)]

    def synthesize(self, text: str, voice: str | None = None) -> Iterator[np.ndarray]:
        yield np.zeros(160, np.int16)


# What the shipped engines declare (engines/llm_llama.py, engines/llm_openai.py).
LLAMA_NEEDS = Needs(concurrency=1, cpu_heavy=True, cheap_second_instance=True)
OPENAI_NEEDS = Needs(remote=True, concurrency=8, cpu_heavy=False)


def _threads(worker: Any) -> int:
    return worker._executor._max_workers  # type: ignore[no-any-return]


def _runtime(llm: Any, stt: Any = None, tts: Any = None, **kwargs: Any) -> Runtime:
    return Runtime(vad=StandinVAD(), stt=stt or StandinSTT(), llm=llm, tts=tts or StandinTTS(), **kwargs)


async def test_an_in_process_llm_gets_one_thread_the_cpu_gate_and_its_own_background_lane() -> None:
    built: list[StandinLLM] = []

    def second() -> StandinLLM:
        built.append(StandinLLM(LLAMA_NEEDS))
        return built[-1]

    rt = _runtime(StandinLLM(LLAMA_NEEDS), background_llm_factory=second)
    try:
        assert _threads(rt.llm_worker) == 1
        # Speech work holds the gate the caller's LLM yields to; the LLM holds its own for the background lane.
        assert rt.stt_worker._holds is not None and rt.stt_worker._holds is rt.tts_worker._holds
        assert rt.llm_worker._yields_to == (rt.stt_worker._holds,)
        assert rt.llm_worker._holds is not None
        worker, engine = await rt.background_llm()
        assert worker is not rt.llm_worker and engine is built[0] and engine is not rt.llm
        assert worker.name == "llm-background" and set(worker._yields_to) == set(rt._gates)
        assert len(rt._gates) == 2 and rt.workers()[-1] is worker
    finally:
        await rt.close()


async def test_a_remote_llm_gets_its_declared_concurrency_no_gate_and_shares_its_worker() -> None:
    rt = _runtime(StandinLLM(OPENAI_NEEDS), background_llm_factory=lambda: StandinLLM(OPENAI_NEEDS))
    try:
        assert _threads(rt.llm_worker) == 8
        assert rt.llm_worker._holds is None and rt.llm_worker._yields_to == ()
        assert rt.stt_worker._holds is None and rt.tts_worker._holds is None
        assert rt._gates == ()
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_an_engine_that_declares_nothing_is_in_process_cpu_heavy_and_single_threaded() -> None:
    class Bare:
        capabilities = Capabilities()

        def stream_chat(self, messages: list[dict[str, Any]], options: GenerationOptions) -> Iterator[str]:
            yield ""

    rt = _runtime(Bare())
    try:
        assert [_threads(w) for w in rt.workers()] == [1, 1, 1]
        assert rt.stt_worker._holds is not None and rt.llm_worker._yields_to == (rt.stt_worker._holds,)
        # No factory: background work shares the callers' LLM worker.
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_speech_engines_are_sized_from_their_own_needs() -> None:
    remote_stt = StandinSTT(Needs(remote=True, concurrency=4, cpu_heavy=False))
    rt = _runtime(StandinLLM(LLAMA_NEEDS), stt=remote_stt, tts=StandinTTS(Needs(concurrency=2)))
    try:
        assert _threads(rt.stt_worker) == 4 and rt.stt_worker._holds is None  # takes nothing from this CPU
        assert _threads(rt.tts_worker) == 2 and rt.tts_worker._holds is not None
        # No cheap second instance without a factory to make it.
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
    finally:
        await rt.close()


async def test_without_a_cheap_second_instance_background_work_shares_the_worker() -> None:
    made: list[StandinLLM] = []
    rt = _runtime(StandinLLM(Needs()), background_llm_factory=lambda: made.append(StandinLLM()) or made[-1])
    try:
        assert await rt.background_llm() == (rt.llm_worker, rt.llm)
        assert made == []
    finally:
        await rt.close()
