"""Local single-instance guard: a second copy on the same host is refused early, by name.

A convenience in front of the Redis lease (which stays the authority): an ``flock`` on
``<lock_dir>/<sha256(account|redis_target)[:16]>.lock``. The path derives from the
*protected resource* — the account identity and the Redis it is guarded in — and from
nothing else: not ``$HOME``, not the user's shell, not the working directory or the
strategy file. So two supervisors with different ``HOME`` directories still collide
here, and a copy against a *different* Redis (a separate world) does not.

The lock directory is ``$GUARDRAILS_LOCK_DIR`` (or an explicit ``lock_dir``), else
``/run/guardrails`` if it can be created and written, else ``/tmp/guardrails-locks``
(mode 1777, shared by every user of the host) — never under ``HOME``.

The holder writes its pid, start time and account into the file, so the refusal names
who holds it. The kernel drops an flock when its process dies (even by SIGKILL), so a
stale file never blocks a restart.

What this does NOT guarantee: anything across hosts, containers with separate ``/tmp``
and ``/run``, or copies that reach the same Redis under different URLs (say, a hostname
and an IP address). Those are the lease's job.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from guardrails.keys import AccountId

LOCK_DIR_ENV = "GUARDRAILS_LOCK_DIR"
RUN_DIR = Path("/run/guardrails")
TMP_DIR = Path("/tmp/guardrails-locks")


class LocalGuardError(RuntimeError):
    """The lock file could not be created or opened at all (not a refusal)."""


class AlreadyRunning(Exception):
    """Another process on this host holds the guard for this account and Redis."""

    def __init__(self, pid: int | None, started_at: str, path: Path, account: str = "") -> None:
        self.pid = pid
        self.started_at = started_at
        self.path = path
        self.account = account
        super().__init__(str(self))

    def __str__(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        what = f" for account {self.account}" if self.account else ""
        return f"already running{what}: {who}, started {self.started_at} (lock {self.path})"


@dataclass
class LocalLock:
    """A held guard; ``release()`` (or process exit) frees it."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # no stale holder details once released
        except OSError:
            pass
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None

    def __enter__(self) -> LocalLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _usable(directory: Path, mode: int) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if mode and directory.stat().st_uid == os.getuid():
            os.chmod(directory, mode)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where lock files live (see the module doc for the order)."""
    chosen = explicit or os.environ.get(LOCK_DIR_ENV)
    if chosen:
        path = Path(chosen)
        if not _usable(path, 0):
            raise LocalGuardError(f"lock directory {path} cannot be created or written")
        return path
    if _usable(RUN_DIR, 0o755):
        return RUN_DIR
    if _usable(TMP_DIR, 0o1777):
        return TMP_DIR
    raise LocalGuardError(f"neither {RUN_DIR} nor {TMP_DIR} can be created or written")


def lock_path(
    account: AccountId, redis_target: str, *, directory: str | os.PathLike[str] | None = None
) -> Path:
    """The lock file of ``account`` guarded in ``redis_target`` (no HOME, no pid, no cwd)."""
    digest = hashlib.sha256(f"{account}|{redis_target}".encode()).hexdigest()[:16]
    return lock_dir(directory) / f"{digest}.lock"


def _read_holder(fd: int) -> dict[str, str]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    holder = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            holder[key.strip()] = value.strip()
    return holder


def acquire(
    account: AccountId,
    redis_target: str,
    *,
    standby: bool,
    lock_dir: str | os.PathLike[str] | None = None,
) -> LocalLock | None:
    """Take the host-wide guard for ``account`` at ``redis_target``.

    Returns the held ``LocalLock``. If another process holds it: raises
    ``AlreadyRunning`` naming its pid and start time, or — with ``standby=True``, the
    deliberate flag — returns None (this copy runs on as a standby, holding no guard).
    """
    path = lock_path(account, redis_target, directory=lock_dir)
    writable = True
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:
        # Another user's lock file in the shared directory: a read-only descriptor can
        # still take (or test) the flock; it just cannot record our details.
        writable = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LocalGuardError(f"cannot open lock file {path}: {e.strerror}") from None
    except OSError as e:
        raise LocalGuardError(f"cannot open lock file {path}: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise LocalGuardError(f"cannot lock {path}: {e.strerror}") from None
        # Held. The holder writes its details right after locking: give it a moment.
        holder: dict[str, str] = {}
        for _ in range(50):
            holder = _read_holder(fd)
            if "pid" in holder:
                break
            time.sleep(0.01)
        os.close(fd)
        if standby:
            return None
        pid_text = holder.get("pid", "")
        raise AlreadyRunning(
            int(pid_text) if pid_text.isdigit() else None,
            holder.get("started_at", "at an unknown time"),
            path,
            holder.get("account", str(account)),
        ) from None
    started = time.time()
    details = (
        f"pid={os.getpid()}\n"
        f"started_at={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}\n"
        f"started_at_ms={int(started * 1000)}\n"
        f"account={account}\n"
        f"redis={redis_target}\n"
    )
    if writable:
        os.ftruncate(fd, 0)
        os.pwrite(fd, details.encode(), 0)
    return LocalLock(path, fd)
