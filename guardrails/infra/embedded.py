"""The embedded default Redis: one real ``redis-server`` per user, shared by every
instance on the host, on a unix socket in a fixed state directory.

Invariant upheld: *the fencing counter only grows*. The server runs with append-only
persistence (``appendfsync always``: a token is on disk before any client sees it), so a
restart of the embedded server — graceful or a crash — never hands out a token twice.

The state directory derives from the user id, never from ``$HOME``: two supervisors with
different ``HOME`` directories must reach the *same* Redis, or their leases would not
exclude each other. ``GUARDRAILS_STATE_DIR`` overrides it (tests use this); the directory
and its rule against other users live in ``guardrails.statedir``.

Never fakeredis: a run always talks to a real server.

Against another local user (the state directory is in a shared place, ``/var/tmp``):
before the server is used or started, the state directory and its ``redis/`` directory
must be real directories (not symlinks) owned by this user with no group or other access
(mode 0700); otherwise nothing is started and nothing talks to the socket. The server is
started from a 0600 config file (never argv) with a random ``requirepass`` kept in a 0600
file in ``redis/``; every client authenticates, so a foreign server on the socket fails
AUTH and is refused, as is one running without AOF.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from guardrails import statedir
from guardrails.infra import server


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started or reached."""


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
    def password_file(self) -> Path:
        return self.root / "requirepass"

    @property
    def config_file(self) -> Path:
        return self.root / "redis.conf"

    @property
    def url(self) -> str:
        """The socket URL without credentials (for messages)."""
        return f"unix://{self.socket}"


def _checked_paths(create: bool) -> EmbeddedPaths:
    """The paths, once the state directory and its ``redis/`` are this user's private
    directories (``statedir.private_dir``); ``EmbeddedRedisError`` saying why otherwise."""
    p = paths()
    try:
        statedir.private_dir(p.root, create=create)
    except statedir.StateDirError as e:
        raise EmbeddedRedisError(
            f"{e} — not using or starting the embedded Redis there (another user could run "
            "their own server on its socket and own your lease and kill switch)") from None
    return p


def _password(p: EmbeddedPaths, create: bool) -> str | None:
    """The server's ``requirepass`` from its 0600 file (created with a fresh random one
    when missing and ``create``); None when missing. Never follows a symlink."""
    try:
        fd = os.open(p.password_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None
        fd = os.open(p.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
        finally:
            os.close(fd)
        return _password(p, False)
    except OSError as e:
        raise EmbeddedRedisError(f"cannot read {p.password_file}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise EmbeddedRedisError(f"{p.password_file} is not a 0600 file of yours: remove it")
        text = os.read(fd, 256).decode().strip()
    finally:
        os.close(fd)
    if not text:
        raise EmbeddedRedisError(f"{p.password_file} is empty: remove it")
    return text


def _auth_url(p: EmbeddedPaths, password: str) -> str:
    return f"unix://:{password}@{p.socket}"


def paths() -> EmbeddedPaths:
    return EmbeddedPaths(statedir.state_dir() / "redis")


def _client(p: EmbeddedPaths, password: str | None, timeout: float = 2) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(p.socket), password=password, socket_timeout=timeout)


def _ping(p: EmbeddedPaths, password: str | None = None) -> bool:
    """Whether OUR server answers: the socket answers with our password, and runs with AOF.
    A server that refuses our password (a foreign one, or one started before passwords) is
    ``EmbeddedRedisError``: never talked to, never replaced."""
    if not p.socket.exists():
        return False
    try:
        client = _client(p, password)
        try:
            client.ping()
            aof = client.info("persistence").get("aof_enabled")
        finally:
            client.close()
    except redis.AuthenticationError:
        raise EmbeddedRedisError(
            f"the redis-server on {p.socket} does not accept this user's password: it is not the "
            "one guardrails started for you; not using it and not starting another (stop it, "
            "e.g. `redis-cli -s <socket> shutdown` if it is an older guardrails server of yours)"
        ) from None
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "AUTH" in str(e):
            raise EmbeddedRedisError(f"the redis-server on {p.socket} refuses this user's "
                                     "password: not the one guardrails started; not using it") from None
        return False
    except (redis.RedisError, OSError):
        return False
    if str(aof) != "1":
        raise EmbeddedRedisError(f"the redis-server on {p.socket} runs without AOF: the fencing "
                                 "counter would not survive a restart; not using it")
    return True


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
    p = _checked_paths(create=True)
    password = _password(p, create=True)
    assert password is not None
    try:
        lock_fd = statedir.open_lock(p.lockfile)
    except statedir.StateDirError as e:
        raise EmbeddedRedisError(str(e)) from None
    with os.fdopen(lock_fd, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ping(p, password):
            return _auth_url(p, password)
        pid = _server_pid(p)
        if pid is not None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _server_pid(p) == pid:
                if _ping(p, password):
                    return _auth_url(p, password)
                time.sleep(0.1)
            if _server_pid(p) == pid:
                raise EmbeddedRedisError(
                    f"embedded redis (pid {pid}) is running but did not answer on {p.socket} "
                    f"within {timeout:.0f}s; not starting a second server (log: {p.logfile})"
                )
        p.socket.unlink(missing_ok=True)
        # Everything in a 0600 config file, nothing secret in argv (every user reads argv).
        conf = server.server_config(
            data_dir=p.root, port=0, unixsocket=p.socket, aof=True, fsync="always",
            logfile=p.logfile, pidfile=p.pidfile, daemonize=True, password=password)
        try:
            binary = server.find_redis_server()
            server.write_config(p.config_file, conf)
            server.start_daemonized(binary, p.config_file, timeout=timeout)
        except (server.RedisServerError, OSError) as e:
            raise EmbeddedRedisError(f"{e} (log: {p.logfile})") from None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ping(p, password):
                return _auth_url(p, password)
            time.sleep(0.02)
        raise EmbeddedRedisError(f"embedded redis did not answer on {p.socket} (log: {p.logfile})")


def running_url() -> str | None:
    """The (authenticated) URL of this user's embedded server if it answers; never starts
    one. ``EmbeddedRedisError`` when the directories are unsafe or a foreign server answers."""
    p = paths()
    if not statedir.state_dir().exists():
        return None
    p = _checked_paths(create=False) if p.root.exists() else p
    if not p.root.exists():
        return None
    password = _password(p, create=False)
    if password is None:
        return None
    return _auth_url(p, password) if _ping(p, password) else None


def status() -> dict[str, object]:
    """What the operator sees in ``guardrails redis status``."""
    p = paths()
    password = _password(_checked_paths(create=False), create=False) if p.root.exists() else None
    running = password is not None and _ping(p, password)
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
        client = _client(p, password, timeout=1)
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
    password = _password(_checked_paths(create=False), create=False) if p.root.exists() else None
    if password is None or not _ping(p, password):
        return False
    client = _client(p, password)
    try:
        client.shutdown()
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits: that is success
    finally:
        client.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _ping(p, password):
            return True
        time.sleep(0.05)
    raise EmbeddedRedisError(f"embedded redis at {p.socket} did not stop within {timeout}s")
