"""Local single-instance guard: a second copy on the same host is refused early, by name.

A convenience in front of the Redis lease (which stays the authority): an ``flock`` on
``<lock_dir>/<sha256(account|normalised redis target)[:16]>.lock``. The path derives
from the *protected resource* — the account identity and the Redis it is guarded in —
and from nothing else: not ``$HOME``, not the user, not the working directory or the
strategy file. So two supervisors with different ``HOME`` directories, or run by two
users, still collide here, and a copy against a *different* Redis (a separate world)
does not.

The Redis target is normalised first (``normalise_redis_target``), so one server is one
name however its URL is typed: ``redis://127.0.0.1:6379``, ``redis://localhost/0`` and
``redis://:secret@[::1]:6379/0`` are the same target; a unix socket is named by its
real path.

Lock directories: ``$GUARDRAILS_LOCK_DIR`` (or an explicit ``lock_dir``) alone when
given; otherwise the guard is taken in EVERY usable one of ``/run/guardrails`` and
``/tmp/guardrails-locks`` — both created mode 1777 (shared by every user of the host),
with lock files mode 0666 so another user can open and flock them. Taking both means a
copy that can only use ``/tmp`` (an unprivileged user before root ever created
``/run/guardrails``) still meets a copy that also uses ``/run``. Never under ``HOME``.

The holder writes its pid, start time and account into the file, so the refusal names
who holds it. The kernel drops an flock when its process dies (even by SIGKILL), so a
stale file never blocks a restart.

What this does NOT guarantee: anything across hosts, or between containers (or systemd
units with ``PrivateTmp``) that share neither ``/run`` nor ``/tmp``; a hostname whose DNS
answer changes between two starts. Those are the lease's job. Two users on
``url = "embedded"`` use two different (per-user) Redis servers: two lease domains, and
so — correctly — two different lock names (docs/operations.md).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from guardrails.keys import AccountId

LOCK_DIR_ENV = "GUARDRAILS_LOCK_DIR"
RUN_DIR = Path("/run/guardrails")
TMP_DIR = Path("/tmp/guardrails-locks")
DIR_MODE = 0o1777
"""Shared lock directories: every user may create lock files; sticky, so none may
delete another's."""
FILE_MODE = 0o666
"""Lock files: any user may open (and so flock and describe) another user's lock."""
DEFAULT_PORT = 6379
LOCAL_HOST = "localhost"
"""Canonical name of every address of this host (loopback or a local interface)."""


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
    """A held guard; ``release()`` (or process exit) frees it.

    ``path``/``fd`` are the first (primary) lock; ``extra`` holds the locks taken in the
    other shared directories."""

    path: Path
    fd: int | None
    extra: list[tuple[Path, int]] = field(default_factory=list)

    def release(self) -> None:
        held = [fd for _, fd in self.extra]
        if self.fd is not None:
            held.insert(0, self.fd)
        for fd in held:
            try:
                os.ftruncate(fd, 0)  # no stale holder details once released
            except OSError:
                pass
            os.close(fd)  # closing the descriptor drops the flock
        self.fd = None
        self.extra = []

    def __enter__(self) -> LocalLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- the Redis target -----------------------------------------------------------------


