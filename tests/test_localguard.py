"""The local single-instance guard: a second copy is refused by name, whatever its HOME."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from guardrails import localguard
from guardrails.keys import AccountId
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, write_config

ACCOUNT = AccountId("paper", "guard-test")
TARGET = "redis://127.0.0.1:7777/0"

PROBE = """
import sys
from guardrails import localguard
from guardrails.keys import AccountId
try:
    lock = localguard.acquire(AccountId("paper", "guard-test"), sys.argv[1], standby=False)
except localguard.AlreadyRunning as e:
    print(e)
    sys.exit(2)
print("acquired", lock.path)
"""


def test_acquire_when_already_held_then_refused_naming_pid_and_start(tmp_path: Path) -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    try:
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, TARGET, standby=False)
    finally:
        first.release()

    refused = info.value
    assert refused.pid == os.getpid()
    assert refused.path == first.path
    assert f"pid {os.getpid()}" in str(refused)
    assert "started 20" in str(refused) and str(first.path) in str(refused)


def test_acquire_when_held_and_standby_then_returns_none() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    try:
        second = localguard.acquire(ACCOUNT, TARGET, standby=True)
    finally:
        assert first is not None
        first.release()

    assert second is None


def test_acquire_when_released_then_next_copy_acquires() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    first.release()

    again = localguard.acquire(ACCOUNT, TARGET, standby=False)

    assert again is not None
    again.release()


def test_acquire_when_other_account_or_other_redis_then_independent() -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    try:
        other_account = localguard.acquire(AccountId("paper", "other"), TARGET, standby=False)
        other_redis = localguard.acquire(ACCOUNT, "redis://10.0.0.2:6380/0", standby=False)
    finally:
        assert first is not None
        first.release()

    assert other_account is not None and other_redis is not None
    other_account.release()
    other_redis.release()


def test_acquire_when_second_copy_has_other_home_then_still_refused(tmp_path: Path) -> None:
    first = localguard.acquire(ACCOUNT, TARGET, standby=False)
    assert first is not None
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, TARGET],
            env=subprocess_env(HOME=str(other_home)),
            cwd=str(other_home),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        first.release()

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pid {os.getpid()}" in proc.stdout
    assert str(ROOT) not in str(first.path) and str(Path.home()) not in str(first.path)


def test_acquire_when_holder_process_killed_then_lock_free_again(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", PROBE + "import time; time.sleep(60)\n", TARGET],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("acquired")
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, TARGET, standby=False)
        assert info.value.pid == holder.pid
        holder.kill()
        holder.wait(timeout=10)

        after = localguard.acquire(ACCOUNT, TARGET, standby=False)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()

    assert after is not None
    after.release()


def test_lock_dir_when_no_env_then_never_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)

    directory = localguard.lock_dir()

    assert directory in (localguard.RUN_DIR, localguard.TMP_DIR)
    assert not str(directory).startswith(str(Path.home()))


# -- one Redis, one lock name, however the URL is typed ---------------------------------

SAME_SERVER_SPELLINGS = [
    "redis://127.0.0.1:7777",
    "redis://localhost:7777/0",
    "redis://LOCALHOST.:7777/",
    "redis://[::1]:7777/0",
    "redis://:secret@127.0.0.1:7777/0",
    "redis://***@localhost:7777",
    "rediss://127.0.0.1:7777?db=0",
]


@pytest.mark.parametrize("spelling", SAME_SERVER_SPELLINGS)
def test_normalise_when_same_server_spelled_differently_then_one_target(spelling: str) -> None:
    assert localguard.normalise_redis_target(spelling) == "redis://localhost:7777/0"


def test_normalise_when_port_db_or_socket_differs_then_targets_differ(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    sock.touch()
    link = tmp_path / "link.sock"
    link.symlink_to(sock)

    assert localguard.normalise_redis_target("redis://localhost") == "redis://localhost:6379/0"
    assert localguard.normalise_redis_target("redis://localhost/1") == "redis://localhost:6379/1"
    assert localguard.normalise_redis_target("redis://10.0.0.2:6380") == "redis://10.0.0.2:6380/0"
    assert localguard.normalise_redis_target(f"unix://{link}") == f"unix://{sock}?db=0"
    assert localguard.normalise_redis_target(f"unix://{sock}?db=3") == f"unix://{sock}?db=3"


def test_acquire_when_same_redis_spelled_differently_then_second_refused() -> None:
    first = localguard.acquire(ACCOUNT, "redis://127.0.0.1:7777", standby=False)
    assert first is not None
    try:
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, "redis://:pw@localhost:7777/0", standby=False)
    finally:
        first.release()

    assert info.value.pid == os.getpid() and info.value.path == first.path


def test_run_when_second_copy_reaches_same_redis_by_other_url_then_exit_2_naming_holder(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: one copy on 127.0.0.1:P, a second (no --standby) on localhost:P/0.
    port = redis_server.port
    a = write_config(tmp_path / "a.toml", redis_url=f"redis://127.0.0.1:{port}", account="lg1")
    b = write_config(tmp_path / "b.toml", redis_url=f"redis://localhost:{port}/0", account="lg1")
    first = RunProc("A", a, tmp_path)
    second = RunProc("B", b, tmp_path)
    try:
        first.start()
        first.wait_for("runtime.active", timeout=60)
        # Act
        second.start()
        rc = second.wait_exit(timeout=60)
    finally:
        first.cleanup()
        second.cleanup()
    # Assert
    assert rc == 2, second.text()
    assert f"pid {first.pid}" in second.text()
    assert "--standby" in second.text()
    assert not second.events("lease.standby") and not second.events("lease.acquired")


# -- a lock directory shared by every user of the host ----------------------------------

SECOND_USER_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)  # read-write: the file is group/other-writable
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked")
except BlockingIOError:
    print("held")
"""


def test_acquire_when_default_dirs_then_shared_1777_dirs_and_0666_files_another_user_can_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the two default directories, redirected into a fresh world-readable tree.
    base = Path(tempfile.mkdtemp(prefix="gr-lockdirs-", dir="/tmp"))
    os.chmod(base, 0o755)
    run_dir, tmp_dir = base / "run" / "guardrails", base / "tmp-locks"
    (base / "run").mkdir(mode=0o755)
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)
    monkeypatch.setattr(localguard, "RUN_DIR", run_dir)
    monkeypatch.setattr(localguard, "TMP_DIR", tmp_dir)
    old_umask = os.umask(0o077)  # a strict umask must not make the lock private
    try:
        # Act
        lock = localguard.acquire(ACCOUNT, TARGET, standby=False)
        assert lock is not None
        try:
            paths = [lock.path, *(p for p, _ in lock.extra)]
            modes = {p.parent: stat.S_IMODE(p.parent.stat().st_mode) for p in paths}
            file_modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
            as_other_user = [
                subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, "-I", "-c", SECOND_USER_PROBE, str(p)],
                    capture_output=True, text=True, timeout=60,
                )
                for p in paths
            ] if os.geteuid() == 0 else []
        finally:
            lock.release()
    finally:
        os.umask(old_umask)
        shutil.rmtree(base, ignore_errors=True)
    # Assert: the guard is in both shared directories, each 1777, each file 0666...
    assert modes == {run_dir: 0o1777, tmp_dir: 0o1777}
    assert set(file_modes.values()) == {0o666}
    # ... and another user can open it read-write and finds it held (when we can be one).
    for proc in as_other_user:
        assert proc.returncode == 0 and proc.stdout.strip() == "held", proc.stderr
