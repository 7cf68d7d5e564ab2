"""The EVM venue behind the real gate, ledger, Context and reconcile, on a local chain.

A strategy's intents pass the fenced gate (which allocates the wallet nonce in its
atomic step), become transactions, are mined, and reach the position through the
ledger; a revert releases its reservation; a paused former holder's transaction with a
reused nonce is never mined and its order reconciles to EXPIRED.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from decimal import Decimal

from eth_utils import to_checksum_address

from guardrails import limits
from guardrails.gate import OrderGate
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Intent, OrderState, Side
from guardrails.reconcile import reconcile
from guardrails.runtime.context import Context, MarkBook
from guardrails.venues.evm import EvmVenue
from tests.evm_chain import ETH, TKN, ChainProvider, World, take_lease, world

__all__ = ["world"]  # the fixture, imported so pytest finds it here


@dataclass
class Term:
    """A leadership term as Context sees it (a paused process still believes in it)."""

    token: int
    holder_id: str

    def valid(self) -> bool:
        return True


async def active(w: World, holder: str, provider: ChainProvider | None = None
                 ) -> tuple[Context, Ledger, EvmVenue, int]:
    """Take the lease, sync the nonce, seed marks: what the runtime does at takeover."""
    venue = w.venue(provider or ChainProvider(w.chain))
    await venue.start()
    token = await take_lease(w, holder)
    await venue.sync_nonce(token, holder)
    assert await limits.check_or_init(w.redis, w.keys, w.risk, holder) is None
    ledger = Ledger(w.redis, w.keys, w.risk)
    await ledger.update_marks(await venue.marks(list(w.risk.instruments)))
    ctx = Context(holder, gate=OrderGate(w.redis, w.keys, w.risk), ledger=ledger, venue=venue,
                  leadership=Term(token, holder), risk=w.risk, marks=MarkBook(),
                  allocate_nonce=True)
    return ctx, ledger, venue, token


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_strategy_orders_when_admitted_and_mined_then_positions_match_chain(
    world: World,
) -> None:
    # Arrange
    ctx, ledger, venue, _ = await active(world, "A")
    before = await venue.balances()
    # Act: two sells of the token and one of the coin, through the gate.
    decisions = [
        await ctx.submit(Intent(TKN, Side.SELL, Decimal("1.5"), Decimal(2), intent_id="i1")),
        await ctx.submit(Intent(TKN, Side.SELL, Decimal("2.25"), Decimal(2), intent_id="i2")),
        await ctx.submit(Intent(ETH, Side.SELL, Decimal("0.5"), Decimal(3000), intent_id="i3")),
    ]
    report = await reconcile(ledger, venue, now_ms=now_ms())
    after = await venue.balances()
    positions = await ledger.positions()
    # Assert: the gate handed out nonces 0, 1, 2; each order filled once; the ledger's
    # positions equal the on-chain change (the coin's also paid gas).
    assert [d.nonce for d in decisions if isinstance(d, Admitted)] == [0, 1, 2]
    assert report.ok and report.fills_applied == 3
    for d in decisions:
        assert isinstance(d, Admitted)
        rec = await ledger.order(d.client_order_id)
        assert rec is not None and rec.state is OrderState.FILLED
    assert positions[TKN].qty == Decimal("-3.75") == after[TKN] - before[TKN]
    gas = before[ETH] + positions[ETH].qty - after[ETH]
    assert positions[ETH].qty == Decimal("-0.5") and Decimal(0) < gas < Decimal("0.01")
    assert positions[TKN].reserved_sell == 0 and await ledger.open_orders() == []


async def test_strategy_order_when_transaction_reverts_then_rejected_and_reservation_released(
    world: World,
) -> None:
    # Arrange: the wallet's owner moves almost all tokens away first (nonce 0 on chain),
    # so selling 1.5 reverts on-chain.
    tx = world.wallet.sign_transaction({
        "type": 2, "chainId": world.chain.chain_id, "nonce": 0, "to": world.token,
        "value": 0, "gas": 100_000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
        "data": "0xa9059cbb" + world.recipient.lower()[2:].rjust(64, "0")
        + (999 * 10**6).to_bytes(32, "big").hex(),
    })
    world.chain.tester.send_raw_transaction("0x" + bytes(tx.raw_transaction).hex())
    ctx, ledger, _, _ = await active(world, "A")
    # Act
    decision = await ctx.submit(Intent(TKN, Side.SELL, Decimal("1.5"), Decimal(2),
                                       intent_id="too-much"))
    # Assert
    assert isinstance(decision, Admitted) and decision.nonce == 1
    rec = await ledger.order(decision.client_order_id)
    assert rec is not None and rec.state is OrderState.REJECTED and "reverted" in rec.reason
    view = (await ledger.positions()).get(TKN)
    assert view is None or (view.qty == 0 and view.reserved_sell == 0)
    assert (await ledger.budget()).reserved_worst_loss == 0
    assert world.chain.nonce(world.wallet.address) == 2
    assert world.chain.token_balance(to_checksum_address(world.token),
                                     world.wallet.address) == 10**6


async def test_paused_holder_when_it_wakes_after_takeover_then_order_expired_and_not_mined(
    world: World,
) -> None:
    # Arrange: A is admitted nonce 0 by the gate, binds its transaction, then stalls.
    provider_a = ChainProvider(world.chain)
    provider_a.hold_send = asyncio.Event()
    ctx_a, _, _, token_a = await active(world, "A", provider_a)
    task_a = asyncio.create_task(
        ctx_a.submit(Intent(TKN, Side.SELL, Decimal(1), Decimal(2), intent_id="a-1")))
    await asyncio.wait_for(provider_a.sending.wait(), 30)
    # A's lease expires; B takes over: nonce sync from the chain, then reconcile.
    await world.redis.delete(world.keys.lease)
    ctx_b, ledger, venue_b, token_b = await active(world, "B")
    first = await reconcile(ledger, venue_b, now_ms=now_ms())
    # B's strategy trades: the gate hands out nonce 0 again; B's transaction is mined.
    decision_b = await ctx_b.submit(Intent(TKN, Side.SELL, Decimal(3), Decimal(2),
                                           intent_id="b-1"))
    second = await reconcile(ledger, venue_b, now_ms=now_ms())

    # Act: A wakes and its transaction (nonce 0) reaches the node.
    provider_a.hold_send.set()
    decision_a = await asyncio.wait_for(task_a, 30)

    # Assert
    assert token_b > token_a
    assert isinstance(decision_a, Admitted) and decision_a.nonce == 0
    assert isinstance(decision_b, Admitted) and decision_b.nonce == 0
    assert first.held == [decision_a.client_order_id]  # may still be mined: kept
    rec_a = await ledger.order(decision_a.client_order_id)
    rec_b = await ledger.order(decision_b.client_order_id)
    assert rec_a is not None and rec_a.state is OrderState.EXPIRED
    assert rec_b is not None and rec_b.state is OrderState.FILLED
    assert [t[2] for t in second.transitions if t[0] == decision_a.client_order_id] == ["EXPIRED"]
    assert world.chain.nonce(world.wallet.address) == 1
    assert world.chain.token_balance(world.token, world.recipient) == 3 * 10**6
    positions = await ledger.positions()
    assert positions[TKN].qty == Decimal(-3) and positions[TKN].reserved_sell == 0
