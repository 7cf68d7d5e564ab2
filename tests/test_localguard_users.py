"""The host lock against another local user (#9 item 2): two real OS users.

The attacker is a throwaway user (``tests/oskit.py``) acting in a shared sticky lock
directory, as in ``/tmp/guardrails-locks``; the victim is this (root) test process or a
real ``guardrails run``. A planted file never changes what guardrails writes, never
crashes it (also with ``--standby``), and a refusal names the holder as the kernel
reports it, not as a file says.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.keys import AccountId
from guardrails.runtime import localguard
from tests.oskit import (
    OsUser,
    attacker,
    guardrails_as,
    popen_as_user,
    python,
    shared_sticky_dir,
    stop_group,
    throwaway_user,
    user_env,
)
from tests.redis_harness import RedisServer
from tests.run_harness import run_cli, write_config

ACCOUNT = AccountId("paper", "hostile")
STEM = localguard.lock_stem(ACCOUNT)
PRECIOUS = b"root's secret, mode 0600\n"

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print(os.getpid(), flush=True)
time.sleep(120)
"""


@pytest.fixture
def mallory() -> Iterator[OsUser]:
    with throwaway_user("grmal") as user:
        yield user


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_sticky_dir("gr-shared-locks-") as base:
        yield base


def _precious(tmp_path: Path) -> Path:
    target = tmp_path / "precious"
    target.write_bytes(PRECIOUS)
    os.chmod(target, 0o600)
    return target


def _unchanged(target: Path) -> bool:
    st = target.stat()
    return target.read_bytes() == PRECIOUS and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def _run(cfg: Path, lock_dir: Path, *extra: str) -> tuple[int, str]:
    done = run_cli("run", "--config", str(cfg), *extra,
                   env={localguard.LOCK_DIR_ENV: str(lock_dir)}, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("suffix", [".lock", ".admit"])
def test_acquire_when_other_user_symlinked_lock_name_then_refused_and_target_untouched(
    mallory: OsUser, shared: Path, tmp_path: Path, suffix: str
) -> None:
    # Arrange: mallory points the predictable lock name at root's 0600 file.
    target = _precious(tmp_path)
    attacker(mallory, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
              str(target), str(shared / (STEM + suffix)))
    # Act / Assert: plain and standby both refuse, naming the symlink.
    for standby in (False, True):
        with pytest.raises(localguard.LocalGuardError, match="symlink") as info:
            localguard.acquire(ACCOUNT, standby=standby, lock_dir=shared)
        assert str(shared / (STEM + suffix)) in str(info.value)
    assert _unchanged(target)


def test_run_when_other_user_symlinked_lock_name_then_exit_2_without_traceback(
    mallory: OsUser, shared: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    target = _precious(tmp_path)
    attacker(mallory, "import os, sys; os.symlink(sys.argv[1], sys.argv[2])",
              str(target), str(shared / (STEM + ".lock")))
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="hostile")

    plain = _run(cfg, shared)
    standby = _run(cfg, shared, "--standby")

    for rc, text in (plain, standby):
        assert rc == 2, text
        assert "symlink" in text and "Traceback" not in text
    assert _unchanged(target)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_run_when_other_user_planted_non_file_then_exit_2_without_hang_or_traceback(
    mallory: OsUser, shared: Path, tmp_path: Path, redis_server: RedisServer, kind: str
) -> None:
    make = "os.mkfifo(sys.argv[1])" if kind == "fifo" else "os.mkdir(sys.argv[1])"
    attacker(mallory, f"import os, sys; {make}", str(shared / (STEM + ".lock")))
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="hostile")

    plain = _run(cfg, shared)
    standby = _run(cfg, shared, "--standby")

    for rc, text in (plain, standby):
        assert rc == 2, text
        assert "not a regular file" in text and "Traceback" not in text


def test_acquire_when_other_user_holds_planted_file_then_refusal_names_kernel_holder(
    mallory: OsUser, shared: Path
) -> None:
    # Arrange: mallory plants the lock file with forged holder details and holds it.
    path = shared / (STEM + ".lock")
    attacker(mallory, "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644);"
              " os.write(fd, b'pid=1\\nstarted_at=2001-01-01T00:00:00Z\\naccount=paper:x\\n')",
              str(path))
    forged = path.read_bytes()
    holder = popen_as_user(mallory, python(HOLD, str(path)))
    try:
        assert holder.stdout is not None
        holder_pid = int(holder.stdout.readline())
        # Act
        with pytest.raises(localguard.AlreadyRunning) as plain:
            localguard.acquire(ACCOUNT, standby=False, lock_dir=shared)
        with pytest.raises(localguard.LocalGuardError) as standby:
            localguard.acquire(ACCOUNT, standby=True, lock_dir=shared)
    finally:
        stop_group(holder)
    # Assert: the holder is mallory's process, as the kernel says; the forgery is ignored.
    refused = plain.value
    assert refused.holders is not None and [h.pid for h in refused.holders] == [holder_pid]
    assert refused.holders[0].uid == mallory.uid
    assert f"user {mallory.name}" in str(refused) and "2001" not in str(refused)
    assert "pid 1 " not in str(refused)
    assert f"pid {holder_pid} (user {mallory.name}" in str(standby.value)
    # ... and once mallory lets go the victim runs, never rewriting her file.
    lock = localguard.acquire(ACCOUNT, standby=False, lock_dir=shared)
    lock.release()
    st = path.stat()
    assert path.read_bytes() == forged and st.st_uid == mallory.uid
    assert stat.S_IMODE(st.st_mode) == 0o644


