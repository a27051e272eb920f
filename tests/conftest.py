"""Shared fixtures: real engines loaded once, and a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

SHARED_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
if not SHARED_AUDIO.is_dir():  # CI clones the repo with shared/ beside it; a checkout may have it inside
    SHARED_AUDIO = Path(__file__).resolve().parents[1] / "shared" / "audio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(settings, runtime=None) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """The real app on ``settings`` (engines from ``runtime``, else loaded) served on a free port, until exit."""
    from gateway.app import create_app

    live = LiveServer(create_app(settings, runtime=runtime), free_port(), settings)
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="session")
def shared_audio() -> Path:
    if not SHARED_AUDIO.is_dir():
        pytest.fail(f"recorded speech not found at {SHARED_AUDIO} (the repo expects ../shared/audio)")
    return SHARED_AUDIO


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from gateway.settings import Settings

    return Settings(data_dir=tmp_path_factory.mktemp("voxgate-data"))


class LiveServer:
    """uvicorn serving the real app in a thread; tests reach its state for white-box checks."""

    def __init__(self, app, port: int, settings) -> None:  # type: ignore[no-untyped-def]
        import uvicorn

        self.app = app
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/v1/voice"
        self.http = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            ws_max_size=settings.max_message_bytes,
            ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_ping_timeout_s,
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    @property
    def state(self):  # type: ignore[no-untyped-def]
        return self.app.state.voxgate

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not (self.server.started and self.state.ready.is_set()):
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server did not get ready: {self.state.load_error}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="session")
def server(settings) -> Iterator[LiveServer]:  # type: ignore[no-untyped-def]
    """One server with the embedded default engines for the whole test session."""
    with serving(settings) as live:
        yield live


@pytest.fixture(scope="session")
def runtime(server: LiveServer):  # type: ignore[no-untyped-def]
    """The server's loaded engines, for direct comparisons (call them from a thread, not the test loop)."""
    return server.state.runtime


POSTGRES_ENV = "VOXGATE_TEST_POSTGRES_URL"


async def _postgres_admin(base_url: str):  # type: ignore[no-untyped-def]
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(base_url)
    return await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards; skipped (saying why) without a server."""
    import uuid

    from sqlalchemy.engine import make_url

    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests skipped: {POSTGRES_ENV} is not set (scripts/test.sh sets it)")
    try:
        admin = await _postgres_admin(base)
    except Exception as exc:  # no server, wrong credentials: say so, as a skip
        pytest.skip(f"PostgreSQL tests skipped: {base} is not reachable ({type(exc).__name__}: {exc})")
    name = f"voxgate_test_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield (
            make_url(base)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs on SQLite always, and on PostgreSQL when a server is reachable."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'voxgate.db'}"
    return request.getfixturevalue("postgres_url")
