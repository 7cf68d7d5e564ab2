"""Throwaway redis-server processes for tests: free port, no RDB, optional AOF.

Tests never touch the Redis at 127.0.0.1:6379. Each ``RedisServer`` is a real process
the test owns, so it can be killed (SIGKILL), paused (SIGSTOP), resumed and restarted
on the same port and data directory (with AOF, state survives the restart).
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from guardrails.infra.embedded import find_redis_server
from guardrails.infra.server import FORBIDDEN_PORT, free_port

__all__ = ["FORBIDDEN_PORT", "RedisServer", "free_port"]


class RedisServer:
    """A redis-server child process on 127.0.0.1:<free port>."""

    def __init__(
        self, *, aof: bool = False, fsync: str = "always", data_dir: Path | None = None
    ) -> None:
        self.aof = aof
        self.fsync = fsync
        self.port = free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="gr-redis-")
        self.dir = data_dir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = find_redis_server()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert self.port != FORBIDDEN_PORT
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.dir),
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", self.fsync,
            "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            try:
                c = redis.Redis(port=self.port, socket_timeout=0.5)
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def client(self, **kw: object) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, **kw)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: no AOF rewrite, no goodbye (appendfsync always keeps acked writes)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        """Kill and start again on the same port and data directory."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
