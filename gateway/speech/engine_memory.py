"""Unloading and reloading engines while the service runs (``POST /v1/unload-model``, ``/v1/load-model``).

An unloaded engine's place in the :class:`~pipeline.runtime.Runtime` holds an :class:`UnloadedEngine`. It
answers what describes the engine (capabilities, sample rate, voices, plain settings such as a threshold) from
a snapshot taken at unload time, so listing voices or reading ``/health`` never loads anything. Real work on
it (``synthesize``, ``transcribe``, ``stream_chat``...) loads the engine first, on the worker thread that asked,
when ``settings.speech.load_on_demand`` is on; otherwise it raises :class:`EngineUnloaded`, an HTTP 409.

Nothing is torn down under a user. An unload waits until the engine's worker has run every job queued before
it, then only drops the runtime's reference (in one step on the event loop); a job that still holds the engine
finishes with it whole, and the memory goes when the last holder lets go. Live sessions hold their engines for
their whole life, so an unload with live sessions waits for them to end (``wait_s``, bounded) and otherwise
refuses with 409.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import ctypes.util
import dataclasses
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engines.base import GenerationOptions
from engines.registry import build
from gateway.api_common import parse_body
from gateway.auth import scoped
from gateway.engines import engine_choices
from gateway.state import AppState, app_state
from pipeline.runtime import Runtime
from pipeline.workers import EngineWorker

log = logging.getLogger("voxgate.engines")

UNLOADABLE = ("stt", "llm", "tts", "turn")
_PLAIN = (bool, int, float, str, tuple, type(None))
_SNAPSHOT_METHODS = frozenset(
    {"voices", "catalogue", "engine_capabilities"}
)  # copied: listing voices never loads
_NO_OPS = frozenset({"close"})  # nothing to release while unloaded
_SESSION_POLL_S = 0.1


class EngineUnloaded(HTTPException):
    """An unloaded engine was asked to work while ``load_on_demand`` is off (HTTP 409 wherever it surfaces)."""

    def __init__(self, role: str) -> None:
        super().__init__(
            409,
            f"the {role} engine is unloaded and load_on_demand is off: "
            f'POST /v1/load-model {{"engine": "{role}"}} first',
        )


class UnloadedEngine:
    """Stands in the runtime for an unloaded engine: describes it from a snapshot, loads it (or refuses) for work.

    What describes the engine (plain attributes, the voice lists, each language's default voice) is copied at
    unload time; calling any other method, or reading any other attribute, needs the engine itself. It keeps no
    reference to the engine it replaces, so that engine's memory can go.
    """

    def __init__(self, role: str, engine: Any, loader: Callable[[], Any]) -> None:
        self.role = role
        self.engine_class = type(engine).__name__
        caps = engine.capabilities
        # No cheap second instance while unloaded: background LLM work then queues on the LLM's own worker
        # (and so loads the engine or is refused like any other work) instead of building a second one.
        self.capabilities = dataclasses.replace(
            caps, needs=dataclasses.replace(caps.needs, cheap_second_instance=False)
        )
        self._loader = loader
        cls = type(engine)
        self._methods = {n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n, None))}
        own = getattr(engine, "__dict__", {})
        self._values = {k: v for k, v in own.items() if not k.startswith("_") and isinstance(v, _PLAIN)}
        self._others = {n for n in dir(engine) if not n.startswith("_")} - self._methods - set(self._values)
        self._snapshots = {n: getattr(engine, n)() for n in _SNAPSHOT_METHODS & self._methods}
        self._by_language: dict[str, Any] | None = None
        if "default_voice_for" in self._methods:
            self._by_language = {lang: engine.default_voice_for(lang) for lang in caps.languages}

    def _default_voice_for(self, language: str) -> Any:
        assert self._by_language is not None
        found = self._by_language.get(language)
        return found if found is not None else self._by_language.get(language.replace("_", "-").split("-")[0])

    def __getattr__(self, name: str) -> Any:
        # Only reached for what the stand-in itself lacks: the engine's own attributes and methods.
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._values:
            return self._values[name]
        if name in self._snapshots:
            snapshot = self._snapshots[name]
            return lambda: copy.copy(snapshot)
        if name == "default_voice_for" and self._by_language is not None:
            return self._default_voice_for
        if name in _NO_OPS:
            return lambda *args, **kwargs: None
        if name in self._methods:  # loaded when called, not when looked up (getattr(e, "x", None) is no use)
            return lambda *args, **kwargs: getattr(self._loader(), name)(*args, **kwargs)
        if name in self._others:
            return getattr(self._loader(), name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"<unloaded {self.role} engine {self.engine_class}>"


def is_unloaded(engine: Any) -> bool:
    return isinstance(engine, UnloadedEngine)


def engine_class_name(engine: Any) -> str:
    """The class of the engine serving a role, loaded or not (``/health`` names it either way)."""
    return engine.engine_class if isinstance(engine, UnloadedEngine) else type(engine).__name__


def worker_for(runtime: Runtime, role: str) -> EngineWorker:
    worker = {"stt": runtime.stt_worker, "llm": runtime.llm_worker, "tts": runtime.tts_worker}.get(role)
    worker = worker or (runtime.turn_worker if role == "turn" else None)
    if worker is None:
        raise HTTPException(400, f"no {role} engine is configured here")
    return worker


def rss_bytes() -> int:
    """This process's resident memory (Linux ``/proc``; 0 where there is none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release_memory() -> None:
    """Collect what an unload let go of and hand freed heap pages back to the system.

    The app froze its start-up heap (``gc.freeze``, gateway/app.py): an engine loaded before that is out of
    the collector's reach, so a reference cycle through it would never be freed. It is unfrozen for one full
    collection (about 100 ms for the whole heap: an unload is an operator's action, not a caller's) and frozen
    again. glibc keeps freed small blocks in its arenas; ``malloc_trim`` returns them.
    """
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _warm(role: str, engine: Any, instructions: str) -> None:
    """One tiny call, as at start-up (gateway/engines.py ``warm_up``): the first real call is then fast."""
    silence = np.zeros(16000, np.float32)
    if role == "stt":
        engine.transcribe(silence)
    elif role == "tts":
        list(engine.synthesize("Hello."))
    elif role == "turn":
        engine.complete_prob(silence)
    elif role == "llm":
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": "Hi"}]
        try:
            list(engine.stream_chat(messages, GenerationOptions(max_tokens=2)))
        except Exception as exc:  # a remote LLM may come up later; requests report its errors then
            log.warning("LLM warm-up after load failed: %s", exc)


class EngineMemory:
    """Loads and unloads one app's engines; one load or unload at a time, each engine built once."""

    def __init__(self, state: AppState) -> None:
        self._state = weakref.ref(state)
        self._admin = asyncio.Lock()
        self._build_locks = {role: threading.Lock() for role in UNLOADABLE}
        self.loading: set[str] = set()

    @property
    def state(self) -> AppState:
        state = self._state()
        assert state is not None
        return state

    def role_of(self, name: str) -> str:
        """A role (stt, tts, llm, turn) from a role, an engine's settings name (``piper``) or class name."""
        rt, settings = self.state.engines, self.state.settings
        if name == "vad":
            raise HTTPException(400, "the vad engine cannot be unloaded: every live listener holds its state")
        if name in UNLOADABLE:
            return name
        for role in UNLOADABLE:
            engine = getattr(rt, role)
            if engine is not None and name in (settings.engine_name(role), engine_class_name(engine)):
                return role
        known = sorted({*UNLOADABLE, *(settings.engine_name(r) for r in UNLOADABLE)})
        raise HTTPException(422, f"unknown engine {name!r}: one of {', '.join(known)}")

    def status(self) -> dict[str, str]:
        """Each role's engine: loaded, unloaded, loading, or none (no turn engine configured)."""
        rt = self.state.engines
        out: dict[str, str] = {}
        for role in UNLOADABLE:
            engine = getattr(rt, role)
            if engine is None:
                out[role] = "none"
            else:
                out[role] = (
                    "loading" if role in self.loading else ("unloaded" if is_unloaded(engine) else "loaded")
                )
        return out

    # -- loading ------------------------------------------------------------------------------------------------

    def _on_demand(self, role: str) -> Any:
        """What an unloaded engine does when asked to work (called on the thread that asked)."""
        if not self.state.settings.speech.load_on_demand:
            raise EngineUnloaded(role)
        return self._load_now(role)

    def _load_now(self, role: str) -> Any:
        """Build, warm and install the engine for ``role`` unless it is there already (blocking)."""
        rt = self.state.engines
        with self._build_locks[role]:
            current = getattr(rt, role)
            if not is_unloaded(current):
                return current
            self.loading.add(role)
            try:
                start = time.perf_counter()
                engine = build(engine_choices(self.state.settings)[role])
                _warm(role, engine, self.state.settings.instructions)
                rt.replace_engine(role, engine)
                log.info("%s engine loaded in %.1f s", role, time.perf_counter() - start)
                return engine
            finally:
                self.loading.discard(role)

    async def ensure_loaded(self, role: str) -> None:
        """For a request that needs ``role``'s engine: load it now, or 409 when ``load_on_demand`` is off."""
        rt = self.state.engines
        if not is_unloaded(getattr(rt, role)):
            return
        if not self.state.settings.speech.load_on_demand:
            raise EngineUnloaded(role)
        await worker_for(rt, role).run(self._load_now, role)

    async def load(self, role: str) -> dict[str, Any]:
        async with self._admin:
            rt = self.state.engines
            before, start = rss_bytes(), time.perf_counter()
            already = not is_unloaded(getattr(rt, role))
            if not already:
                # On the engine's own thread: CTranslate2 and llama.cpp keep a thread team per calling thread.
                await worker_for(rt, role).run(self._load_now, role)
            return _report(role, "loaded", before, start, "was already loaded" if already else "loaded")

    # -- unloading ----------------------------------------------------------------------------------------------

    def _busy(self) -> int:
        sessions = self.state.sessions
        return len(sessions.live) + sessions.reserved

    async def unload(self, role: str, wait_s: float) -> dict[str, Any]:
        async with self._admin:
            rt = self.state.engines
            if getattr(rt, role) is None:
                raise HTTPException(400, f"no {role} engine is configured here")
            if is_unloaded(getattr(rt, role)) and role not in self.loading:
                return _report(role, "unloaded", rss_bytes(), time.perf_counter(), "was already unloaded")
            worker = worker_for(rt, role)
            deadline = time.monotonic() + wait_s
            while True:
                while busy := self._busy():
                    if time.monotonic() >= deadline:
                        raise HTTPException(
                            409,
                            f"{busy} live session(s) use the {role} engine; it is unloaded only when none is "
                            f"live (waited {wait_s:g} s: send a larger wait_s to wait longer)",
                        )
                    await asyncio.sleep(_SESSION_POLL_S)
                # The worker runs its jobs in order: once this one ran, the jobs queued before it are done.
                await worker.run(lambda: None)
                if not self._busy():  # no await from here to the swap: no session can start in between
                    break
            if is_unloaded(getattr(rt, role)):  # a load on demand that was running did not succeed
                return _report(role, "unloaded", rss_bytes(), time.perf_counter(), "was already unloaded")
            before, start = rss_bytes(), time.perf_counter()
            old = getattr(rt, role)
            rt.replace_engine(role, UnloadedEngine(role, old, lambda: self._on_demand(role)))
            del old
            await asyncio.to_thread(release_memory)
            log.info("%s engine unloaded", role)
            return _report(role, "unloaded", before, start, "unloaded")


def _report(role: str, status: str, rss_before: int, start: float, what: str) -> dict[str, Any]:
    after = rss_bytes()
    return {
        "status": status,
        "engine": role,
        "message": f"the {role} engine {what}",
        "rss_mb_before": round(rss_before / 2**20, 1),
        "rss_mb_after": round(after / 2**20, 1),
        "seconds": round(time.perf_counter() - start, 3),
    }


_MEMORIES: weakref.WeakKeyDictionary[AppState, EngineMemory] = weakref.WeakKeyDictionary()


def memory_of(state: AppState) -> EngineMemory:
    """The app's engine memory manager (one per app: tests run several apps in one process)."""
    memory = _MEMORIES.get(state)
    if memory is None:
        memory = _MEMORIES[state] = EngineMemory(state)
    return memory


# -- routes ------------------------------------------------------------------------------------------------------


class LoadRequest(BaseModel):
    """``POST /v1/load-model``: an engine kind (stt, tts, llm, turn) or its name (whisper, piper, llama...)."""

    model_config = ConfigDict(extra="forbid")
    engine: str = Field(min_length=1, max_length=64)


class UnloadRequest(LoadRequest):
    """``POST /v1/unload-model``; ``wait_s``: how long to wait for live sessions to end before refusing."""

    wait_s: float = Field(0.0, ge=0, le=300)


def _memory(request: Request) -> EngineMemory:
    state = app_state(request)
    if state.runtime is None:
        raise HTTPException(503, "models are still loading")
    return memory_of(state)


async def load_model(request: Request) -> Response:
    body = await parse_body(request, LoadRequest)
    if isinstance(body, Response):
        return body
    memory = _memory(request)
    return JSONResponse(await memory.load(memory.role_of(body.engine)))


async def unload_model(request: Request) -> Response:
    body = await parse_body(request, UnloadRequest)
    if isinstance(body, Response):
        return body
    memory = _memory(request)
    return JSONResponse(await memory.unload(memory.role_of(body.engine), body.wait_s))


routes: list[BaseRoute] = [
    scoped(Route("/v1/load-model", load_model, methods=["POST"]), "admin"),
    scoped(Route("/v1/unload-model", unload_model, methods=["POST"]), "admin"),
]
