"""The per-user state directory, and the only way guardrails reads and writes in it.

Invariant upheld: *nothing another local user planted is trusted or written through*.
The state directory is in a shared place (``/var/tmp/guardrails-<uid>``), so another
user may create it first, or plant files and symlinks in it, hoping a guardrails process
reads their fence memory or market, or writes through a symlink into a file of theirs
choosing (as root: any file). Every user of the state directory goes through here:

- ``private_dir(path)``: ``path`` and, when it is inside the state directory, every
  directory from the state directory down to it, each created mode 0700 if missing and
  each required to be a real directory (not a symlink) owned by this user with no group
  or other access. Anything else is ``StateDirError`` naming the directory and what is
  wrong; nothing in it is used.
- ``read_private(path)``: an existing file opened with ``O_NOFOLLOW`` (never blocking on
  a FIFO) and used only if ``fstat`` shows a regular file owned by this user that no one
  else may write (``open_read``: the same check, a descriptor to read it in pieces).
- ``write_private(path, data)``: a fresh 0600 temporary file (``mkstemp``: ``O_CREAT |
  O_EXCL | O_NOFOLLOW``, an unpredictable name) in the checked directory, fsynced, then
  renamed over ``path`` (a rename replaces the name, never writes through a link).
- ``open_lock(path)`` / ``open_append(path)``: a lock file or a log opened (created 0600)
  with ``O_NOFOLLOW`` and checked like ``read_private``.
- ``HostMemory``: one small JSON document this host keeps about an account's history in
  one Redis (the fence's highest token, the newest kill-switch latch), read and written
  by the rules above.

The directory derives from the user id, never from ``$HOME``: two supervisors with
different ``HOME`` must share one embedded Redis and one fence memory.
``$GUARDRAILS_STATE_DIR`` overrides it (tests use this).

Not guaranteed: protection against root, or against this same user.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from guardrails import logs

STATE_DIR_ENV = "GUARDRAILS_STATE_DIR"

log = logging.getLogger("guardrails.statedir")


class StateDirError(RuntimeError):
    """A directory or file in the state directory is not this user's private one: refused
    (fail closed), never used or written through."""


def state_dir() -> Path:
    """``$GUARDRAILS_STATE_DIR`` or ``/var/tmp/guardrails-<uid>`` (survives reboots, not
    HOME). The path only: use ``private_dir`` before anything in it."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        return Path(env)
    return Path(f"/var/tmp/guardrails-{os.getuid()}")


def _refuse(path: Path, problem: str) -> StateDirError:
    return StateDirError(
        f"{path} is {problem}: refusing to use it (another local user could plant or read "
        f"what guardrails keeps there: its fence memory, its embedded Redis, its "
        f"simulator). Remove it, or chmod 700 it if it is yours, or set {STATE_DIR_ENV} to "
        "a directory of yours with mode 0700"
    )


def _check_dir(path: Path, create: bool) -> None:
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise StateDirError(f"cannot create {path}: {e.strerror}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StateDirError(f"{path} does not exist") from None
    except OSError as e:
        raise StateDirError(f"cannot inspect {path}: {e.strerror}") from None
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise _refuse(path, f"a symlink (owner uid {st.st_uid})")
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, "not a directory")
    if st.st_uid != me:
        raise _refuse(path, f"owned by uid {st.st_uid}, not by you (uid {me})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise _refuse(path, f"mode {stat.S_IMODE(st.st_mode):04o}, open to other users "
                            "(must be 0700)")


def private_dir(path: Path | None = None, *, create: bool = True) -> Path:
    """``path`` (default: the state directory itself), checked as the module doc says,
    with every directory between the state directory and it; returned. ``create``: make
    what is missing (mode 0700; the state directory's own parent as ``mkdir -p``).
    ``StateDirError`` naming the first directory that is not this user's private one."""
    root = state_dir()
    path = root if path is None else path
    try:
        below = path.relative_to(root).parts
        chain = [root]
        for part in below:
            chain.append(chain[-1] / part)
    except ValueError:
        chain = [path]  # outside the state directory (a configured path): the leaf only
    if create:
        try:
            chain[0].parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StateDirError(f"cannot create {chain[0].parent}: {e.strerror}") from None
    for d in chain:
        _check_dir(d, create)
    return path