def _is_local_address(addr: str) -> bool:
    """True for a loopback address or one of this host's own (bindable) addresses."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))  # only an address of this host can be bound
        return True
    except OSError:
        return False


def _canonical_ip(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOCAL_HOST if _is_local_address(str(ip)) else str(ip)


def _canonical_host(host: str) -> str:
    """One name per server host: every address of this host is ``localhost``; an IP is
    in its compressed form; a DNS name is replaced by the sorted addresses it resolves
    to (or kept, lower-cased, when it does not resolve)."""
    host = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    if not host or host == LOCAL_HOST or host.endswith(".localhost"):
        return LOCAL_HOST
    try:
        return _canonical_ip(host.split("%", 1)[0])
    except ValueError:
        pass  # a name, not an address literal
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return host
    addrs = sorted({_canonical_ip(str(info[4][0]).split("%", 1)[0]) for info in infos})
    if LOCAL_HOST in addrs:
        return LOCAL_HOST
    return ",".join(addrs) or host


def _db(text: str | None, where: str) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise ValueError(f"redis target {where!r}: database {text!r} is not a number")
    return int(text)


def normalise_redis_target(url: str) -> str:
    """The one name of the Redis keyspace ``url`` reaches, for the lock name.

    ``redis://`` and ``rediss://`` become ``redis://<host>:<port>/<db>`` with the host
    canonical (see ``_canonical_host``: ``localhost``, ``127.0.0.1``, ``::1`` and this
    host's own addresses are all ``localhost``), the port defaulting to 6379 and the db
    to 0; ``unix://`` (or ``unix:``) becomes ``unix://<real path of the socket>?db=<db>``.
    Credentials are dropped. An unrecognised scheme is returned stripped, as typed.
    """
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    if scheme in ("redis", "rediss"):
        path_db = unquote(parts.path).strip("/")
        db = _db(path_db or (query.get("db") or [""])[0], url)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"redis target {url!r}: bad port") from None
        return f"redis://{_canonical_host(parts.hostname or '')}:{port}/{db}"
    if scheme == "unix":
        path = unquote(parts.path or parts.netloc)
        db = _db((query.get("db") or [""])[0], url)
        return f"unix://{os.path.realpath(path)}?db={db}"
    return text


# -- lock directories and files ---------------------------------------------------------


def _usable(directory: Path, mode: int) -> bool:
    try:
        if not directory.exists():
            old = os.umask(0)
            try:
                directory.mkdir(parents=True, exist_ok=True)
            finally:
                os.umask(old)
        if mode and directory.stat().st_uid == os.getuid():
            os.chmod(directory, mode)
    except OSError:
        return False
    return os.access(directory, os.W_OK | os.X_OK)


def lock_dirs(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every directory the guard is taken in (see the module doc for the rule)."""
    chosen = explicit or os.environ.get(LOCK_DIR_ENV)
    if chosen:
        path = Path(chosen)
        if not _usable(path, 0):
            raise LocalGuardError(f"lock directory {path} cannot be created or written")
        return [path]
    dirs = [d for d in (RUN_DIR, TMP_DIR) if _usable(d, DIR_MODE)]
    if not dirs:
        raise LocalGuardError(f"neither {RUN_DIR} nor {TMP_DIR} can be created or written")
    return dirs


def lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The first (primary) lock directory."""
    return lock_dirs(explicit)[0]


def lock_name(account: AccountId, redis_target: str) -> str:
    """``<sha256(account|normalised target)[:16]>.lock``: no HOME, user, pid or cwd."""
    target = normalise_redis_target(redis_target)
    return hashlib.sha256(f"{account}|{target}".encode()).hexdigest()[:16] + ".lock"


def lock_path(
    account: AccountId, redis_target: str, *, directory: str | os.PathLike[str] | None = None
) -> Path:
    """The primary lock file of ``account`` guarded in ``redis_target``."""
    return lock_dir(directory) / lock_name(account, redis_target)


def _open_lock_file(path: Path) -> tuple[int, bool]:
    """Open (creating if needed, mode 0666) ``path``; returns (fd, writable).

    Never opens an existing file with ``O_CREAT``: with ``fs.protected_regular`` the
    kernel refuses that for another user's file in a sticky directory."""
    for _ in range(10):
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC), True
        except FileNotFoundError:
            pass
        except PermissionError:
            # A lock file another user made before files were shared (mode 0644): a
            # read-only descriptor can still take (or test) the flock.
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            continue  # created by another copy meanwhile: open it
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        return fd, True
    raise LocalGuardError(f"cannot open lock file {path}: it keeps appearing and vanishing")


def _read_holder(fd: int) -> dict[str, str]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    holder = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            holder[key.strip()] = value.strip()
    return holder


def _lock_one(path: Path, account: AccountId) -> tuple[int, bool] | AlreadyRunning:
    """Lock ``path``: (fd, writable), or the refusal naming its holder."""
    try:
        fd, writable = _open_lock_file(path)
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
        pid_text = holder.get("pid", "")
        return AlreadyRunning(
            int(pid_text) if pid_text.isdigit() else None,
            holder.get("started_at", "at an unknown time"),
            path,
            holder.get("account", str(account)),
        )
    if writable and os.fstat(fd).st_uid == os.getuid():
        os.fchmod(fd, FILE_MODE)  # a file left by an older version, still 0644
    return fd, writable


def acquire(
    account: AccountId,
    redis_target: str,
    *,
    standby: bool,
    lock_dir: str | os.PathLike[str] | None = None,
) -> LocalLock | None:
    """Take the host-wide guard for ``account`` at ``redis_target`` (any spelling).

    Returns the held ``LocalLock``. If another process holds it (in any of the lock
    directories): raises ``AlreadyRunning`` naming its pid and start time, or — with
    ``standby=True``, the deliberate flag — returns None (this copy runs on as a
    standby, holding no guard).
    """
    name = lock_name(account, redis_target)
    taken: list[tuple[Path, int, bool]] = []
    for directory in lock_dirs(lock_dir):
        path = directory / name
        try:
            outcome = _lock_one(path, account)
        except LocalGuardError:
            LocalLock(path, None, [(p, fd) for p, fd, _ in taken]).release()
            raise
        if isinstance(outcome, AlreadyRunning):
            for _, fd, _ in taken:
                os.close(fd)  # ours, just taken: nothing written yet
            if standby:
                return None
            raise outcome from None
        taken.append((path, *outcome))
    started = time.time()
    details = (
        f"pid={os.getpid()}\n"
        f"started_at={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}\n"
        f"started_at_ms={int(started * 1000)}\n"
        f"account={account}\n"
        f"redis={normalise_redis_target(redis_target)}\n"
    )
    for _, fd, writable in taken:
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, details.encode(), 0)
    (path, fd, _), rest = taken[0], taken[1:]
    return LocalLock(path, fd, [(p, f) for p, f, _ in rest])
