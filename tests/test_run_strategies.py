"""A misbehaving strategy does not take `guardrails run` down with it (issue #9 item 7),
shown with real processes against a real redis-server: `sys.exit()` and
`KeyboardInterrupt` inside a strategy are that strategy crashing, a strategy that swallows
its cancellation cannot hang the stop, and one that failed on an infrastructure blip is
restarted within the term."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.keys import AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, write_config
from tests.test_run_processes import _spawn

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("paper", "t1"))

MISBEHAVING = """
import asyncio
import sys


class Exits:
    async def run(self, ctx):
        await ctx.sleep(0.3)
        sys.exit(0)


class Interrupts:
    async def run(self, ctx):
        await ctx.sleep(0.3)
        raise KeyboardInterrupt


class Swallows:
    '''Ignores every cancellation, through Context calls and raw asyncio alike.'''

    async def run(self, ctx):
        while True:
            try:
                await ctx.sleep(0.1)
            except asyncio.CancelledError:
                pass
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                pass


class Reader:
    '''Reads the account's state in a loop and lets any error escape.'''

    async def run(self, ctx):
        while True:
            await ctx.positions()
            await ctx.open_orders()
            await asyncio.sleep(0.05)
"""


@pytest.fixture
def procs() -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()


def _config(tmp_path: Path, redis: RedisServer, names: list[str], *, runtime: str = "",
            **timing: str) -> Path:
    (tmp_path / "misbehaving.py").write_text(MISBEHAVING)
    extra = "".join(textwrap.dedent(f"""
        [[strategies]]
        name = "{name.lower()}"
        module = "{tmp_path / 'misbehaving.py'}:{name}"
    """) for name in names)
    path = write_config(tmp_path / "c.toml", redis_url=redis.url, looper={"interval": "200ms"},
                        extra_strategies=extra, **timing)  # type: ignore[arg-type]
    if runtime:
        path.write_text(path.read_text().replace("[runtime]\n", f"[runtime]\n{runtime}\n"))
    return path


def test_run_when_strategy_calls_sys_exit_or_raises_keyboard_interrupt_then_only_it_crashes(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange
    a = _spawn(procs, "a", _config(tmp_path, redis_server, ["Exits", "Interrupts"]), tmp_path)

    # Act: both misbehave shortly after the term starts
    exits = a.wait_for("strategy.crashed", where=lambda e: e["strategy"] == "exits")
    interrupts = a.wait_for("strategy.crashed", where=lambda e: e["strategy"] == "interrupts")
    later = max(exits.ts, interrupts.ts)

    # Assert: each is that strategy crashing; the looper keeps trading, the process lives
    assert "SystemExit" in exits["error"]
    assert "KeyboardInterrupt" in interrupts["error"]
    a.wait_for("order.admitted", after=later + 0.5, where=lambda e: e["strategy"] == "looper")
    assert a.running()
    # ... and a real stop still releases the lease
    token = a.events("lease.acquired")[-1]["token"]
    a.send(signal.SIGTERM)
    assert a.wait_exit(30) == 0
    released = a.events("lease.released")
    assert released and released[-1]["token"] == token
    assert redis_server.client().get(KEYS.lease) is None


def test_run_when_strategy_swallows_cancellation_then_sigterm_still_stops_and_releases(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: a lease that would outlive the test if it were not released
    cfg = _config(tmp_path, redis_server, ["Swallows"], runtime='strategy_stop_timeout = "1s"',
                  ttl="60s", renew_deadline="30s", renew_interval="500ms")
    a = _spawn(procs, "a", cfg, tmp_path)
    a.wait_for("order.admitted", where=lambda e: e["strategy"] == "looper")
    a.wait_for("strategy.started", where=lambda e: e["strategy"] == "swallows")

    # Act
    a.send(signal.SIGTERM)

    # Assert: the stop is bounded, the swallower is abandoned, the lease released at once
    assert a.wait_exit(45) == 0
    abandoned = a.events("strategy.abandoned")
    assert [e["strategy"] for e in abandoned] == ["swallows"]
    assert a.events("lease.released")
    assert redis_server.client().get(KEYS.lease) is None
    assert a.events("runtime.forced_exit") == []


def test_run_when_context_read_fails_on_a_redis_blip_then_strategy_restarted_within_the_term(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: a lease long enough to ride out a 2 s Redis stall without a failover
    cfg = _config(tmp_path, redis_server, ["Reader"],
                  runtime='strategy_restart_backoff = "200ms"\nstrategy_restart_backoff_max = "2s"',
                  ttl="20s", renew_deadline="15s", renew_interval="500ms")
    a = _spawn(procs, "a", cfg, tmp_path)
    acquired = a.wait_for("lease.acquired")
    a.wait_for("strategy.started", where=lambda e: e["strategy"] == "reader")

    # Act: Redis stops answering for longer than the socket timeout (500ms), then recovers
    redis_server.pause()
    time.sleep(2.0)
    redis_server.resume()

    # Assert: the reader failed with the one documented type and was restarted, with
    # backoff, in the same term; it was never treated as crashed
    restarting = a.wait_for("strategy.restarting", where=lambda e: e["strategy"] == "reader")
    assert "ContextUnavailable" in restarting["error"]
    assert int(restarting["delay_ms"]) >= 200
    restarted = a.wait_for("strategy.started", after=restarting.ts,
                           where=lambda e: e["strategy"] == "reader" and e.get("attempt") is not None)
    assert restarted.ts >= restarting.ts
    time.sleep(1.0)
    assert [e for e in a.events("strategy.crashed") if e["strategy"] == "reader"] == []
    assert [e["token"] for e in a.events("lease.acquired")] == [acquired["token"]]
    assert a.running()
