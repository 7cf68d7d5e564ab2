"""The local single-instance guard: a second copy is refused by name, whatever its HOME."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.keys import AccountId
from guardrails.runtime import localguard
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, write_config

ACCOUNT = AccountId("paper", "guard-test")
STEM = localguard.lock_stem(ACCOUNT)

PROBE = """
import sys
from guardrails.runtime import localguard
from guardrails.keys import AccountId
try:
    lock = localguard.acquire(AccountId("paper", "guard-test"), standby=sys.argv[1] == "standby")
except localguard.AlreadyRunning as e:
    print(e)
    sys.exit(2)
print("acquired", lock.path, flush=True)
"""


@pytest.fixture(autouse=True)
def _private_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own lock directory (the host's shared ones stay untouched)."""
    d = tmp_path / "locks"
    d.mkdir(mode=0o755)
    monkeypatch.setenv(localguard.LOCK_DIR_ENV, str(d))


def test_acquire_when_already_held_then_refused_naming_pid_from_the_kernel() -> None:
    first = localguard.acquire(ACCOUNT, standby=False)
    path = first.path
    try:
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, standby=False)
    finally:
        first.release()
    refused = info.value
    assert refused.pid == os.getpid()
    assert refused.path == path
    assert f"pid {os.getpid()}" in str(refused) and "started 20" in str(refused)


def test_acquire_when_held_and_standby_then_let_in_and_it_keeps_plain_copies_out() -> None:
    first = localguard.acquire(ACCOUNT, standby=False)
    standby = localguard.acquire(ACCOUNT, standby=True)
    first.release()  # the first copy is gone (a crash, a failover): the standby leads now
    try:
        with pytest.raises(localguard.AlreadyRunning):
            localguard.acquire(ACCOUNT, standby=False)  # a plain copy beside it: refused
    finally:
        standby.release()
    again = localguard.acquire(ACCOUNT, standby=False)
    again.release()


def test_acquire_when_other_account_then_independent() -> None:
    first = localguard.acquire(ACCOUNT, standby=False)
    try:
        other = localguard.acquire(AccountId("paper", "other"), standby=False)
        other.release()
    finally:
        first.release()


def test_acquire_when_second_copy_has_other_home_then_still_refused(tmp_path: Path) -> None:
    first = localguard.acquire(ACCOUNT, standby=False)
    other_home = tmp_path / "other-home"
    other_home.mkdir()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, "plain"],
            env=subprocess_env(HOME=str(other_home), PYTHONPATH=str(ROOT)),
            cwd=str(other_home), capture_output=True, text=True, timeout=60,
        )
    finally:
        first.release()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"pid {os.getpid()}" in proc.stdout


def test_acquire_when_holder_process_killed_then_lock_free_again() -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", PROBE + "import time; time.sleep(60)\n", "plain"],
        env=subprocess_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().startswith("acquired")
        with pytest.raises(localguard.AlreadyRunning) as info:
            localguard.acquire(ACCOUNT, standby=False)
        assert info.value.pid == holder.pid
        holder.kill()
        holder.wait(timeout=10)
        after = localguard.acquire(ACCOUNT, standby=False)
        after.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_lock_dir_when_no_env_then_never_under_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)
    directory = localguard.lock_dir()
    assert directory in (localguard.RUN_DIR, localguard.TMP_DIR)
    assert not str(directory).startswith(str(Path.home()))




# -- real `guardrails run` copies: one account is one resource, whatever Redis it names ---


