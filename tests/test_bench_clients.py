"""bench/clients.py: every figure is a count of fresh admissions, and a client that errs
or is refused is a broken row, never a number."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from bench import clients, gatesetup
from bench.account import account, intent
from bench.core import INFO, NOT_MEASURED
from guardrails.keys import AccountKeys
from tests.conftest import RedisServer

KEYS = AccountKeys(account())


def test_admitted_when_reply_is_not_a_fresh_admission_then_false() -> None:
    fresh = [0, 0, 1, 123, -1, "BTC-USD", "buy", "0.01", "60000"]
    assert clients.admitted([fresh])  # the script answers a batch of one
    assert not clients.admitted(fresh)  # not the reply of a batch
    assert not clients.admitted([fresh, fresh])  # nor of a batch of two
    assert not clients.admitted([[0, 1, *fresh[2:]]])  # a duplicate is not a fresh admission
    assert not clients.admitted([[7, "lease not held"]])  # a denial
    assert not clients.admitted([[False, 0, *fresh[2:]]])  # a bool is not the code 0
    assert not clients.admitted([[b"0", 0, *fresh[2:]]])  # neither is a string
    assert not clients.admitted(b"OK")


@contextlib.asynccontextmanager
async def _bench(server: RedisServer) -> AsyncIterator[tuple[aioredis.Redis, list[Any]]]:
    """The bench's clients on a seeded account (coredis / valkey-glide: when installed).
    Not a fixture: coredis's anyio task group must be left by the task that entered it."""
    client = aioredis.Redis.from_url(server.url, decode_responses=True,
                                     client_name="bench-redis-py")
    try:
        async with contextlib.AsyncExitStack() as stack:
            gate = await gatesetup.seed(client, account())
            await gatesetup.admit(gate, intent(0))
            subjects = await clients._subjects(stack, server.url, server.port,
                                               client, gate)
            yield client, subjects
    finally:
        await client.aclose()


async def _admitted(client: aioredis.Redis) -> int:
    return int(await client.hget(KEYS.stats, "admitted") or 0)


async def test_sequential_when_the_lease_is_lost_then_every_client_is_a_broken_row(
    redis_server: RedisServer,
) -> None:
    async with _bench(redis_server) as (client, subjects):
        # Arrange: a few rounds in which every installed client admits every fresh intent
        counter = itertools.count(1)
        await clients._sequential(subjects, counter, 5, 1)
        installed = [s for s in subjects if s.missing is None]
        assert [(s.name, s.errors, len(s.lat["decide"])) for s in installed] == [
            (s.name, 0, 5) for s in installed]
        assert await _admitted(client) == 1 + 6 * len(installed)

        # Act: the lease goes, so every later decision is a denial
        await client.delete(KEYS.lease)
        await clients._sequential(subjects, counter, 3, 0)
        rows = clients.rows_for(subjects, rounds=8, rate_rounds=0, per_round=0, inside_us=0.0)

    # Assert: each client's denials are counted as errors and no row carries a number
    assert [s.errors for s in installed] == [3] * len(installed)
    assert all(r.status == NOT_MEASURED for r in rows), [r.measured for r in rows]
    assert "redis-py, the baseline, is broken: 3 error(s)" in rows[0].measured


async def test_rows_when_one_client_repeats_an_intent_then_only_its_rows_are_broken(
    redis_server: RedisServer,
) -> None:
    async with _bench(redis_server) as (client, subjects):
        # Arrange: the gate's path is handed intent 0 (already admitted) every time
        gate = next(s for s in subjects if s.name == "gate")
        gate.prepare = lambda _: intent(0)

        # Act
        counter = itertools.count(1)
        await clients._sequential(subjects, counter, 4, 0)
        await clients._throughput(subjects, counter, 1, 100, client)
        rows = {r.figure: r for r in clients.rows_for(subjects, rounds=4, rate_rounds=1,
                                                       per_round=100, inside_us=0.0)}

    # Assert: the duplicate is an error, never a sample; the others still have figures
    assert gate.errors >= 4 and gate.lat["decide"] == [] and not gate.usable
    assert f"in {gate.calls} calls (first: RuntimeError: bench intent was not freshly " \
        "admitted" in (gate.broken() or "")
    assert rows["gate: decision p50 / p99"].status == NOT_MEASURED
    rp = rows["redis-py: decision p50 / p99"]
    assert rp.status == INFO and "× redis-py PING" in rp.measured and "× gate" not in rp.measured
    assert rows["redis-py: admits/s at 64 concurrent"].status == INFO
