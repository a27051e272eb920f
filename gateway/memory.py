"""Process memory settings that must be in place before the process allocates: the malloc arena cap."""

from __future__ import annotations

import os
import sys

ARENA_ENV = "MALLOC_ARENA_MAX"
DEFAULT_ARENAS = "2"


def reexec_with_arena_cap() -> None:
    """Start this command again with ``MALLOC_ARENA_MAX=2`` unless the environment already sets it.

    glibc gives each thread that meets contention an arena of its own (up to 8 per core) and memory freed in
    one arena is not reused by another: with the engines' worker threads, the executor's and the server's, a
    voice session's RSS climbed 70-100 MB a minute under steady load (tests/test_backpressure.py, 900 ->
    1,006 MB), and stayed flat with two arenas (855 -> 883 MB, twice). glibc reads the variable only at
    process start (``mallopt`` later still let it climb), hence the exec: same pid, before any import that
    starts threads. Set ``MALLOC_ARENA_MAX`` yourself to choose another value; on a libc without arenas the
    variable means nothing.
    """
    if ARENA_ENV in os.environ:
        return
    env = {**os.environ, ARENA_ENV: DEFAULT_ARENAS}
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