def test_run_when_second_copy_names_another_redis_then_exit_2_naming_holder(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the same account, two configs, two different Redis servers (a staging URL
    # left in one of them): two lease domains, so only the host lock can refuse the second.
    other = RedisServer().start()
    a = write_config(tmp_path / "a.toml", redis_url=redis_server.url, account="lg1")
    b = write_config(tmp_path / "b.toml", redis_url=other.url, account="lg1")
    first, second = RunProc("A", a, tmp_path), RunProc("B", b, tmp_path)
    try:
        first.start().wait_for("runtime.active", timeout=60)
        second.start()
        rc = second.wait_exit(timeout=60)
    finally:
        first.cleanup()
        second.cleanup()
        other.stop()
    assert rc == 2, second.text()
    assert f"pid {first.pid}" in second.text() and "--standby" in second.text()
    assert not second.events("lease.acquired")


def test_run_when_standby_took_over_then_a_plain_copy_is_still_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="lg2")
    a = RunProc("A", cfg, tmp_path)
    b = RunProc("B", cfg, tmp_path, standby=True)
    c = RunProc("C", cfg, tmp_path)
    try:
        a.start().wait_for("runtime.active", timeout=60)
        b.start().wait_for("lease.standby", timeout=60)
        a.send(signal.SIGKILL)
        a.wait_exit()
        b.wait_for("runtime.active", timeout=60)
        # Act: a plain copy beside the standby that now leads
        c.start()
        rc = c.wait_exit(timeout=60)
    finally:
        for p in (a, b, c):
            p.cleanup()
    assert rc == 2, c.text()
    assert f"pid {b.pid}" in c.text()


# -- another local user in the shared lock directory (two real OS users) ----------------

ATTACKER_PLANT = """
import fcntl, os, sys, time
mode, path, target = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "symlink":
    os.symlink(target, path)
    print("planted", flush=True)
else:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
    os.write(fd, b"pid=1 started=1970-01-01T00:00:00Z fake holder\\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("planted", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def attacker() -> Iterator[tuple[int, int]]:
    if os.geteuid() != 0:
        pytest.fail("this test creates a second OS user: it runs as root (as make test does)")
    name = f"grtest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        import pwd

        pw = pwd.getpwnam(name)
        yield pw.pw_uid, pw.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def _as(uid_gid: tuple[int, int], *args: str) -> list[str]:
    uid, gid = uid_gid
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *args]


def _shared_dir() -> Path:
    d = Path(tempfile.mkdtemp(prefix="gr-shared-locks-", dir="/tmp"))
    os.chmod(d, 0o1777)  # like /tmp/guardrails-locks: every user, sticky
    return d


def test_run_when_another_user_symlinked_the_lock_name_then_refused_and_target_untouched(
    redis_server: RedisServer, tmp_path: Path, attacker: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = _shared_dir()
    secret = tmp_path / "root-only"
    secret.write_text("root's data\n")
    os.chmod(secret, 0o600)
    os.chmod(tmp_path, 0o755)
    account = AccountId("paper", "lg3")
    name = localguard.lock_stem(account) + ".lock"
    monkeypatch.setenv(localguard.LOCK_DIR_ENV, str(shared))
    try:
        planted = subprocess.run(
            _as(attacker, sys.executable, "-I", "-c", ATTACKER_PLANT, "symlink",
                str(shared / name), str(secret)), capture_output=True, text=True, timeout=30)
        assert planted.stdout.strip() == "planted", planted.stderr
        cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="lg3")
        for standby in (False, True):
            p = RunProc(f"v{int(standby)}", cfg, tmp_path, standby=standby,
                        env={localguard.LOCK_DIR_ENV: str(shared)}).start()
            rc = p.wait_exit(timeout=60)
            text = p.text()
            p.cleanup()
            # Assert: refused with a clear message, no traceback, the target never written
            assert rc == 2, text
            assert "symlink" in text and "Traceback" not in text
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert secret.read_text() == "root's data\n"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_run_when_another_user_squats_the_lock_file_then_refusal_names_the_real_holder(
    redis_server: RedisServer, tmp_path: Path, attacker: tuple[int, int],
) -> None:
    shared = _shared_dir()
    account = AccountId("paper", "lg4")
    path = shared / (localguard.lock_stem(account) + ".lock")
    squatter = subprocess.Popen(
        _as(attacker, sys.executable, "-I", "-c", ATTACKER_PLANT, "squat", str(path), "-"),
        stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "planted"
        cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, account="lg4")
        env = {localguard.LOCK_DIR_ENV: str(shared)}
        plain = RunProc("plain", cfg, tmp_path, env=env).start()
        rc = plain.wait_exit(timeout=60)
        plain_text = plain.text()
        plain.cleanup()
        # Even the deliberate --standby is refused cleanly (a squatter that is no guardrails
        # copy holds the account's lock): named, one message, no crash.
        standby = RunProc("sb", cfg, tmp_path, standby=True, env=env).start()
        standby_rc = standby.wait_exit(timeout=60)
        standby_text = standby.text()
        standby.cleanup()
        content = path.read_bytes()
    finally:
        squatter.kill()
        squatter.wait(timeout=10)
        if squatter.stdout is not None:
            squatter.stdout.close()
        shutil.rmtree(shared, ignore_errors=True)
    # Assert: the refusal names the squatting process and its user, from the kernel — not
    # the fake holder written into the file — and guardrails wrote nothing into it.
    import pwd

    user = pwd.getpwuid(attacker[0]).pw_name
    assert rc == 2, plain_text
    assert f"pid {squatter.pid}" in plain_text and user in plain_text, plain_text
    assert "pid 1 " not in plain_text and "Traceback" not in plain_text
    assert standby_rc == 2 and f"pid {squatter.pid}" in standby_text, standby_text
    assert "not a guardrails copy" in standby_text and "Traceback" not in standby_text
    assert content == b"pid=1 started=1970-01-01T00:00:00Z fake holder\n"


# -- an explicit lock directory is in addition to the host's, never instead -------------

HOLD_IN = """
import sys, time
from pathlib import Path
from guardrails.runtime import localguard
from guardrails.keys import AccountId
# the host's default directories, moved for the test (the real ones stay untouched)
localguard.RUN_DIR, localguard.TMP_DIR = Path(sys.argv[2]), Path(sys.argv[3])
lock = localguard.acquire(AccountId("paper", "guard-test"), standby=False, lock_dir=sys.argv[1])
print("acquired", flush=True)
time.sleep(60)
"""


def test_acquire_when_copies_name_different_lock_dirs_then_second_refused_naming_holder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the test-only isolation off; the host's defaults in two sticky dirs of ours.
    monkeypatch.delenv(localguard.ISOLATED_ENV, raising=False)
    monkeypatch.delenv(localguard.LOCK_DIR_ENV, raising=False)
    run_dir, tmp_dir = tmp_path / "run-guardrails", tmp_path / "tmp-guardrails-locks"
    monkeypatch.setattr(localguard, "RUN_DIR", run_dir)
    monkeypatch.setattr(localguard, "TMP_DIR", tmp_dir)
    mine, theirs = tmp_path / "lock-a", tmp_path / "lock-b"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_IN, str(mine), str(run_dir), str(tmp_dir)],
        env=subprocess_env(PYTHONPATH=str(ROOT)), cwd=str(ROOT), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "acquired", holder.stderr
        # Act: a plain copy with its own lock_dir; then one with $GUARDRAILS_LOCK_DIR
        with pytest.raises(localguard.AlreadyRunning) as by_kwarg:
            localguard.acquire(ACCOUNT, standby=False, lock_dir=theirs)
        monkeypatch.setenv(localguard.LOCK_DIR_ENV, str(theirs))
        with pytest.raises(localguard.AlreadyRunning) as by_env:
            localguard.acquire(ACCOUNT, standby=False)
        standby = localguard.acquire(ACCOUNT, standby=True, lock_dir=theirs)
        standby.release()
    finally:
        holder.kill()
        holder.wait(timeout=10)
        for stream in (holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()
    # Assert: both refused in a default directory, naming the holder from the kernel
    for refused in (by_kwarg.value, by_env.value):
        assert refused.pid == holder.pid
        assert refused.path.parent in (run_dir, tmp_dir)
    assert sorted(p.name for p in theirs.iterdir()) == [STEM + ".admit", STEM + ".lock"]


def test_lock_dirs_when_explicit_then_defaults_follow_unless_test_isolation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localguard, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(localguard, "TMP_DIR", tmp_path / "tmp")
    os.makedirs(tmp_path / "run", mode=0o1777)
    os.makedirs(tmp_path / "tmp", mode=0o1777)
    os.chmod(tmp_path / "run", 0o1777)
    os.chmod(tmp_path / "tmp", 0o1777)
    extra = tmp_path / "extra"

    monkeypatch.delenv(localguard.ISOLATED_ENV, raising=False)
    added = localguard.lock_dirs(extra)
    monkeypatch.setenv(localguard.ISOLATED_ENV, "1")
    isolated = localguard.lock_dirs()  # $GUARDRAILS_LOCK_DIR alone (the autouse fixture)

    env_dir = Path(os.environ[localguard.LOCK_DIR_ENV])
    assert added == [extra, env_dir, tmp_path / "run", tmp_path / "tmp"]
    assert isolated == [env_dir]
