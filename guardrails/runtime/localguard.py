"""Local single-instance guard: a second copy of an account on this host is refused early.

A convenience in front of the Redis lease (which stays the authority). The guard is
keyed by the **account identity alone** — the protected resource — and by nothing else:
not ``$HOME``, not the user, not the working directory, and not the Redis a copy was
pointed at (one wallet is one resource even when two configs name two Redis servers).

Rule: a plain copy is refused while ANY copy of the account runs on the host; a copy
started with ``--standby`` (the deliberate flag) is always let in. It holds on after it
takes the lease over, so a plain copy started beside it later is still refused.

How, per lock directory, with two files named ``acct-<sha256(account)[:16]>``:

- ``.lock`` (presence): every running copy holds a *shared* ``flock`` on it for its life.
- ``.admit`` (admission): held *exclusively*, briefly, while a copy decides. A plain copy
  takes the presence file exclusively with ``LOCK_NB`` — which succeeds only if no other
  copy holds it at all — then downgrades to shared; a standby takes it shared at once.
  Every decision happens under the admission lock, so the downgrade (not atomic in the
  kernel) cannot interleave with another copy's decision.

The kernel drops an ``flock`` when its process dies (even by SIGKILL), so nothing stale
ever blocks a restart, and nothing is ever written into a lock file.

Lock directories: EVERY usable one of ``/run/guardrails`` and ``/tmp/guardrails-locks``,
created mode 1777 (shared by every user of the host; sticky, so none can delete or
replace another's files); at least one of them must be usable. A copy that can only use
``/tmp`` still meets one that also uses ``/run``. Never under ``HOME``. An explicit
``lock_dir`` (``[runtime] lock_dir``) or ``$GUARDRAILS_LOCK_DIR`` is taken IN ADDITION,
first, never instead: a copy started with its own lock directory still meets every
other copy of the account in the default ones, so one instance per account per host
holds whatever lock directory each copy names.

The one exception is deliberate and for tests only: with ``$GUARDRAILS_LOCK_DIR`` set and
``$GUARDRAILS_LOCK_DIR_ISOLATED=1`` (``ISOLATED_ENV``), that directory alone is used. A
test suite, a bench or the chaos harness sets it so that its copies never meet the host's
real ones (or another run's); it gives up one instance per account per host, so never
set it where real bots run. Nothing in a config file can ask for it.

Hostile local users (the directories are shared): a directory is used only if it is a
real directory (not a symlink), owned by root or by us, and — when others may write in
it — sticky. Files are opened with ``O_NOFOLLOW`` and checked with ``fstat`` (a regular
file with one link), created with ``O_EXCL``, never truncated, written or chmod-ed
unless we just created them. Anything else is refused with ``LocalGuardError`` (the CLI
exits 2) naming the path and what is wrong. Who holds a lock is read from the kernel
(``/proc/locks``, ``/proc/<pid>``: pid, owner, process name, start time), never from a
file another user could write; where the kernel cannot tell, the refusal says so.

What this does NOT guarantee: anything across hosts, or between containers (or systemd
units with ``PrivateTmp``) that share neither ``/run`` nor ``/tmp``; protection against
root; a hostile user holding the account's lock file in a shared directory can keep
plain copies out (the refusal names that user's process) but cannot make guardrails
write anything or crash. Those are the lease's and the operator's job.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import pwd
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from guardrails.keys import AccountId

LOCK_DIR_ENV = "GUARDRAILS_LOCK_DIR"
ISOLATED_ENV = "GUARDRAILS_LOCK_DIR_ISOLATED"
"""Test-only: ``1`` makes ``$GUARDRAILS_LOCK_DIR`` replace the default lock directories
instead of adding to them (see the module doc). Gives up the host-wide guard."""
RUN_DIR = Path("/run/guardrails")
TMP_DIR = Path("/tmp/guardrails-locks")
DIR_MODE = 0o1777
"""Shared lock directories: every user may create lock files; sticky, so none may
delete or replace another's."""
FILE_MODE = 0o644
"""Lock files: any user may open (and so flock) another user's lock file; only its
creator could write it, and nobody does."""
EXPLICIT_DIR_MODE = 0o755
"""An explicit ``lock_dir`` that does not exist yet is created with this mode."""
ADMIT_WAIT_S = 10.0
"""How long a copy waits for another copy's admission decision (milliseconds in
practice) before it refuses, naming the process that holds the admission lock."""
PROC = Path("/proc")


