"""The chaos run's own Redis: a ``redis-server`` child with append-only persistence.

Kept inside the package (not in ``tests/``) so ``make chaos`` needs no test code. It
never uses port 6379, and ``appendfsync always`` means every write a client saw
acknowledged survives a SIGKILL, so a restart mid-run keeps the fencing counter, the
ledger and the journal.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from guardrails.infra.embedded import find_redis_server

FORBIDDEN_PORT = 6379


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that is not 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != FORBIDDEN_PORT:
            return port


class RedisProcess:
    """``redis-server`` on 127.0.0.1:<free port>, AOF on, data in ``data_dir``."""

    def __init__(self, data_dir: Path, extra: list[str] | None = None) -> None:
        self.dir = data_dir
        self.extra = list(extra or [])
        """More ``redis-server`` arguments (``--replicaof host port``...)."""
        self.port = free_port()
        self.binary = find_redis_server()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> None:
        if self.port == FORBIDDEN_PORT:
            raise RuntimeError("refusing to run on port 6379")
        self.dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {tail}")
            try:
                c = redis.Redis(port=self.port, socket_timeout=0.5)
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except (redis.RedisError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def kill(self) -> None:
        """SIGKILL: no goodbye; ``appendfsync always`` keeps every acknowledged write."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db, decode_responses=True, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
