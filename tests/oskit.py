"""Real OS users for tests about what another local user can do (the tests run as root).

``throwaway_user()`` creates a user with a unique name (``useradd``) and removes it
(``userdel -r``) afterwards, even when the test fails; ``as_user`` runs a command as that
user (``runuser -u USER --``) with a minimal environment — never the test's own, which
may name the victim's state and lock directories.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class OsUser:
    name: str
    uid: int
    gid: int


def require_root() -> None:
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        pytest.skip("needs root with useradd/runuser to create a second OS user")


@contextmanager
def throwaway_user(prefix: str = "grt") -> Iterator[OsUser]:
    """A fresh OS user (no home, no login shell), deleted on exit."""
    require_root()
    name = f"{prefix}{secrets.token_hex(4)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True, capture_output=True, timeout=60,
    )
    try:
        entry = pwd.getpwnam(name)
        yield OsUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True, timeout=60)


def as_user(
    user: OsUser,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
    cwd: str | os.PathLike[str] = "/",
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` to completion (text output captured)."""
    return subprocess.run(
        ["runuser", "-u", user.name, "--", *argv], capture_output=True, text=True,
        env=user_env(env), timeout=timeout, cwd=cwd,
    )


def popen_as_user(
    user: OsUser, argv: Sequence[str], *, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``argv`` as ``user`` (stdout piped, text)."""
    return subprocess.Popen(
        ["runuser", "-u", user.name, "--", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=user_env(env), cwd="/", start_new_session=True,
    )


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc``'s whole session (``runuser`` forks: the command is its child)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    # runuser is reaped, but its child may still be dying (SIGKILL is delivered
    # asynchronously) and hold its files and flocks: wait until no member of the session
    # is alive (a zombie has released everything already)
    deadline = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive and not a zombie (from /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for another user's process: PATH, this venv, nothing else."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/nonexistent",
    }
    env.update(extra or {})
    return env


SYSTEM_PYTHON = "/usr/bin/python3"


def python(code: str, *args: str) -> list[str]:
    """argv running stdlib-only ``code`` in the system interpreter (another user cannot
    execute this venv's: it lives under root's 0700 home), isolated from cwd and env."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"{SYSTEM_PYTHON} is needed to run code as another user")
    return [SYSTEM_PYTHON, "-I", "-c", code, *args]


def guardrails_as(user: OsUser, preload: Sequence[str], code: str, *args: str) -> list[str]:
    """argv (run it as root) that imports ``preload`` with this venv's interpreter, then
    drops to ``user`` for good (``setgroups``/``setgid``/``setuid``) before running
    ``code`` — so the code runs as that user with guardrails already importable."""
    imports = "".join(f"import {m}\n" for m in ("os", "sys", *preload))
    drop = (f"os.setgroups([])\nos.setgid({user.gid})\nos.setuid({user.uid})\n"
            f"assert os.geteuid() == {user.uid} and os.getuid() == {user.uid}\n")
    return [sys.executable, "-I", "-c", imports + drop + code, *args]


def run_dropped(
    user: OsUser, preload: Sequence[str], code: str, *args: str,
    env: dict[str, str] | None = None, timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """``guardrails_as`` to completion."""
    return subprocess.run(
        guardrails_as(user, preload, code, *args), capture_output=True, text=True,
        env=user_env(env), timeout=timeout, cwd="/",
    )


@contextmanager
def shared_sticky_dir(prefix: str) -> Iterator[Path]:
    """A fresh root-owned directory with mode 1777 under /tmp, like /tmp itself."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        os.chmod(base, 0o1777)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def attacker(user: OsUser, code: str, *args: str) -> None:
    """Run Python ``code`` as ``user`` (the other local user of a test); it must succeed:
    the attack is set up, and what it does to the victim is the test's to judge."""
    done = as_user(user, python(code, *args))
    assert done.returncode == 0, done.stderr