class LocalGuardError(RuntimeError):
    """The lock directory or file is unsafe or unusable: refused, not a second copy."""


@dataclass(frozen=True)
class Holder:
    """A process holding a lock, as the kernel reports it (nothing here is read from a
    file another user could write)."""

    pid: int
    uid: int | None = None
    name: str = ""
    started_at: str = ""

    @property
    def user(self) -> str:
        if self.uid is None:
            return "unknown user"
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return f"uid {self.uid}"

    def __str__(self) -> str:
        if self.uid is None:
            return f"pid {self.pid} (no longer visible: the lock passed to a child process)"
        name = f", process {self.name!r}" if self.name else ""
        started = f", started {self.started_at}" if self.started_at else ""
        return f"pid {self.pid} (user {self.user}{name}{started})"


class AlreadyRunning(Exception):
    """Another copy of this account runs on this host (and this one is not a standby)."""

    def __init__(self, holders: list[Holder] | None, path: Path, account: str = "") -> None:
        self.holders = holders
        """Every process holding the account's lock, or None if the kernel's lock table
        cannot be read here (then nothing about the holder is verified)."""
        self.path = path
        self.account = account
        super().__init__(str(self))

    @property
    def pid(self) -> int | None:
        """The first holder's pid (None if unknown)."""
        return self.holders[0].pid if self.holders else None

    @property
    def started_at(self) -> str:
        return self.holders[0].started_at if self.holders else ""

    def __str__(self) -> str:
        what = f" for account {self.account}" if self.account else ""
        if self.holders:
            who = "; ".join(str(h) for h in self.holders)
        else:
            who = "held by a process this host cannot identify (holder unverified)"
        return f"already running{what} on this host: {who} (lock {self.path})"


