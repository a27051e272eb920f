"""What every route shares: one :class:`AppState` per app (tests run several side by side).

It lives in its own module, below every route module, so that routes, transports and telephony providers can
name its type without importing the app that assembles them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from flows import HttpTool, example_flows
from gateway.auth import Auth
from gateway.drain import HeldRequests
from gateway.keys.registry import KeyRegistry
from gateway.platform_events import PlatformEvents
from gateway.records import StoreRecorder
from gateway.sessions import SessionManager
from gateway.settings import Settings
from pipeline.metrics import LoopLagMonitor
from pipeline.runtime import Runtime
from storage.store import Store

if TYPE_CHECKING:
    from telephony.call_provider import TelephonyProvider

log = logging.getLogger("voxgate.app")


class AppState:
    """Settings, engines, live sessions, storage and each telephony provider's own state, for one app."""

    def __init__(
        self,
        settings: Settings,
        runtime: Runtime | None,
        providers: Mapping[str, TelephonyProvider] | None = None,
    ) -> None:
        self.settings = settings
        self.runtime: Runtime | None = runtime
        self.sessions = SessionManager(settings.max_sessions)
        self.auth = Auth.for_settings(settings, KeyRegistry(lambda: self.store))  # gateway/auth.py, keys/
        self.ready = asyncio.Event()
        self.draining = False  # SIGTERM: readiness is false and new sessions are refused (gateway/drain.py)
        self.held_requests = HeldRequests()  # HTTP chat requests in flight, which the drain lets finish
        self.load_error: str | None = None
        self.lag = LoopLagMonitor()
        self.store: Store | None = None
        self.recorder: StoreRecorder | None = None
        self.flow_http = HttpTool(settings.flow_http_allowlist, settings.flow_secrets)
        # Each provider keeps what it needs per app (REST clients, signature checks, calls it answered).
        self.providers: dict[str, Any] = {
            name: p.create_state(settings) for name, p in (providers or {}).items()
        }
        self.webrtc_calls: set[Any] = set()
        self.events = PlatformEvents()  # session ends, calls, recordings, jobs: for webhooks and usage
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def engines(self) -> Runtime:
        """The loaded engines; only for code that runs once the app is ready (sessions, engine routes)."""
        if self.runtime is None:
            raise RuntimeError("engines are not loaded yet")
        return self.runtime

    async def open_store(self) -> None:
        self.store = await Store.open(
            self.settings.storage_url(), write_interval_s=self.settings.storage_write_interval_s
        )
        self.recorder = StoreRecorder(self.store.writer, self.settings.instance_id)
        orphans = await self.store.close_orphaned_sessions(self.settings.instance_id)
        if orphans:
            log.warning("closed %d sessions left open by a previous run that did not shut down", orphans)
        if self.store.fresh and self.settings.load_example_flows:
            for document in example_flows():
                await self.store.save_flow(document["id"], document["name"], document)

    async def close_store(self) -> None:
        if self.store is not None:
            await self.store.close()  # flushes every queued write: a normal shutdown loses no turn


def app_state(conn: HTTPConnection) -> AppState:
    """The state of the app serving this request or WebSocket."""
    state: AppState = conn.app.state.voxgate
    return state
