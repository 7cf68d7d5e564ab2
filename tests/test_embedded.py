"""The embedded Redis: one per user state dir, reused, never doubled, persistent."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import redis

from guardrails.infra import embedded
from guardrails.infra.server import find_redis_server


def _pid() -> int:
    return int(embedded.paths().pidfile.read_text().strip())


@pytest.fixture
def fresh_embedded() -> object:
    yield None
    try:
        embedded.stop()
    except embedded.EmbeddedRedisError:
        pid = _pid()
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


def test_ensure_running_when_called_twice_then_reuses_one_server(fresh_embedded: object) -> None:
    url1 = embedded.ensure_running()
    pid1 = _pid()
    url2 = embedded.ensure_running()
    assert url1 == url2
    assert _pid() == pid1
    assert embedded.status()["running"] is True


def test_ensure_running_when_server_paused_then_never_starts_a_second(fresh_embedded: object) -> None:
    embedded.ensure_running()
    pid = _pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(embedded.EmbeddedRedisError, match="not starting a second server"):
            embedded.ensure_running(timeout=3)
        assert _pid() == pid
        assert Path(embedded.paths().socket).exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    # Once it answers again it is reused, not replaced.
    embedded.ensure_running()
    assert _pid() == pid


def test_ensure_running_when_paused_briefly_then_waits_and_reuses(fresh_embedded: object) -> None:
    embedded.ensure_running()
    pid = _pid()
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(3.0, os.kill, (pid, signal.SIGCONT))
    timer.start()
    try:
        embedded.ensure_running(timeout=30)
    finally:
        timer.join()
    assert _pid() == pid


def test_fence_counter_when_embedded_restarted_then_survives(fresh_embedded: object) -> None:
    url = embedded.ensure_running()
    c = redis.Redis.from_url(url)
    assert c.incr("gr:{paper:t}:fence") == 1
    c.close()
    assert embedded.stop() is True
    assert embedded.status()["running"] is False
    url = embedded.ensure_running()
    c = redis.Redis.from_url(url)
    assert c.incr("gr:{paper:t}:fence") == 2
    c.close()


# -- another local user pre-creates the state directory and runs their own server -------

# The attacker's server is started by hand, not by guardrails.infra.server: it stands for a
# foreign user's process (world-writable socket, no password, no AOF) run with `python -I`
# as that user, which must not depend on our package.
ATTACKER_SERVER = """
import os, subprocess, sys
state = sys.argv[1]
os.makedirs(os.path.join(state, "redis"), mode=0o777)
os.chmod(state, 0o777); os.chmod(os.path.join(state, "redis"), 0o777)
sock = os.path.join(state, "redis", "redis.sock")
subprocess.run([sys.argv[2], "--port", "0", "--unixsocket", sock, "--unixsocketperm", "777",
                "--daemonize", "yes", "--save", "", "--appendonly", "no",
                "--pidfile", os.path.join(state, "redis", "attacker.pid")], check=True)
print("listening", flush=True)
"""


def test_embedded_when_another_user_owns_the_state_dir_and_a_server_then_refused_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pwd
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    from tests.conftest import ROOT, subprocess_env

    if os.geteuid() != 0:
        pytest.fail("this test creates a second OS user: it runs as root (as make test does)")
    name = f"grtestr{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="gr-vartmp-", dir="/tmp"))
    os.chmod(base, 0o1777)  # like /var/tmp: every user may create entries
    state = base / f"guardrails-{os.getuid()}"
    pw = pwd.getpwnam(name)
    server = find_redis_server()
    try:
        planted = subprocess.run(
            ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
             sys.executable, "-I", "-c", ATTACKER_SERVER, str(state), server],
            capture_output=True, text=True, timeout=30)
        assert planted.stdout.strip() == "listening", planted.stderr
        sock = state / "redis" / "redis.sock"
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        spy = redis.Redis(unix_socket_path=str(sock))
        before = int(spy.info("stats")["total_commands_processed"])
        # Act: the victim's start, status, run and kill with url = "embedded"
        env = subprocess_env(GUARDRAILS_STATE_DIR=str(state))
        results = [subprocess.run([sys.executable, "-m", "guardrails", *cmd], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
                   for cmd in (["redis", "start"], ["status", "--redis-url", "embedded"],
                               ["kill", "--account", "paper:demo", "--reason", "x",
                                "--redis-url", "embedded"],
                               ["run", "--config", "config/paper.toml"])]
        after = int(spy.info("stats")["total_commands_processed"])
        spy.shutdown(nosave=True)
        spy.close()
    finally:
        subprocess.run(["pkill", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    # Assert: every command refused, naming the directory and its owner; the attacker's
    # server saw nothing but our two INFO probes (the spy's own).
    for r in results:
        assert r.returncode != 0, (r.args, r.stdout, r.stderr)
        assert "not by you" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert after - before <= 2


def test_embedded_when_started_then_password_file_0600_not_in_argv_and_auth_required(
    fresh_embedded: object,
) -> None:
    import stat as st

    url = embedded.ensure_running()
    p = embedded.paths()
    mode = st.S_IMODE(p.password_file.stat().st_mode)
    password = p.password_file.read_text().strip()
    cmdline = Path(f"/proc/{_pid()}/cmdline").read_bytes()
    anonymous = redis.Redis(unix_socket_path=str(p.socket))
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()
    assert mode == 0o600 and password.encode() not in cmdline
    assert redis.Redis.from_url(url).ping()


def test_redis_start_when_it_prints_the_url_then_the_password_is_masked(
    fresh_embedded: object,
) -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT, subprocess_env

    # Act: the operator command, as a process (what a terminal or a log would keep)
    started = subprocess.run([sys.executable, "-m", "guardrails", "redis", "start"],
                             env=subprocess_env(),
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
    # Assert
    password = embedded.paths().password_file.read_text().strip()
    assert started.returncode == 0, started.stderr
    assert "embedded redis running at" in started.stdout
    assert password not in started.stdout + started.stderr
