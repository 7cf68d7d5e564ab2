"""The EVM wallet venue on a local chain the tests start themselves (eth-tester + py-evm).

Every test runs real transactions: py-evm checks signatures, nonces, balances and gas,
mines blocks and reverts. Redis is a real redis-server from the harness. The lease is
taken with the real ``Lease``; nonces are allocated exactly as the gate's script does it
(read ``keys.nonce``, hand it out, INCR) by ``allocate_nonce`` below — the tests in
``test_venue_evm_gate.py`` use the real gate and ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal

import pytest
from eth_account import Account

from guardrails import redacted
from guardrails.model import Side, client_order_id_for
from guardrails.venues.base import (
    Accepted,
    Rejected,
    Unknown,
    Venue,
    VenueError,
    VenueOrderState,
)
from guardrails.venues.evm import NATIVE_BALANCE, EvmVenue, NotHolder
from tests.evm_chain import (
    DECIMALS,
    ETH,
    START_TKN,
    TKN,
    TKN_CALL,
    ChainProvider,
    World,
    allocate_nonce,
    holder,
    order,
    take_lease,
    world,
)

__all__ = ["world"]  # the fixture, imported so pytest finds it here

# -- start-up checks ----------------------------------------------------------------------


async def test_start_when_chain_id_differs_then_refuses(world: World) -> None:
    # Arrange
    venue = world.venue(chain_id=world.chain.chain_id + 1)
    # Act / Assert
    with pytest.raises(VenueError, match="chain id mismatch"):
        await venue.start()


async def test_start_when_key_is_not_the_wallet_then_refuses(world: World) -> None:
    venue = EvmVenue(world.venue_cfg(), world.account, Account.create(), redis=world.redis,
                     risk=world.risk, provider=ChainProvider(world.chain))
    with pytest.raises(VenueError, match="not the account's wallet"):
        await venue.start()


async def test_start_when_instrument_has_no_template_then_refuses(world: World) -> None:
    cfg = world.venue_cfg()
    orders = {k: v for k, v in cfg.orders.items() if k != ETH}
    venue = world.venue(orders={k: v.model_dump() for k, v in orders.items()})
    with pytest.raises(VenueError, match="no transaction template for: ETH"):
        await venue.start()


async def test_venue_when_built_then_satisfies_the_protocol(world: World) -> None:
    assert isinstance(world.venue(), Venue)


# -- nonce sync -------------------------------------------------------------------------


async def test_sync_nonce_when_not_the_lease_holder_then_refused_and_unchanged(
    world: World,
) -> None:
    # Arrange
    venue = world.venue()
    token = await take_lease(world, "B")
    await world.redis.set(world.keys.nonce, 7)
    # Act / Assert
    with pytest.raises(NotHolder):
        await venue.sync_nonce(token, "A")
    with pytest.raises(NotHolder):
        await venue.sync_nonce(token - 1, "B")
    assert await world.redis.get(world.keys.nonce) == "7"


async def test_sync_nonce_when_holder_then_set_to_chain_pending_nonce_even_backwards(
    world: World,
) -> None:
    venue = world.venue()
    token = await take_lease(world, "B")
    await world.redis.set(world.keys.nonce, 9)  # allocated, never sent
    synced = await venue.sync_nonce(token, "B")
    assert synced == world.chain.nonce(world.wallet.address) == 0
    assert await world.redis.get(world.keys.nonce) == "0"


# -- submit / lookup ----------------------------------------------------------------------


async def test_submit_when_erc20_sell_then_mined_and_lookup_reports_one_fill(
    world: World,
) -> None:
    # Arrange
    venue, _, token = await holder(world, "A")
    o = order("sell-1", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    # Act
    result = await venue.submit(o)
    status = await venue.lookup(o.client_order_id)
    # Assert
    assert isinstance(result, Accepted)
    assert status.state is VenueOrderState.FILLED
    assert [f.fill_id for f in status.fills] == [result.venue_order_id]
    fill = status.fills[0]
    assert (fill.symbol, fill.side, fill.qty, fill.price) == (TKN, Side.SELL, Decimal("1.5"),
                                                              Decimal(2))
    assert world.chain.token_balance(world.token, world.recipient) == 1_500_000


async def test_submit_when_native_and_call_templates_then_values_map_exactly(
    world: World,
) -> None:
    venue, _, token = await holder(world, "A")
    before = world.chain.balance(world.recipient)
    eth = order("eth-1", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                symbol=ETH, qty="0.25", price="3000")
    call = order("call-1", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                 symbol=TKN_CALL, side=Side.BUY, qty="2.5")
    assert isinstance(await venue.submit(eth), Accepted)
    assert isinstance(await venue.submit(call), Accepted)
    assert world.chain.balance(world.recipient) - before == 25 * 10**16
    assert world.chain.token_balance(world.token, world.recipient) == 2_500_000
    assert (await venue.lookup(call.client_order_id)).state is VenueOrderState.FILLED


async def test_submit_when_same_order_sent_twice_then_one_transaction(world: World) -> None:
    venue, _, token = await holder(world, "A")
    o = order("dup", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    first = await venue.submit(o)
    second = await venue.submit(o)
    assert isinstance(first, Accepted)
    # The re-send is the same signed bytes: the chain has it mined already.
    assert isinstance(second, Accepted | Rejected)
    assert world.chain.nonce(world.wallet.address) == 1
    assert world.chain.token_balance(world.token, world.recipient) == 1_500_000
    assert (await venue.lookup(o.client_order_id)).state is VenueOrderState.FILLED


async def test_submit_when_transfer_reverts_then_rejected_and_lookup_rejected(
    world: World,
) -> None:
    # Arrange: the wallet holds 1000 TKN; selling 2000 reverts on-chain.
    venue, _, token = await holder(world, "A")
    o = order("too-big", token=token, nonce=await allocate_nonce(world.redis, world.keys),
              qty="2000")
    # Act
    result = await venue.submit(o)
    # Assert: mined with status 0 (nonce used), reported as a rejection.
    assert isinstance(result, Rejected) and "reverted" in result.reason
    assert world.chain.nonce(world.wallet.address) == 1
    assert (await venue.lookup(o.client_order_id)).state is VenueOrderState.REJECTED
    assert world.chain.token_balance(world.token, world.wallet.address) == START_TKN


async def test_submit_when_order_cannot_map_then_rejected_and_nonce_filled(world: World) -> None:
    # Arrange: a BUY on a transfer template has no transaction; its nonce must not gap.
    venue, _, token = await holder(world, "A")
    bad = order("buy-native", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                symbol=ETH, side=Side.BUY, qty="0.1", price="3000")
    good = order("after", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    # Act
    rejected = await venue.submit(bad)
    accepted = await venue.submit(good)
    # Assert
    assert isinstance(rejected, Rejected) and "SELL" in rejected.reason
    assert isinstance(accepted, Accepted)
    assert world.chain.nonce(world.wallet.address) == 2
    assert (await venue.lookup(bad.client_order_id)).state is VenueOrderState.REJECTED
    assert (await venue.lookup(good.client_order_id)).state is VenueOrderState.FILLED


async def test_submit_when_no_nonce_then_rejected_without_sending(world: World) -> None:
    venue, _, token = await holder(world, "A")
    result = await venue.submit(order("nonce-less", token=token, nonce=None))
    assert isinstance(result, Rejected) and "allocate_nonce" in result.reason
    assert world.chain.nonce(world.wallet.address) == 0


async def test_submit_when_past_deadline_then_not_sent_nonce_filled_and_lookup_final(
    world: World,
) -> None:
    # Arrange: an order whose permit ran out before it reached the venue.
    venue, _, token = await holder(world, "A")
    past = int(time.time() * 1000) - 5_000
    late = order("late", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                 deadline_ms=past)
    nxt = order("next", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    # Act
    before = await venue.lookup(late.client_order_id, deadline_ms=past)
    result = await venue.submit(late)
    after = await venue.lookup(late.client_order_id, deadline_ms=past)
    # Assert: never sent; the ledger may expire it; its nonce is used by a filler, so the
    # next order is mined.
    assert before.state is VenueOrderState.NOT_FOUND and not before.can_still_arrive
    assert isinstance(result, Rejected) and "deadline" in result.reason
    assert after.state is VenueOrderState.REJECTED
    assert isinstance(await venue.submit(nxt), Accepted)
    assert world.chain.nonce(world.wallet.address) == 2
    assert world.chain.token_balance(world.token, world.recipient) == 1_500_000


async def test_lookup_when_never_bound_then_can_arrive_until_deadline(world: World) -> None:
    venue, _, _ = await holder(world, "A")
    coid = client_order_id_for("never")
    now = int(time.time() * 1000)
    live = await venue.lookup(coid, deadline_ms=now + 60_000)
    dead = await venue.lookup(coid, deadline_ms=now - 60_000)
    blind = await venue.lookup(coid)
    assert live.state is VenueOrderState.NOT_FOUND and live.can_still_arrive
    assert dead.state is VenueOrderState.NOT_FOUND and not dead.can_still_arrive
    assert blind.can_still_arrive


async def test_submit_when_response_lost_and_node_unreachable_then_unknown_then_reconciled(
    world: World,
) -> None:
    # Arrange
    venue, provider, token = await holder(world, "A")
    o = order("lost", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    provider.lose_send_response = True
    # Act
    result = await venue.submit(o)
    # Assert: unknown, not rejected; once the node answers again it is found, not re-sent.
    assert isinstance(result, Unknown)
    provider.down = False
    provider.lose_send_response = False
    status = await venue.lookup(o.client_order_id)
    assert status.state is VenueOrderState.FILLED
    assert world.chain.nonce(world.wallet.address) == 1


async def test_lookup_when_pending_then_open_and_when_nonce_replaced_then_expired(
    world: World,
) -> None:
    # Arrange: manual mining so the transaction waits in the pool.
    venue, _, token = await holder(world, "A")
    world.chain.tester.disable_auto_mine_transactions()
    o = order("pending", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    assert isinstance(await venue.submit(o), Accepted)
    # Act / Assert: pending may still be mined -> keeps its reservation
    pending = await venue.lookup(o.client_order_id)
    assert pending.state is VenueOrderState.OPEN and pending.can_still_arrive
    assert isinstance(await venue.cancel(o.client_order_id), Unknown)
    # Another transaction with the same nonce (the wallet's owner replaces it) is mined.
    replacement = world.wallet.sign_transaction({
        "type": 2, "chainId": world.chain.chain_id, "nonce": 0, "to": world.wallet.address,
        "value": 0, "gas": 21_000, "maxFeePerGas": 2 * 10**10, "maxPriorityFeePerGas": 2 * 10**9,
    })
    world.chain.tester.send_raw_transaction("0x" + bytes(replacement.raw_transaction).hex())
    world.chain.tester.mine_blocks(1)
    world.chain.tester.enable_auto_mine_transactions()
    expired = await venue.lookup(o.client_order_id)
    assert expired.state is VenueOrderState.EXPIRED and not expired.can_still_arrive
    assert world.chain.token_balance(world.token, world.recipient) == 0


async def test_cancel_when_unsent_then_voided_and_when_filled_then_final(world: World) -> None:
    # Arrange
    venue, _, token = await holder(world, "A")
    unsent = order("c-unsent", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    filled = order("c-filled", token=token, nonce=await allocate_nonce(world.redis, world.keys))
    # Act: cancel before it is sent (unknown here: voided); the runtime's submit then
    # arrives late.
    canceled = await venue.cancel(unsent.client_order_id)
    late = await venue.submit(unsent)
    sent = await venue.submit(filled)
    # Assert: nothing of the voided order is sent; its nonce is filled, so the next
    # order (nonce 1) is mined; cancelling a mined order reports it final.
    assert isinstance(canceled, Rejected) and "voided" in canceled.reason
    assert isinstance(late, Rejected)
    assert isinstance(sent, Accepted)
    assert isinstance(await venue.cancel(filled.client_order_id), Accepted)
    assert (await venue.lookup(unsent.client_order_id)).state is VenueOrderState.CANCELED
    assert (await venue.lookup(filled.client_order_id)).state is VenueOrderState.FILLED
    assert world.chain.token_balance(world.token, world.recipient) == 1_500_000


# -- the paused former holder --------------------------------------------------------------


async def test_paused_holder_when_it_wakes_after_takeover_then_its_nonce_is_not_mined_twice(
    world: World,
) -> None:
    # Arrange: A holds the lease, is admitted nonce 0, signs and binds its transaction,
    # then stalls before it reaches the node (a GC pause, SIGSTOP, a hung socket).
    venue_a, provider_a, token_a = await holder(world, "A")
    order_a = order("a-order", token=token_a, nonce=await allocate_nonce(world.redis, world.keys))
    provider_a.hold_send = asyncio.Event()
    task_a = asyncio.create_task(venue_a.submit(order_a))
    await asyncio.wait_for(provider_a.sending.wait(), 30)
    # A's lease expires; B takes over, syncs the nonce from the chain, reconciles A's order.
    await world.redis.delete(world.keys.lease)
    provider_b = ChainProvider(world.chain)
    venue_b = world.venue(provider_b)
    await venue_b.start()
    token_b = await take_lease(world, "B")
    assert token_b > token_a
    assert await venue_b.sync_nonce(token_b, "B") == 0
    seen_by_b = await venue_b.lookup(order_a.client_order_id)
    assert seen_by_b.state is VenueOrderState.NOT_FOUND and seen_by_b.can_still_arrive
    # B's own order gets nonce 0 again, and is mined.
    order_b = order("b-order", token=token_b, nonce=await allocate_nonce(world.redis, world.keys),
                    qty="3")
    assert order_b.nonce == order_a.nonce == 0
    assert isinstance(await venue_b.submit(order_b), Accepted)

    # Act: A wakes and sends its transaction with the used nonce; then tries a new order.
    provider_a.hold_send.set()
    result_a = await asyncio.wait_for(task_a, 30)
    provider_a.hold_send = None
    fresh_a = await venue_a.submit(order("a-fresh", token=token_a, nonce=1))

    # Assert: the chain refused A's transaction; only B's was mined.
    assert isinstance(result_a, Rejected) and "already used" in result_a.reason
    assert isinstance(fresh_a, Rejected) and "fenced" in fresh_a.reason
    assert world.chain.nonce(world.wallet.address) == 1
    assert world.chain.token_balance(world.token, world.recipient) == 3 * 10**DECIMALS
    assert (await venue_b.lookup(order_a.client_order_id)).state is VenueOrderState.EXPIRED
    assert (await venue_b.lookup(order_b.client_order_id)).state is VenueOrderState.FILLED
    assert (await venue_a.lookup(client_order_id_for("a-fresh"))).state is (
        VenueOrderState.NOT_FOUND
    )


# -- fills and balances -------------------------------------------------------------------


async def test_fills_since_when_orders_mined_then_each_fill_once_with_advancing_cursor(
    world: World,
) -> None:
    venue, _, token = await holder(world, "A")
    orders = [order(f"f{i}", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                    qty="1") for i in range(3)]
    for o in orders:
        assert isinstance(await venue.submit(o), Accepted)
    first = await venue.fills_since(None)
    again = await venue.fills_since(first.cursor)
    assert sorted(f.client_order_id for f in first.fills) == sorted(
        o.client_order_id for o in orders)
    assert first.cursor == "3" and list(again.fills) == []


async def test_balances_when_orders_filled_then_on_chain_change_equals_filled_position(
    world: World,
) -> None:
    # Arrange
    venue, _, token = await holder(world, "A")
    before = await venue.balances()
    sells = [("TKN", "1.5"), ("TKN", "2.25"), ("ETH", "0.5")]
    for i, (sym, qty) in enumerate(sells):
        o = order(f"b{i}", token=token, nonce=await allocate_nonce(world.redis, world.keys),
                  symbol=sym, qty=qty)
        assert isinstance(await venue.submit(o), Accepted)
    # Act
    after = await venue.balances()
    batch = await venue.fills_since(None)
    position: dict[str, Decimal] = {}
    for f in batch.fills:
        position[f.symbol] = position.get(f.symbol, Decimal(0)) + f.side.sign * f.qty
    # Assert: the token moves exactly; the coin moves by the sale plus gas.
    assert before[TKN] == Decimal(1000)
    assert after[TKN] - before[TKN] == position[TKN] == Decimal("-3.75")
    gas = before[ETH] - after[ETH] + position[ETH]
    assert position[ETH] == Decimal("-0.5") and Decimal(0) < gas < Decimal("0.01")
    assert after[NATIVE_BALANCE] == after[ETH]


async def test_marks_when_templates_have_marks_then_reported(world: World) -> None:
    venue = world.venue()
    assert await venue.marks([TKN, ETH, "NOPE"]) == {TKN: Decimal(2), ETH: Decimal(3000)}


async def test_logs_when_orders_flow_then_every_line_is_one_event(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails")
    venue, _, token = await holder(world, "A")
    await venue.submit(order("log-1", token=token,
                             nonce=await allocate_nonce(world.redis, world.keys)))
    events = [r.getMessage() for r in caplog.records if r.name.startswith("guardrails.venues")]
    assert any(e.startswith("event=evm.sent ") for e in events)
    assert any(e.startswith("event=evm.nonce_synced ") for e in events)


async def test_make_venue_when_evm_config_then_builds_evm_venue_with_key_from_env(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: a whole config as `guardrails run` would load it.
    from guardrails.config import parse_config
    from guardrails.venues import make_venue

    monkeypatch.setenv("GUARDRAILS_EVM_KEY", "0x" + bytes(world.wallet.key).hex())
    cfg = parse_config({
        "account": {"venue": world.account.venue, "id": world.wallet.address},
        "risk": world.risk.model_dump(mode="json"),
        "venue": world.venue_cfg().model_dump(mode="json"),
    })
    # Act
    venue = make_venue(cfg, world.redis)
    # Assert
    assert isinstance(venue, EvmVenue)
    assert venue.address == world.wallet.address
    assert repr(venue) == f"EvmVenue(account={world.account}, chain_id={world.chain.chain_id})"


async def test_start_when_gas_limit_above_block_limit_then_refuses(world: World) -> None:
    venue = world.venue(gas_limit=10**12)
    with pytest.raises(VenueError, match="block gas limit"):
        await venue.start()


async def test_start_when_rpc_url_carries_an_api_key_then_errors_name_the_host_only(
    world: World,
) -> None:
    # Arrange: a provider's key in the path (https://eth-mainnet.example/v2/<key>)
    key = "RpcKey0a1b2c3d4e5f60718293"
    venue = world.venue(chain_id=world.chain.chain_id + 1,
                        rpc_url=f"https://user:pw0rd@rpc.example:8545/v2/{key}?x=1")
    # Act
    with pytest.raises(VenueError) as err:
        await venue.start()
    # Assert
    assert "the node at https://rpc.example:8545/… is chain" in str(err.value)
    assert key not in str(err.value) and "pw0rd" not in str(err.value)
    assert key not in redacted.mask_text(f"HTTPError for url: https://rpc.example/v2/{key}")