@dataclass
class LocalLock:
    """A held guard: shared holds on the account's lock file in each directory.
    ``release()`` (or process exit) frees it."""

    account: str
    standby: bool
    paths: list[Path] = field(default_factory=list)
    """The lock file in each directory, the primary first."""
    fds: list[int] = field(default_factory=list)

    @property
    def path(self) -> Path:
        """The primary lock file (first directory)."""
        return self.paths[0]

    @property
    def held(self) -> bool:
        return bool(self.fds)

    def release(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> LocalLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# -- who holds a lock (from the kernel) ---------------------------------------------------


def _boot_time() -> float | None:
    try:
        for line in (PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _describe_pid(pid: int) -> Holder:
    """Owner, name and start time of ``pid`` from ``/proc`` (kernel facts; the name is
    the process's own ``comm``). Never its command line: that may carry secrets."""
    try:
        uid = os.stat(PROC / str(pid)).st_uid
    except OSError:
        return Holder(pid)
    name = ""
    started = ""
    try:
        name = (PROC / str(pid) / "comm").read_text(errors="replace").strip()
    except OSError:
        pass
    try:
        stat_text = (PROC / str(pid) / "stat").read_text()
        fields = stat_text[stat_text.rindex(")") + 2:].split()
        boot = _boot_time()
        if boot is not None:
            epoch = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OSError, ValueError, IndexError):
        pass
    return Holder(pid, uid, name, started)


def holders(fd: int) -> list[Holder] | None:
    """Every process holding an ``flock`` on the file open at ``fd``, from
    ``/proc/locks``; None where that table cannot be read (not Linux)."""
    st = os.fstat(fd)
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        table = (PROC / "locks").read_text()
    except OSError:
        return None
    by_dev: list[int] = []
    by_inode: list[int] = []
    for line in table.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; "1: -> FLOCK ..." waits.
        if len(parts) < 6 or parts[1] != "FLOCK" or not parts[4].isdigit():
            continue
        pid, where = int(parts[4]), parts[5]
        if where == exact:
            by_dev.append(pid)
        elif where.rsplit(":", 1)[-1] == str(st.st_ino):
            by_inode.append(pid)  # overlay filesystems report the lower device
    pids = by_dev or by_inode
    return [_describe_pid(pid) for pid in dict.fromkeys(pids) if pid != 0]


# -- lock directories and files ---------------------------------------------------------


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _owner(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _open_dir(path: Path, *, shared: bool) -> int | None:
    """An ``O_DIRECTORY`` descriptor of a checked lock directory (created if missing);
    None for a default directory this user cannot create or write (skipped)."""
    created = False
    try:
        if not shared:
            path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, DIR_MODE if shared else EXPLICIT_DIR_MODE)
        created = True
    except FileExistsError:
        pass
    except OSError as e:
        if shared:
            return None  # e.g. /run is root's: use the other directory
        raise LocalGuardError(f"lock directory {path} cannot be created: {e.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        try:
            kind = _kind(os.lstat(path).st_mode)
        except OSError:
            kind = e.strerror or "unusable"
        raise LocalGuardError(
            f"lock directory {path} is {kind}, not a directory: refusing to use it "
            f"(remove it, or set {LOCK_DIR_ENV} / [runtime] lock_dir to a directory of yours)"
        ) from None
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid not in (0, me):
            raise LocalGuardError(
                f"lock directory {path} is owned by {_owner(st.st_uid)}, not by root or by "
                f"you: refusing to use it (another user could swap its lock files; remove it, "
                f"or set {LOCK_DIR_ENV} / [runtime] lock_dir to a directory of yours)"
            )
        want = DIR_MODE if shared else EXPLICIT_DIR_MODE if created else None
        if st.st_uid == me and want is not None and stat.S_IMODE(st.st_mode) != want:
            os.fchmod(fd, want)  # ours: the intended mode whatever the umask
            st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise LocalGuardError(
                f"lock directory {path} is writable by other users (mode {mode:04o}) and not "
                f"sticky: another user could replace its lock files; refusing to use it "
                f"(chmod +t or chmod go-w it)"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            if shared:
                os.close(fd)
                return None
            raise LocalGuardError(f"lock directory {path} is not writable by this user")
    except BaseException:
        with _suppress_os_error():
            os.close(fd)
        raise
    return fd


@contextmanager
def _suppress_os_error() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def _open_lock_file(dfd: int, directory: Path, name: str) -> int:
    """A read-only descriptor of the lock file ``directory/name`` (created mode 0644 if
    missing), checked to be a regular file with one link. Never follows a symlink, never
    blocks on a FIFO, never changes a file it did not just create."""
    path = directory / name
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    for _ in range(10):
        created = False
        try:
            fd = os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=dfd)
            except FileExistsError:
                continue  # created by another copy meanwhile: open it
            except OSError as e:
                raise LocalGuardError(f"cannot create lock file {path}: {e.strerror}") from None
            created = True
        except OSError as e:
            try:
                st = os.lstat(path)
            except OSError:
                raise LocalGuardError(f"cannot open lock file {path}: {e.strerror}") from None
            if e.errno == errno.ELOOP or stat.S_ISLNK(st.st_mode):
                raise LocalGuardError(
                    f"lock file {path} is a symlink (owner {_owner(st.st_uid)}): refusing to "
                    "follow it; remove it (someone may be trying to make guardrails write "
                    "another file)"
                ) from None
            raise LocalGuardError(
                f"cannot open lock file {path} (owner {_owner(st.st_uid)}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}): {e.strerror}; remove it"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LocalGuardError(
                    f"lock file {path} is {_kind(st.st_mode)} (owner {_owner(st.st_uid)}), "
                    "not a regular file: refusing to use it; remove it"
                )
            if st.st_nlink != 1:
                raise LocalGuardError(
                    f"lock file {path} has {st.st_nlink} hard links (owner "
                    f"{_owner(st.st_uid)}): refusing to use it; remove it"
                )
            if created:
                os.fchmod(fd, FILE_MODE)  # ours, just made: whatever the umask
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise LocalGuardError(f"cannot open lock file {path}: it keeps appearing and vanishing")


def _flock_within(fd: int, op: int, deadline: float) -> bool:
    """``flock(fd, op)``, retried without blocking until ``deadline`` (monotonic)."""
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _who(fd: int) -> str:
    found = holders(fd)
    if found is None:
        return "a process this host cannot identify (unverified)"
    return "; ".join(str(h) for h in found) or "a process that has since exited"


def _enter(dfd: int, directory: Path, stem: str, account: AccountId, standby: bool) -> int:
    """Join the account's presence lock in one directory (see the module doc)."""
    admit = _open_lock_file(dfd, directory, stem + ".admit")
    try:
        deadline = time.monotonic() + ADMIT_WAIT_S
        if not _flock_within(admit, fcntl.LOCK_EX, deadline):
            raise LocalGuardError(
                f"lock {directory / (stem + '.admit')} has been held for {ADMIT_WAIT_S:.0f}s "
                f"by {_who(admit)}: not a guardrails copy deciding; stop that process or "
                "remove the file"
            )
        path = directory / (stem + ".lock")
        fd = _open_lock_file(dfd, directory, stem + ".lock")
        try:
            if not standby:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise AlreadyRunning(holders(fd), path, str(account)) from None
            # A standby's hold, or the plain copy's downgrade. Only a process outside
            # this protocol can hold it exclusively now: wait a little, then name it.
            if not _flock_within(fd, fcntl.LOCK_SH, deadline):
                raise LocalGuardError(
                    f"lock {path} is held exclusively by {_who(fd)}, which is not a "
                    "guardrails copy; stop that process or remove the file"
                )
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(admit)  # drops the admission lock


def isolated() -> bool:
    """Whether the test-only switch is on: ``$GUARDRAILS_LOCK_DIR`` set and
    ``$GUARDRAILS_LOCK_DIR_ISOLATED=1``."""
    return bool(os.environ.get(LOCK_DIR_ENV)) and os.environ.get(ISOLATED_ENV) == "1"


def _directories(explicit: str | os.PathLike[str] | None) -> list[tuple[Path, bool]]:
    """The explicit directories first (``lock_dir``, ``$GUARDRAILS_LOCK_DIR``), then the
    defaults — unless ``isolated()``, when ``$GUARDRAILS_LOCK_DIR`` (or ``lock_dir``, when
    both are given) stands alone."""
    chosen = [Path(d) for d in (explicit, os.environ.get(LOCK_DIR_ENV)) if d]
    if isolated():
        return [(chosen[0], False)]
    out: list[tuple[Path, bool]] = []
    for d in chosen:
        if d not in (RUN_DIR, TMP_DIR) and all(d != seen for seen, _ in out):
            out.append((d, False))
    return [*out, (RUN_DIR, True), (TMP_DIR, True)]


@contextmanager
def _opened_dirs(explicit: str | os.PathLike[str] | None) -> Iterator[list[tuple[Path, int]]]:
    opened: list[tuple[Path, int]] = []
    try:
        defaults = 0
        for path, shared in _directories(explicit):
            fd = _open_dir(path, shared=shared)
            if fd is not None:
                opened.append((path, fd))
                defaults += shared
        if not opened or (not defaults and not isolated()):
            # an explicit directory alone would not meet the copies in the default ones
            raise LocalGuardError(f"neither {RUN_DIR} nor {TMP_DIR} can be created or written")
        yield opened
    finally:
        for _, fd in opened:
            os.close(fd)


def lock_dirs(explicit: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every directory the guard is taken in (see the module doc), each checked."""
    with _opened_dirs(explicit) as opened:
        return [path for path, _ in opened]


def lock_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The first (primary) lock directory."""
    return lock_dirs(explicit)[0]


def lock_stem(account: AccountId) -> str:
    """``acct-<sha256(account)[:16]>``: the account alone — no Redis, HOME, user or cwd."""
    return "acct-" + hashlib.sha256(str(account).encode()).hexdigest()[:16]


def lock_path(account: AccountId, *, directory: str | os.PathLike[str] | None = None) -> Path:
    """The primary (presence) lock file of ``account``."""
    return lock_dir(directory) / (lock_stem(account) + ".lock")


def acquire(
    account: AccountId,
    *,
    standby: bool,
    lock_dir: str | os.PathLike[str] | None = None,
) -> LocalLock:
    """Join the host-wide guard for ``account`` (whatever Redis this copy uses).

    ``lock_dir`` is taken in addition to the default directories, never instead (see
    the module doc). Returns the held ``LocalLock``. A plain copy (``standby=False``) raises
    ``AlreadyRunning``, naming every holder the kernel reports, while any other copy of
    the account holds the guard in any lock directory; a standby is let in beside them
    (and, by holding on, keeps later plain copies out after it took over). An unsafe or
    unusable lock directory or file raises ``LocalGuardError``.
    """
    stem = lock_stem(account)
    lock = LocalLock(str(account), standby)
    try:
        with _opened_dirs(lock_dir) as opened:
            for directory, dfd in opened:
                fd = _enter(dfd, directory, stem, account, standby)
                lock.paths.append(directory / (stem + ".lock"))
                lock.fds.append(fd)
    except BaseException:
        lock.release()
        raise
    return lock
