"""The prune sweep under damage, against a real redis-server and a real archive file: a
tombstone bucket that is not whole 6-byte entries fails closed (the gate denies
``bad_state``, the sweep removes nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.model import Denied, DenyReason
from guardrails.prune import PruneError, read_archive, tombstone
from tests.gatekit import HOLDER, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer
from tests.test_prune import HOUR, gate, place, pruner, updated


@pytest.fixture
async def acct(redis_client: aioredis.Redis) -> AccountKeys:
    keys = account_keys()
    await seed(redis_client, keys, risk())
    return keys


async def canceled(r: aioredis.Redis, keys: AccountKeys, *iids: str) -> tuple[list[str], int]:
    """Orders admitted and canceled; their coids and a ``now_ms`` that makes them old."""
    ledger = Ledger(r, keys, risk())
    coids = []
    for iid in iids:
        c = await place(r, keys, iid)
        await ledger.mark_canceled(c, "x")
        coids.append(c)
    return coids, max([await updated(r, keys, c) for c in coids]) + 2 * HOUR


# -- a damaged tombstone bucket ---------------------------------------------------------------


async def test_admit_when_tomb_bucket_not_whole_entries_then_bad_state_never_admitted(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    # Arrange: a pruned intent whose bucket gained one stray byte in front (a partial
    # write, a tool that "fixed" it): every fingerprint in it is now off its boundary
    r = redis_client
    (coid,), now = await canceled(r, acct, "shifted")
    await pruner(r, acct, tmp_path).sweep(now_ms=now)
    raw = redis.Redis(port=redis_server.port)
    bucket, _ = tombstone("shifted")
    raw.hset(acct.tombstones, bucket, b"x" + raw.hget(acct.tombstones, bucket))
    raw.close()
    # Act: the late retry of the pruned intent
    d = await gate(r, acct).admit(buy("0.0010"), intent_id="shifted", token=TOKEN,
                                  holder_id=HOLDER)
    # Assert: denied bad_state naming the bucket, nothing recreated
    assert isinstance(d, Denied) and d.reason is DenyReason.BAD_STATE, d
    assert bucket in d.detail and "6" in d.detail, d.detail
    assert not await r.exists(acct.order(coid))
    assert not await r.hexists(acct.intents, "shifted")


async def test_sweep_when_tomb_bucket_not_whole_entries_then_refused_and_nothing_removed(
    redis_server: RedisServer, redis_client: aioredis.Redis, acct: AccountKeys, tmp_path: Path
) -> None:
    """Appending to a shifted bucket would write a tombstone the gate never finds (off its
    6-byte boundary): the script refuses instead, writing nothing."""
    r = redis_client
    (coid,), now = await canceled(r, acct, "next")
    bucket, _ = tombstone("next")
    await r.hset(acct.tombstones, bucket, "12345")  # 5 bytes: not whole entries
    p = pruner(r, acct, tmp_path)
    with pytest.raises(PruneError, match=f"{bucket}.*6"):
        await p.sweep(now_ms=now)
    assert await r.exists(acct.order(coid)) and await r.hexists(acct.intents, "next")
    assert await r.hget(acct.tombstones, bucket) == "12345"
    assert read_archive(p.archive.path).orders == {}
