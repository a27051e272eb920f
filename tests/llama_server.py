"""A real ``llama_cpp.server`` (SmolLM2) for tests of the OpenAI-compatible LLM path."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

from tests.conftest import free_port

SERVER_START_TIMEOUT_S = 60.0


# The server runs under this stub so that it dies with the test process even if pytest itself is killed:
# PR_SET_PDEATHSIG (1) survives exec, and the ppid check closes the race with a parent that already died.
_SERVER_STUB = (
    "import ctypes, os, runpy, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(os.environ['VOXGATE_TEST_PARENT']): sys.exit(1)\n"
    "runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)\n"
)


class LlamaServer:
    """``llama_cpp.server`` with SmolLM2 on a free port; ``stop()`` may be called early (and again)."""

    def __init__(self, chat_format: str | None = None) -> None:
        """``chat_format``: the server's own (``chatml-function-calling`` takes OpenAI tools); None: the model's."""
        from engines.models import smollm2_gguf_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["--model", smollm2_gguf_path(), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--n_ctx", "2048", "--n_threads", "1"]
        if chat_format is not None:
            args += ["--chat_format", chat_format]
        if sys.platform == "linux":
            self.cmd = [sys.executable, "-c", _SERVER_STUB, *args]
        else:
            self.cmd = [sys.executable, "-m", "llama_cpp.server", *args]
        self.log = tempfile.TemporaryFile()
        self.proc: subprocess.Popen[bytes] | None = None

    def _tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def start(self, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **(env or {}), "VOXGATE_TEST_PARENT": str(os.getpid())}
        self.proc = subprocess.Popen(
            self.cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {self.proc.returncode}:\n{self._tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer in {SERVER_START_TIMEOUT_S} s:\n{self._tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
