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


def test_embedding_doc_example_when_run_then_trades_three_times_and_exits_0(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the example exactly as docs/embedding.md shows it.
    from tests.conftest import subprocess_env

    doc = (Path(__file__).resolve().parent.parent / "docs" / "embedding.md").read_text()
    example = doc.split("```python\n", 1)[1].split("```", 1)[0]
    script = tmp_path / "mybot.py"
    script.write_text(example)

    # Act
    done = subprocess.run([sys.executable, str(script), str(_config(tmp_path, redis_server))],
                          capture_output=True, text=True, timeout=90, env=subprocess_env(),
                          cwd=Path(__file__).resolve().parent.parent)

    # Assert: three admissions under one token, a clean exit, the lease released.
    assert done.returncode == 0, done.stderr[-3000:]
    admitted = [line.split() for line in done.stdout.splitlines() if line.startswith("admitted")]
    assert len(admitted) == 3, done.stdout
    assert len({line[-1] for line in admitted}) == 1
    assert redis_server.client().get(KEYS.lease) is None


async def test_guard_when_term_ends_during_a_pending_submit_then_it_raises_and_is_never_admitted(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # Arrange: a Redis client timeout far beyond the lease's renew deadline, so a submit
    # to a frozen Redis is still pending when the self-fence ends the term.
    cfg = _config(tmp_path, redis_server)
    cfg.write_text(cfg.read_text().replace('socket_timeout = "500ms"', 'socket_timeout = "20s"'))
    guard = Guard.from_config(cfg, instance_id="g1", handle_signals=False)
    raised: list[str] = []
    async with guard:
        with pytest.raises(TermEnded) as ended:
            async with guard.active() as ctx:
                token1 = guard.token
                assert isinstance(await ctx.submit(_bid(1)), Admitted)
                # Act: freeze Redis, then submit: the gate's reply never comes.
                redis_server.pause()
                try:
                    await ctx.submit(_bid(2))
                except BaseException as e:
                    raised.append(type(e).__name__)
                    raise
        # Keep Redis frozen past the lease TTL, so the queued admission meets a dead lease.
        await asyncio.sleep(2.0)
        redis_server.resume()
        async with guard.active() as ctx2:
            token2 = guard.token
            guard.stop()

    # Assert: the pending submit raised (cancelled with its body), the term ended by the
    # self-fence; only the first order was ever admitted (whatever Redis made of the
    # queued admission once thawed, the lease it needed had expired).
    assert raised == ["CancelledError"]
    assert ended.value.token == token1 and ended.value.reason == "lease lost"
    admitted = [f["intent_id"] for _, f in await redis_client.xrange(KEYS.journal)
                if f.get("ev") == "admit"]
    assert admitted == ["t-1"]
    assert token1 is not None and token2 is not None and token2 > token1
    assert ctx2 is not ctx


async def test_guard_when_given_a_venue_factory_then_trades_through_the_venue_it_built(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the factory an embedding (guardrails.ccxt) passes to wrap its own object.
    from guardrails.config import Config
    from guardrails.venues import make_venue
    from guardrails.venues.base import Venue

    built: list[Venue] = []

    def factory(cfg: Config, redis: aioredis.Redis) -> Venue:
        built.append(make_venue(cfg, redis))
        return built[-1]

    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False, venue=factory)

    # Act
    async with guard:
        async with guard.active() as ctx:
            decision = await ctx.submit(_bid(1))
            at_venue = await guard.venue.lookup(decision.client_order_id)
            at_built = await built[0].lookup(decision.client_order_id)
            guard.stop()

    # Assert: one venue, the factory's, received the admitted order.
    assert len(built) == 1
    assert isinstance(decision, Admitted)
    assert at_venue.state.value == "open", at_venue
    assert at_built == at_venue


async def test_guard_venue_when_a_bot_reaches_for_submit_or_cancel_then_refused_reads_work(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # Arrange: a careless bot holding guard.venue would trade outside every limit with
    # its submit (no reservation, no fence); the guard hands out a read-only view.
    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False)
    async with guard:
        async with guard.active() as ctx:
            decision = await ctx.submit(_bid(1))
            assert isinstance(decision, Admitted), decision
            view = guard.venue
            # Act / Assert: reads answer...
            assert (await view.marks(["BTC-USD"]))["BTC-USD"] > 0
            assert (await view.lookup(decision.client_order_id)).state.value == "open"
            assert isinstance(await view.balances(), dict)
            # ...the venue's order calls are not there, with a message saying where to go.
            for name in ("submit", "cancel", "fills_since", "close", "_venue_x"):
                with pytest.raises(AttributeError, match=r"guard.venue is read-only"):
                    getattr(view, name)
            guard.stop()
    # Nothing was sent but the gated order: one open order, one admission.
    assert await redis_client.scard(KEYS.open_orders) == 1


async def test_guard_when_body_swallows_the_cancellation_like_a_client_timeout_then_cancelled_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: a body that, once, turns its cancellation into a TimeoutError and uncancels
    # it — what aiohttp/redis-py timeouts firing at the same moment do (docs/chaos.md).
    guard = Guard.from_config(_config(tmp_path, redis_server), instance_id="g1",
                              handle_signals=False)
    swallowed = 0

    async def client_call() -> None:
        nonlocal swallowed
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
            swallowed += 1
            raise TimeoutError("request timed out") from None

    # Act
    with pytest.raises(TermEnded) as ended:
        async with guard:
            async with guard.active():
                asyncio.get_running_loop().call_later(0.2, _revoke, redis_server)
                with pytest.raises(TimeoutError):
                    await client_call()  # the term's cancel is lost here
                await asyncio.sleep(60)  # ... and repeated: this is cancelled
            pytest.fail("the body went on")

    # Assert: cancelled again after the swallowed one, left as TermEnded of its term.
    assert swallowed == 1
    assert ended.value.reason == "lease lost"


def _revoke(redis_server: RedisServer) -> None:
    """Another holder takes the lease (as after a kill --revoke and a takeover)."""
    redis_server.client().set(KEYS.lease, "999999:someone-else", px=60_000)
