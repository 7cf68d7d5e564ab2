"""Throwaway redis-server processes for tests, from the one launcher
(``guardrails.infra.server``): a free port (never 6379), no RDB, a temporary data
directory removed on ``stop()``, and — unlike the launcher's durable default — no AOF
unless the test asks for it.

Tests never touch the Redis at 127.0.0.1:6379. Each ``RedisServer`` is a real process
the test owns, so it can be killed (SIGKILL), paused (SIGSTOP), resumed and restarted
on the same port and data directory (with AOF, state survives the restart).
"""

from __future__ import annotations

from pathlib import Path

from guardrails.infra import server
from guardrails.infra.server import FORBIDDEN_PORT, free_port

__all__ = ["FORBIDDEN_PORT", "RedisServer", "free_port"]


class RedisServer(server.RedisProcess):
    """A test's redis-server: AOF off by default (``aof=True`` for a restart that keeps data)."""

    def __init__(
        self, *, aof: bool = False, fsync: str = "always", data_dir: Path | None = None
    ) -> None:
        super().__init__(data_dir, aof=aof, fsync=fsync)
