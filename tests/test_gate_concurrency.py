"""4 processes x 150 concurrent intents against one account with a binding limit."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from tests.conftest import ROOT, subprocess_env
from tests.gatekit import SYMBOL, account_keys, risk_for_load, seed
from tests.redis_harness import RedisServer

WORKERS = 4
PER_WORKER = 150


async def _seed(url: str) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await seed(r, account_keys("load"), risk_for_load())
    finally:
        await r.aclose()


@pytest.mark.slow
def test_admit_when_four_processes_race_a_binding_limit_then_exactly_the_allowed_count(
    redis_server: RedisServer,
) -> None:
    # Arrange: max_position 0.1 BTC; every intent buys 0.001 -> exactly 100 fit
    keys = account_keys("load")
    asyncio.run(_seed(redis_server.url))
    client = redis_server.client()
    procs: list[subprocess.Popen[str]] = []
    try:
        # Act
        for w in range(WORKERS):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.gate_load", redis_server.url, f"w{w}",
                 str(PER_WORKER)],
                cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            ))
        results = []
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Assert: from the processes' own records and from Redis
    admitted = [c for r in results for c in r["admitted"]]
    denied = [d for r in results for d in r["denied"]]
    assert len(admitted) == 100, (len(admitted), set(denied))
    assert len(set(admitted)) == 100
    assert set(denied) == {"position_limit"} and len(denied) == WORKERS * PER_WORKER - 100
    res = client.hgetall(keys.reservations)
    assert res[f"{SYMBOL}:buy"] == "1000"  # 100 x 10 lots: the limit, exactly
    assert client.scard(keys.open_orders) == 100
    stats = client.hgetall(keys.stats)
    client.close()
    assert stats["admitted"] == "100"
    assert stats["denied:position_limit"] == str(WORKERS * PER_WORKER - 100)
