"""``voxgate serve`` as a real process on its own port and data directory, for tests that need more than
one server or a server they can kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


class VoxgateProcess:
    """``voxgate serve`` as a real process on its own port and data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/v1/voice"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir / f"serve-{self.port}.log"
        self.env = {
            **os.environ,
            "VOXGATE_DATA_DIR": str(data_dir),
            "VOXGATE_PORT": str(self.port),
            "VOXGATE_LOG_LEVEL": "warning",
            # stop() sends SIGTERM: a session a test left open gets no 30 s drain (tests/test_drain.py sets one)
            "VOXGATE_DRAIN_TIMEOUT_S": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 120, ready: bool = True) -> VoxgateProcess:
        """Start and wait until the engines are loaded (``/health/ready``), or with ``ready=False`` only until
        it serves HTTP (``/health/live``: storage is open, the engines still loading)."""
        probe = f"{self.http}/health/ready" if ready else f"{self.http}/health/live"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve"], env=self.env, stdout=log, stderr=log, cwd=ROOT
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"voxgate exited {self.proc.returncode}: {self.log_tail()}"
            try:
                if httpx.get(probe, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"voxgate did not get ready: {self.log_tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig`` and wait for the exit (its return code); one that outlives 30 s is killed."""
        if not self.alive:
            return None
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