def _check_file(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    me = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise StateDirError(f"{path} is not a regular file (owner uid {st.st_uid}): refusing "
                            "to use it; remove it")
    if st.st_uid != me:
        raise StateDirError(f"{path} is owned by uid {st.st_uid}, not by you (uid {me}): "
                            "refusing to trust it (another user may have planted it); remove it")
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise StateDirError(f"{path} is writable by other users (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}): refusing to trust it; remove it")


def _open_checked(path: Path, flags: int, mode: int = 0o600) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                     mode)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StateDirError(f"{path} is a symlink: refusing to follow it (someone may be "
                                "trying to make guardrails read or write another file); "
                                "remove it") from None
        raise StateDirError(f"cannot open {path}: {e.strerror}") from None
    try:
        _check_file(fd, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_read(path: Path) -> int:
    """A read-only descriptor of the existing file ``path`` (``FileNotFoundError`` if it
    does not exist), only if it is a regular file of this user that no one else may write;
    ``StateDirError`` otherwise. For a file too large to read whole (``read_private``)."""
    return _open_checked(path, os.O_RDONLY)


def read_private(path: Path) -> bytes | None:
    """The contents of ``path`` (None if it does not exist), only if it is a regular file
    of this user that no one else may write; ``StateDirError`` otherwise. Checks the
    file, not its directory: call ``private_dir`` first."""
    try:
        fd = open_read(path)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data`` (mode 0600), in its directory checked by
    ``private_dir``; ``StateDirError`` if that directory is not private, ``OSError`` if
    the write fails. Never opens an existing name: a planted file or symlink at ``path``
    or at any temporary name is replaced or avoided, never written through."""
    directory = private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_append(path: Path) -> int:
    """A write-only, appending descriptor of ``path`` (a log: created 0600 if missing),
    checked like ``read_private``. Call ``private_dir`` first."""
    return _open_checked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def open_lock(path: Path) -> int:
    """A read-write descriptor of the lock file ``path`` (created 0600 if missing) for
    ``flock``, checked like ``read_private``. Call ``private_dir`` first."""
    return _open_checked(path, os.O_RDWR | os.O_CREAT)


class HostMemory:
    """What this host's instances of an account saw of one Redis's history, kept beyond
    their lives in ``<state dir>/<kind>/<sha256(account|redis target)[:16]>.json`` (or
    under ``root``), so that a cold start after Redis lost writes still notices. Keyed by
    the Redis target too: another Redis is another history (a bench or a test server),
    not a loss.

    ``load_doc`` raises ``StateDirError`` when the state directory, ``<kind>/`` or the
    file is not this user's (a planted memory could make an instance raise an alarm, or
    forget what it saw) — fail closed, naming the path; our own file that does not parse
    as a JSON object is logged (``<kind>.memory_unreadable``) and read as none.
    ``save_doc`` writes a fresh 0600 file and renames it, and never raises: a directory
    refused since, or a failed write, is logged as ``<kind>.memory_unwritable`` (a memory
    that cannot be written is only less memory, never a reason to stop)."""

    def __init__(self, kind: str, account: str, redis_target: str,
                 root: Path | None = None) -> None:
        digest = hashlib.sha256(f"{account}|{redis_target}".encode()).hexdigest()[:16]
        self.path = (root or state_dir() / kind) / f"{digest}.json"
        self.kind = kind
        self.account = account

    def load_doc(self) -> dict[str, Any] | None:
        private_dir(self.path.parent)
        raw = read_private(self.path)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError(f"not a JSON object: {type(doc).__name__}")
        except ValueError as e:
            self.unreadable(e)
            return None
        return doc

    def save_doc(self, doc: dict[str, Any]) -> None:
        try:
            write_private(self.path, json.dumps({"account": self.account, **doc}).encode())
        except (OSError, StateDirError) as e:
            logs.event(log, f"{self.kind}.memory_unwritable", logging.WARNING,
                       path=str(self.path), error=f"{type(e).__name__}: {e}")

    def unreadable(self, e: BaseException) -> None:
        """Say that our own file does not hold what its reader expects (read as none)."""
        logs.event(log, f"{self.kind}.memory_unreadable", logging.WARNING, path=str(self.path),
                   error=f"{type(e).__name__}: {e}")
