"""The kill switch as the gate enforces it: `guardrails kill` runs as a separate process
while orders are being submitted through the real gate; the proof comes from Redis's
own journal (stream ids are Redis's execution order) and the order records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from decimal import Decimal

import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.killswitch import KillSwitch
from guardrails.model import Admitted, Denied, DenyReason, Intent, Side, TradingState
from tests import opskit
from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "guardrails", *argv], env=subprocess_env(),
        capture_output=True, text=True, timeout=60,
    )


async def test_kill_when_loop_submits_then_nothing_admitted_after_kill_returns(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: a submit loop through the gate (resting 1-lot bids, distinct intents)
    await opskit.seed(redis_client)
    results: list[tuple[float, float, Admitted | Denied]] = []
    stop = asyncio.Event()
    five_admitted = asyncio.Event()

    async def loop() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            intent = Intent(opskit.BTC, Side.BUY, Decimal("0.0001"), Decimal("59500"),
                            intent_id=f"loop-{n}")
            started = time.time()
            decision = await opskit.admit(redis_client, intent)
            results.append((started, time.time(), decision))
            if sum(isinstance(d, Admitted) for _, _, d in results) >= 5:
                five_admitted.set()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(loop())
    try:
        await asyncio.wait_for(five_admitted.wait(), 30)

        # Act: kill from a separate process, then keep submitting for a while
        done = await _cli("kill", "--account", str(opskit.ACCOUNT), "--reason", "loop test",
                          "--redis-url", redis_server.url, "--confirm-timeout", "0.2")
        returned = time.time()
        await asyncio.sleep(1.5)
    finally:
        stop.set()
        await task

    # Assert: the command wrote and verified the kill (no runtime runs here to confirm it:
    # exit 3, "not confirmed by a running instance")
    assert done.returncode == 3, done.stderr
    assert "ACTIVE -> HALTED" in done.stdout
    # Redis's own order: every admission precedes the kill's journal entry
    journal = await redis_client.xrange(opskit.KEYS.journal)
    kill_ids = [_stream_id(i) for i, f in journal if f.get("ev") == "trading_state"]
    admit_ids = [_stream_id(i) for i, f in journal if f.get("ev") == "admit"]
    assert len(kill_ids) == 1 and len(admit_ids) >= 5
    assert max(admit_ids) < kill_ids[0]
    # ...and no request started after the command returned was admitted
    after = [d for started, _, d in results if started >= returned]
    assert len(after) >= 5
    assert all(isinstance(d, Denied) and d.reason is DenyReason.HALTED for d in after)
    # ...and every order on record was created no later than the latch was set
    kill_at = int(await redis_client.hget(opskit.KEYS.state, "at_ms"))
    coids = await redis_client.smembers(opskit.KEYS.open_orders)
    assert len(coids) >= 5
    for coid in coids:
        assert int(await redis_client.hget(opskit.KEYS.order(coid), "created_ms")) <= kill_at


async def test_kill_reduce_only_when_long_then_only_reducing_orders_admitted_until_resume(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: long 0.01 BTC
    await opskit.seed(redis_client)
    await opskit.buy_and_fill(redis_client, "0.01", "60000", "r0")

    # Act
    killed = await _cli("kill", "--account", str(opskit.ACCOUNT), "--reason", "wind down",
                        "--reduce-only", "--redis-url", redis_server.url, "--confirm-timeout", "0.2")
    buy = await opskit.admit(redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.001"),
                                                  Decimal("60000"), intent_id="r-buy"))
    flip = await opskit.admit(redis_client, Intent(opskit.BTC, Side.SELL, Decimal("0.02"),
                                                   Decimal("60000"), intent_id="r-flip"))
    reduce = await opskit.admit(redis_client, Intent(opskit.BTC, Side.SELL, Decimal("0.005"),
                                                     Decimal("60000"), intent_id="r-sell"))
    resumed = await _cli("resume", "--account", str(opskit.ACCOUNT), "--reason", "done",
                         "--redis-url", redis_server.url, "--confirm-timeout", "0.2")
    buy_again = await opskit.admit(redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.001"),
                                                        Decimal("60000"), intent_id="r-buy2"))

    # Assert
    assert killed.returncode == 3 and "ACTIVE -> REDUCING" in killed.stdout  # no runtime here
    assert isinstance(buy, Denied) and buy.reason is DenyReason.REDUCE_ONLY
    assert isinstance(flip, Denied) and flip.reason is DenyReason.REDUCE_ONLY
    assert isinstance(reduce, Admitted)
    assert resumed.returncode == 3 and "REDUCING -> ACTIVE" in resumed.stdout
    assert isinstance(buy_again, Admitted)


async def test_kill_revoke_when_holder_trading_then_its_token_is_refused_even_after_resume(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: the holder is trading
    await opskit.seed(redis_client)
    first = await opskit.admit(redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.001"),
                                                    Decimal("59900"), intent_id="v-1"))
    assert isinstance(first, Admitted)

    # Act
    killed = await _cli("kill", "--account", str(opskit.ACCOUNT), "--reason", "rogue",
                        "--revoke", "--redis-url", redis_server.url, "--confirm-timeout", "0.2")
    await _cli("resume", "--account", str(opskit.ACCOUNT), "--redis-url", redis_server.url,
               "--confirm-timeout", "0.2")
    stale = await opskit.admit(redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.001"),
                                                    Decimal("59900"), intent_id="v-2"))

    # Assert
    assert killed.returncode == 3, killed.stderr  # written; no runtime here to confirm
    assert f"revoked token {opskit.TOKEN} (fence now {opskit.TOKEN + 1})" in killed.stdout
    assert isinstance(stale, Denied)
    assert stale.reason in (DenyReason.STALE_TOKEN, DenyReason.LEASE_EXPIRED)
    assert int(await redis_client.get(opskit.KEYS.fence)) == opskit.TOKEN + 1


async def test_gate_when_latch_below_the_floor_seen_then_latch_lost_and_nothing_reserved(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: a kill this instance saw, then resumed (a newer version: its floor)
    await opskit.seed(redis_client)
    ks = KillSwitch(redis_client, opskit.KEYS)
    killed = await ks.set_state(TradingState.HALTED, reason="k", by="o@h")
    floor = (await ks.set_state(TradingState.ACTIVE, reason="r", by="o@h")).version
    gate = OrderGate(redis_client, opskit.KEYS, opskit.RISK, latch_floor=lambda: floor)

    async def admit(n: int) -> Admitted | Denied:
        return await gate.admit(Intent(opskit.BTC, Side.BUY, Decimal("0.0001"),
                                       Decimal("59500"), intent_id=f"f-{n}"),
                                intent_id=f"f-{n}", token=opskit.TOKEN, holder_id=opskit.HOLDER)

    assert isinstance(await admit(1), Admitted)  # the latch seen: trades
    before = await redis_client.hgetall(opskit.KEYS.reservations)

    # Act: Redis loses both writes (the latch is gone), then only the resume
    await redis_client.delete(opskit.KEYS.state)
    gone = await admit(2)
    await redis_client.hset(opskit.KEYS.state,
                            mapping={"state": "HALTED", "version": str(killed.version)})
    older = await admit(3)

    # Assert
    for denied, version in ((gone, 0), (older, killed.version)):
        assert isinstance(denied, Denied) and denied.reason is DenyReason.LATCH_LOST
        assert f"latch is version {version}, below {floor}" in denied.detail
    assert await redis_client.hgetall(opskit.KEYS.reservations) == before
    assert await redis_client.hget(opskit.KEYS.stats, "denied:latch_lost") == "2"