def test_acquire_when_other_user_hardlinked_lock_name_then_refused(
    mallory: OsUser, shared: Path
) -> None:
    attacker(mallory, "import os, sys; open(sys.argv[1], 'w').close();"
              " os.link(sys.argv[1], sys.argv[2])",
              str(shared / "elsewhere"), str(shared / (STEM + ".lock")))

    with pytest.raises(localguard.LocalGuardError, match="2 hard links"):
        localguard.acquire(ACCOUNT, standby=True, lock_dir=shared)


def test_acquire_when_lock_dir_owned_by_other_user_then_refused(
    mallory: OsUser, shared: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Arrange: mallory creates the lock directory before anyone else does.
    hostile = shared / "locks"
    attacker(mallory, "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o1777)",
              str(hostile))
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="hostile")
    # Act
    with pytest.raises(localguard.LocalGuardError, match="owned by") as info:
        localguard.acquire(ACCOUNT, standby=False, lock_dir=hostile)
    rc, text = _run(cfg, hostile, "--standby")
    # Assert
    assert mallory.name in str(info.value)
    assert rc == 2 and "owned by" in text and "Traceback" not in text, text
    assert os.listdir(hostile) == []


def test_acquire_when_default_tmp_dir_squatted_by_other_user_then_refused(
    mallory: OsUser, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatted = shared / "guardrails-locks"
    attacker(mallory, "import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)",
              str(squatted))
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)
    monkeypatch.setattr(localguard, "RUN_DIR", shared / "run-guardrails")
    monkeypatch.setattr(localguard, "TMP_DIR", squatted)

    with pytest.raises(localguard.LocalGuardError, match="owned by"):
        localguard.acquire(ACCOUNT, standby=False)

    assert os.listdir(squatted) == []
    assert os.listdir(shared / "run-guardrails") == []  # nothing half-held left behind


def test_acquire_when_lock_dir_is_other_users_symlink_then_refused(
    mallory: OsUser, shared: Path
) -> None:
    attacker(mallory, "import os, sys; os.mkdir(sys.argv[1]); os.symlink(sys.argv[1], sys.argv[2])",
              str(shared / "mine"), str(shared / "locks"))

    with pytest.raises(localguard.LocalGuardError, match="symlink"):
        localguard.acquire(ACCOUNT, standby=False, lock_dir=shared / "locks")


def test_acquire_when_lock_dir_world_writable_and_not_sticky_then_refused(shared: Path) -> None:
    loose = shared / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)

    with pytest.raises(localguard.LocalGuardError, match="not sticky"):
        localguard.acquire(ACCOUNT, standby=False, lock_dir=loose)


def test_acquire_when_other_users_copy_runs_then_second_user_refused_naming_it(
    mallory: OsUser, shared: Path
) -> None:
    # Two users, one account: still one resource. Mallory's copy (a real acquire, as
    # mallory) holds the guard; root's plain copy is refused naming her process.
    probe = ("lock = guardrails.runtime.localguard.acquire(guardrails.keys.AccountId('paper', 'hostile'),"
             " standby=False, lock_dir=sys.argv[1])\nprint(lock.path, flush=True)\n"
             "time.sleep(120)\n")
    holder = subprocess.Popen(
        guardrails_as(mallory, ["time", "guardrails.runtime.localguard", "guardrails.keys"], probe,
                      str(shared)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/",
        env=user_env({localguard.LOCK_DIR_ENV: str(shared), localguard.ISOLATED_ENV: "1"}),
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.strip() == str(shared / (STEM + ".lock")), holder.stderr
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, standby=False, lock_dir=shared)
        standby = localguard.acquire(ACCOUNT, standby=True, lock_dir=shared)
        standby.release()
    finally:
        stop_group(holder)

    assert info.value.holders and info.value.holders[0].uid == mallory.uid
