"""A kill that Redis loses after the bot saw it is not undone silently.

A real `guardrails run` bot on a real redis-server (AOF, ``appendfsync always``). The
loss is Redis's own: the server's AOF is copied (server paused) before the kill, and
after the bot has seen the kill the server is SIGKILLed and started from that copy — the
state a crash with ``appendfsync everysec``, or a failover to a replica that had not
received the kill, leaves behind. The fence's epoch survives (the history is the same
one, only its last writes are gone), so the lease's lost-history alarm does not fire.
Claims are proven from the account journal (Redis's own order of admissions)."""

from __future__ import annotations

import json
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from guardrails.keys import AccountId, AccountKeys
from tests.redis_harness import RedisServer, free_port
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow

WAIT_S = 60.0
AOF_DIR = "appendonlydir"


def _admits_since(server: RedisServer, keys: AccountKeys, since_ms: int) -> list[dict[str, str]]:
    c = server.client()
    try:
        return [f for i, f in c.xrange(keys.journal, min=str(since_ms))
                if f.get("ev") == "admit"]
    finally:
        c.close()


def _wait(predicate: Callable[[], bool], what: str, within_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _snapshot(server: RedisServer, to: Path) -> None:
    """A copy of the server's AOF as it is now (the server paused meanwhile)."""
    server.pause()
    try:
        shutil.copytree(server.dir / AOF_DIR, to)
    finally:
        server.resume()


def _crash_back_to(server: RedisServer, snapshot: Path) -> None:
    """SIGKILL the server and start it from ``snapshot``: every write after it is lost."""
    server.kill()
    shutil.rmtree(server.dir / AOF_DIR)
    shutil.copytree(snapshot, server.dir / AOF_DIR)
    server.start()


def _health(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        facts: dict[str, object] = json.loads(r.read())
    return facts


def _looper(server: RedisServer, tmp: Path, account: str,
            **looper: str) -> tuple[AccountKeys, Path]:
    """The keys of paper account ``account`` and a config whose looper trades it."""
    cfg = write_config(tmp / "c.toml", redis_url=server.url, account=account,
                       looper={"interval": "50ms", "offset": "-0.01", **looper})
    return AccountKeys(AccountId("paper", account)), cfg


def _trade_then_snapshot(server: RedisServer, keys: AccountKeys, bot: RunProc,
                         tmp: Path) -> None:
    """Start ``bot``, let it trade, then copy the server's AOF (``aof-before-kill``)."""
    bot.start()
    bot.wait_for("runtime.active", WAIT_S)
    _wait(lambda: len(_admits_since(server, keys, 0)) >= 3, "admissions")
    _snapshot(server, tmp / "aof-before-kill")


@pytest.mark.parametrize("mode", [
    pytest.param([], id="halted"),
    pytest.param(["--reduce-only"], id="reducing"),
    pytest.param(["--revoke"], id="halted-revoke"),
])
def test_kill_when_redis_loses_it_after_the_bot_saw_it_then_no_admission_until_a_new_latch(
    redis_server_aof: RedisServer, tmp_path: Path, mode: list[str]
) -> None:
    # Arrange: a bot trading (resting buys: REDUCING denies them, the account is flat)
    server = redis_server_aof
    account = "kl1"
    keys, cfg = _looper(server, tmp_path, account, side="buy")
    health_port = free_port()
    bot = RunProc("bot", cfg, tmp_path, extra_args=["--health-port", str(health_port)]).start()
    try:
        bot.wait_for("runtime.active", WAIT_S)
        _wait(lambda: len(_admits_since(server, keys, 0)) >= 3, "admissions")
        _snapshot(server, tmp_path / "aof-before-kill")
        done = run_cli("kill", "--account", f"paper:{account}", "--reason", "lost-latch test",
                       "--redis-url", server.url, *mode)
        assert done.returncode == 0, done.stdout + done.stderr  # the bot confirmed it
        killed_ms = int(time.time() * 1000)
        time.sleep(0.5)
        assert _admits_since(server, keys, killed_ms) == []

        # Act: Redis crashes and comes back without the kill
        _crash_back_to(server, tmp_path / "aof-before-kill")
        restored_ms = int(time.time() * 1000)
        c = server.client()
        assert not c.exists(keys.state)  # the latch is gone: it reads ACTIVE
        c.close()

        # Assert: the bot says so and admits nothing
        alarm = bot.wait_for("kill.latch_lost", 30, after=restored_ms / 1000)
        assert alarm["remembered_state"] == ("REDUCING" if mode == ["--reduce-only"]
                                             else "HALTED")
        assert alarm["seen_state"] == "ACTIVE" and alarm["seen_version"] == "0"
        # commands an operator can paste (kill refuses to run without --reason)
        assert f"guardrails kill --account paper:{account} --reason" in alarm["action"]
        assert f"guardrails resume --account paper:{account}" in alarm["action"]
        # /health says it too: the role alone (active) would look healthy
        assert _health(health_port)["latch_lost"], _health(health_port)
        time.sleep(3.0)
        assert _admits_since(server, keys, restored_ms) == []

        # Act: the operator writes a new latch (here: resume)
        resumed = run_cli("resume", "--account", f"paper:{account}", "--redis-url", server.url)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        resumed_ms = int(time.time() * 1000)

        # Assert: it trades again
        _wait(lambda: len(_admits_since(server, keys, resumed_ms)) >= 3,
              "admissions after the resume")
        assert _health(health_port)["latch_lost"] == ""
    finally:
        bot.cleanup()


def test_kill_when_redis_loses_it_while_no_bot_runs_then_the_next_start_admits_nothing(
    redis_server_aof: RedisServer, tmp_path: Path
) -> None:
    # Arrange: a bot sees the kill and stops
    server = redis_server_aof
    account = "kl2"
    keys, cfg = _looper(server, tmp_path, account)
    first, second = RunProc("first", cfg, tmp_path), RunProc("second", cfg, tmp_path)
    try:
        _trade_then_snapshot(server, keys, first, tmp_path)
        done = run_cli("kill", "--account", f"paper:{account}", "--reason", "cold start",
                       "--redis-url", server.url)
        assert done.returncode == 0, done.stdout + done.stderr
        first.send(signal.SIGTERM)
        assert first.wait_exit() == 0

        # Act: Redis comes back without the kill; a new process starts on this host
        _crash_back_to(server, tmp_path / "aof-before-kill")
        restored_ms = int(time.time() * 1000)
        second.start()

        # Assert: the host's memory of the latch refuses the lost one
        second.wait_for("runtime.active", WAIT_S)
        alarm = second.wait_for("kill.latch_lost", 30)
        assert alarm["remembered_state"] == "HALTED" and alarm["seen_version"] == "0"
        second.wait_for("order.denied", 30, where=lambda e: e.get("reason") == "latch_lost")
        time.sleep(2.0)
        assert _admits_since(server, keys, restored_ms) == []
    finally:
        first.cleanup()
        second.cleanup()


def _leader(*procs: RunProc) -> RunProc:
    """The one of ``procs`` active now (its last role change logged is ``runtime.active``)."""
    def last(p: RunProc) -> tuple[float, str]:
        changes = p.events("runtime.active") + p.events("runtime.standby")
        return max(((e.ts, e.name) for e in changes), default=(0.0, ""))
    active = [p for p in procs if last(p)[1] == "runtime.active"]
    assert len(active) == 1, [last(p) for p in procs]
    return active[0]


def test_kill_when_redis_loses_latches_and_operator_resumes_then_other_instance_that_saw_them_trades(
    redis_server_aof: RedisServer, tmp_path: Path
) -> None:
    # Arrange: an active bot sees a kill and a resume; a standby of the account starts on
    # the same host afterwards (it reads the host's memory: the resume's version). Both
    # remember the resume.
    server = redis_server_aof
    account = "kl3"
    keys, cfg = _looper(server, tmp_path, account)
    first = RunProc("first", cfg, tmp_path)
    second = RunProc("second", cfg, tmp_path, standby=True)
    try:
        _trade_then_snapshot(server, keys, first, tmp_path)
        for cmd in (("kill", "--reason", "drill"), ("resume",)):
            done = run_cli(*cmd, "--account", f"paper:{account}", "--redis-url", server.url)
            assert done.returncode == 0, done.stdout + done.stderr  # the bot confirmed it
        second.start()
        second.wait_for("lease.standby", WAIT_S)

        # Act: Redis comes back without both latches (and the lease: either instance may
        # hold it now); the active one says so and the operator does what it says (a
        # resume); then the active one stops and the other takes over.
        _crash_back_to(server, tmp_path / "aof-before-kill")
        _wait(lambda: any(p.events("kill.latch_lost") for p in (first, second)),
              "kill.latch_lost")
        resumed = run_cli("resume", "--account", f"paper:{account}", "--redis-url", server.url)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        resumed_ms = int(time.time() * 1000)
        _wait(lambda: len(_admits_since(server, keys, resumed_ms)) >= 3,
              "admissions after the resume")
        leader = _leader(first, second)
        other = second if leader is first else first
        leader.send(signal.SIGTERM)
        assert leader.wait_exit() == 0
        stopped_ms = int(time.time() * 1000)

        # Assert: the other takes over and trades: the operator's new latch is newer than
        # every latch any instance saw, not a second "lost" latch needing another resume.
        other.wait_for("runtime.active", WAIT_S, after=stopped_ms / 1000 - 1)
        _wait(lambda: len(_admits_since(server, keys, stopped_ms)) >= 3,
              "admissions after the takeover", within_s=15)
        assert [e.fields for e in other.events("kill.latch_lost")
                if e.ts * 1000 >= resumed_ms] == []
    finally:
        first.cleanup()
        second.cleanup()
