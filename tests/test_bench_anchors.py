"""bench/anchors.py: the reference points the gate bench reports are what they claim."""

from __future__ import annotations

import redis.asyncio as aioredis

from bench.anchors import FENCED_LUA, Anchors


def test_fenced_anchor_is_a_30_line_lua_gate() -> None:
    assert len(FENCED_LUA.strip("\n").splitlines()) == 30


async def test_fenced_anchor_when_admitted_then_fenced_and_idempotent(
    redis_client: aioredis.Redis,
) -> None:
    a = Anchors(redis_client)
    await a.seed()
    first = await a.fenced(1)
    assert int(first[0]) == 0 and int(first[1]) == 0
    # the same intent again is a duplicate (fenced() refuses anything but a fresh admit)
    script = redis_client.register_script(FENCED_LUA)
    keys = ["bench:anchor:lease", "bench:anchor:kill", "bench:anchor:intents",
            "bench:anchor:pos", "bench:anchor:order:1", "bench:anchor:open",
            "bench:anchor:journal"]
    args = ["1", "a-1", "0.01", "60000.00", "1000000000", "1000000000"]
    again = await script(keys=keys, args=args)
    assert int(again[0]) == 0 and int(again[1]) == 1
    # another token is refused, and so is everything once the lease is gone
    stale = await script(keys=keys, args=["2", *args[1:]])
    assert int(stale[0]) == 4
    await redis_client.delete("bench:anchor:lease")
    gone = await script(keys=keys, args=args)
    assert int(gone[0]) == 4  # GET returns nil: not our token
    await a.lock_cycle()
    assert await redis_client.exists("bench:anchor:lock") == 0
