"""``Guard``'s contract in one process, against a real redis-server (issue 12).

``async with Guard`` / ``guard.active()``: the body runs only in a term (the lease held,
reconciled), is cancelled when the term ends, leaves as ``TermEnded``; its ``ctx`` is
refused from then on; entering again waits for the next term, which has a larger token.
(With real processes, SIGKILL and SIGSTOP: tests/test_guard_processes.py.)
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails import Admitted, Denied, DenyReason, Guard, GuardError, GuardStopped, Intent, Side, TermEnded
from guardrails.keys import AccountId, AccountKeys
from guardrails.killswitch import KillSwitch
from guardrails.model import TradingState
from tests.redis_harness import RedisServer
from tests.run_harness import write_config

KEYS = AccountKeys(AccountId("paper", "t1"))


def _config(tmp_path: Path, redis_server: RedisServer) -> Path:
    return write_config(tmp_path / "c.toml", redis_url=redis_server.url, extra_strategies="#")


def _bid(n: int) -> Intent:
    return Intent("BTC-USD", Side.BUY, Decimal("0.0001"), Decimal("59000.00"), intent_id=f"t-{n}")


async def test_guard_when_stopped_inside_active_then_body_cancelled_and_lease_released(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # Arrange
    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False)
    after_body = False
    started = time.monotonic()

    # Act: trade, then ask the guard to stop while the body waits.
    async with guard:
        async with guard.active() as ctx:
            assert guard.role == "active" and guard.token is not None
            decision = await ctx.submit(_bid(1))
            asyncio.get_running_loop().call_later(0.2, guard.stop)
            await asyncio.sleep(60)
            after_body = True  # never: the sleep is cancelled

    # Assert: the body was cancelled, the TermEnded of a requested stop is a clean exit,
    # the lease was released and the instance left the registry.
    assert isinstance(decision, Admitted), decision
    assert not after_body and time.monotonic() - started < 30
    assert await redis_client.get(KEYS.lease) is None
    assert await redis_client.exists(KEYS.instance("g1")) == 0


async def test_guard_when_term_ends_then_body_cancelled_ctx_refused_and_reentry_waits_next_term(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False)
    kill = KillSwitch(redis_client, KEYS)
    async with guard:
        # Arrange: a body in a term.
        with pytest.raises(TermEnded) as ended:
            async with guard.active() as ctx:
                token1 = guard.token
                assert isinstance(await ctx.submit(_bid(1)), Admitted)
                # Act: an operator's `kill --revoke` fences this holder out.
                await kill.set_state(TradingState.HALTED, reason="test", by="test", revoke=True)
                await asyncio.sleep(60)  # cancelled when the term ends

        # Assert: TermEnded of that term; the old ctx is refused from now on.
        assert ended.value.token == token1 and ended.value.reason == "lease lost"
        refused = await ctx.submit(_bid(2))
        assert isinstance(refused, Denied) and refused.reason is DenyReason.NOT_ACTIVE
        assert await ctx.cancel("anything") is False

        # Act: resume the account; enter again.
        await kill.set_state(TradingState.ACTIVE, reason="test over", by="test")
        async with guard.active() as ctx2:
            token2 = guard.token
            decision = await ctx2.submit(_bid(3))
            guard.stop()

    # Assert: the next term has a larger token and trades.
    assert token1 is not None and token2 is not None and token2 > token1
    assert isinstance(decision, Admitted) and decision.token == token2


async def test_guard_when_stopping_then_active_raises_guard_stopped(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False)
    with pytest.raises(RuntimeError, match="outside `async with"):
        async with guard.active():
            pass
    async with guard:
        guard.stop()
        with pytest.raises(GuardStopped):
            async with guard.active():
                pass


async def test_guard_when_account_already_runs_on_this_host_then_guard_error_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, redis_server)
    async with Guard.from_config(cfg, instance_id="g1", handle_signals=False):
        second = Guard.from_config(cfg, instance_id="g2", handle_signals=False)
        with pytest.raises(GuardError, match="already runs on this host") as refused:
            async with second:
                pass
    assert refused.value.exit_code == 2


def test_public_api_when_imported_from_package_root_then_lazy_and_complete() -> None:
    # The root names every public type; importing a core module loads no runtime.
    code = (
        "import sys, guardrails, guardrails.keys\n"
        "assert 'guardrails.runtime.guard' not in sys.modules, 'runtime loaded eagerly'\n"
        "from guardrails import Guard, Context, Intent, Side, Strategy, param_decimal\n"
        "names = [n for n in guardrails.__all__ if n != '__version__']\n"
        "missing = [n for n in names if getattr(guardrails, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert Guard.__module__ == 'guardrails.runtime.guard'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
