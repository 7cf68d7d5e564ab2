"""A Polymarket trade is a fill only once it is CONFIRMED, and a FAILED one never is: the
unmodified py-clob-client against the CLOB simulator with its settlement held, a real
redis-server, orders admitted by the gate and venue facts applied by the ledger as the
runtime's fill pump and reconciler apply them."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from guardrails.config import load_config
from guardrails.gate import OrderGate
from guardrails.keys import AccountId, AccountKeys
from guardrails.ledger import FillOutcome, Ledger
from guardrails.model import Admitted, Intent, Order, OrderState, Side
from guardrails.reconcile import reconcile
from guardrails.sim.clob import ClobError, ClobExchange
from guardrails.venues import polymarket
from guardrails.venues.base import Accepted, Unknown, VenueError, VenueOrderState
from guardrails.venues.polymarket import PolymarketVenue, TradeCursor
from tests.gatekit import HOLDER, TOKEN, ledger_state, seed
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc
from tests.test_venue_polymarket import (
    MARKET,
    NO,
    RISK,
    TOKENS,
    YES,
    Env,
    _maker_trade,
    make_env,
)
from tests.test_venue_polymarket_processes import World, _spawn
from tests.test_venue_polymarket_processes import procs as procs  # the fixture

QTY = Decimal(10)


class Desk:
    """The account of ``env``'s wallet: orders admitted by the gate and sent by a venue,
    the venue's facts applied by the ledger (``pump`` as ``runtime.services`` does it)."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.keys = AccountKeys(env.venue._account_id)
        self.ledger = Ledger(env.redis, self.keys, RISK)

    async def place(self, side: Side, price: str, *, symbol: str = YES,
                    venue: PolymarketVenue | None = None) -> str:
        """Admit an order, send it, record the answer; its client order id."""
        d = await OrderGate(self.env.redis, self.keys, RISK).admit(
            Intent(symbol, side, QTY, Decimal(price)), intent_id="i-" + uuid.uuid4().hex,
            token=TOKEN, holder_id=HOLDER)
        assert isinstance(d, Admitted) and d.order is not None, d
        result = await (venue or self.env.venue).submit(d.order)
        await self.ledger.record_submit(d.client_order_id, result)
        return d.client_order_id

    async def matched(self, *, then: str = "") -> tuple[str, str]:
        """A buy that crosses the mark and matches at once (taker) while settlement is
        held: (its client order id, its trade id), the trade moved on to ``then`` if given."""
        coid = await self.place(Side.BUY, "0.52")
        [trade_id] = (await settlement(self.env)).keys()
        if then:
            await settlement(self.env, trades={trade_id: then})
        return coid, trade_id

    async def pump(self, cursor: str | None, venue: PolymarketVenue | None = None
                   ) -> tuple[str, list[FillOutcome]]:
        batch = await (venue or self.env.venue).fills_since(cursor)
        return batch.cursor, [await self.ledger.apply_fill(f) for f in batch.fills]

    async def position(self, symbol: str = YES) -> Decimal:
        view = (await self.ledger.positions()).get(symbol)
        return Decimal(0) if view is None else view.qty

    async def state(self, coid: str) -> OrderState:
        record = await self.ledger.order(coid)
        assert record is not None
        return record.state

    async def reserved(self) -> dict[str, str]:
        return {k: v for k, v in (await self.env.redis.hgetall(self.keys.reservations)).items()
                if v not in ("0", "")}


async def settlement(env: Env, **body: Any) -> dict[str, str]:
    """``POST /admin/settlement``: the simulator's unsettled trades after it."""
    import aiohttp

    async with aiohttp.ClientSession() as s, \
            s.post(env.sim.url + "/admin/settlement", json=body) as r:
        assert r.status == 200, await r.text()
        out: dict[str, str] = (await r.json())["unsettled"]
        return out


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              redis_client: aioredis.Redis) -> AsyncIterator[Env]:
    e, sim = await make_env(tmp_path, monkeypatch, redis_client)
    await seed(redis_client, AccountKeys(e.venue._account_id), RISK,
               marks={YES: "0.50", NO: "0.50"})
    await settlement(e, hold=True)
    try:
        yield e
    finally:
        await e.venue.close()
        await sim.stop()


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(f"event={name} ")]


# -- MATCHED is not a fill; CONFIRMED is one, once ------------------------------------


async def test_fills_when_trade_matched_then_not_applied_until_confirmed_then_applied_once(
    env: Env,
) -> None:
    # Arrange: a buy crossing the mark matches at once (taker); settlement is held.
    desk = Desk(env)
    start, _ = await desk.pump(None)
    coid, trade_id = await desk.matched()
    # Act: the pump and the reconciler see the MATCHED trade.
    cursor, outcomes = await desk.pump(start)
    cursor, again = await desk.pump(cursor)
    status = await env.venue.lookup(coid)
    report = await reconcile(desk.ledger, env.venue, now_ms=0)
    # Assert: no fill anywhere — no position, the order still SUBMITTED with its
    # reservation; the venue calls it OPEN (not FILLED) while its trade settles.
    assert outcomes == [] and again == []
    assert trade_id in TradeCursor.parse(cursor).unsettled
    assert status.state is VenueOrderState.OPEN and status.fills == ()
    assert "not settled" in status.detail
    assert report.ok and report.fills_applied == 0
    assert await desk.position() == 0
    assert await desk.state(coid) is OrderState.SUBMITTED
    assert await desk.reserved()

    # Act: the trade is mined, then confirmed on chain.
    await settlement(env, trades={trade_id: "MINED"})
    cursor, mined = await desk.pump(cursor)
    await settlement(env, trades={trade_id: "CONFIRMED"})
    cursor, confirmed = await desk.pump(cursor)
    cursor, after = await desk.pump(cursor)
    report = await reconcile(desk.ledger, env.venue, now_ms=0)
    from_start = [await desk.ledger.apply_fill(f)
                  for f in (await env.venue.fills_since(None)).fills]
    # Assert: applied exactly once, whichever path sees it again.
    assert mined == [] and confirmed == [FillOutcome.APPLIED] and after == []
    assert TradeCursor.parse(cursor).unsettled == {}
    assert from_start == [FillOutcome.DUPLICATE]
    assert report.fills_applied == 0
    assert await desk.position() == QTY
    assert await desk.state(coid) is OrderState.FILLED
    assert not await desk.reserved()
    status = await env.venue.lookup(coid)
    assert status.state is VenueOrderState.FILLED and status.filled_qty == QTY


async def test_lookup_when_trade_matched_then_reconcile_applies_nothing_until_confirmed(
    env: Env,
) -> None:
    # Arrange: the ledger's order is UNKNOWN (the submit's answer was lost), so the
    # reconciler looks it up; its trade is MATCHED.
    desk = Desk(env)
    coid, trade_id = await desk.matched()
    await desk.ledger.mark_unknown(coid, "answer lost")
    # Act
    first = await reconcile(desk.ledger, env.venue, now_ms=0)
    held_state = await desk.state(coid)
    await settlement(env, trades={trade_id: "CONFIRMED"})
    second = await reconcile(desk.ledger, env.venue, now_ms=0)
    # Assert: arrived (SUBMITTED) but not filled while settling; filled once confirmed.
    assert first.ok and first.fills_applied == 0 and held_state is OrderState.SUBMITTED
    assert second.ok and second.fills_applied == 1
    assert await desk.position() == QTY and await desk.state(coid) is OrderState.FILLED


# -- FAILED is never a fill ---------------------------------------------------------------


async def test_fills_when_trade_fails_then_never_applied_and_logged_once(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.venue.polymarket")
    # Arrange: a crossing buy matches; the pump sees it MATCHED.
    desk = Desk(env)
    start, _ = await desk.pump(None)
    coid, trade_id = await desk.matched()
    cursor, _ = await desk.pump(start)
    before = await ledger_state(env.redis, desk.keys, coid)
    # Act: settlement retries, then fails for good.
    await settlement(env, trades={trade_id: "RETRYING"})
    cursor, retrying = await desk.pump(cursor)
    await settlement(env, trades={trade_id: "FAILED"})
    cursor, failed = await desk.pump(cursor)
    cursor, after = await desk.pump(cursor)
    from_start = (await env.venue.fills_since(None)).fills
    # Assert: never a fill, by the pump or a read from the start; the ledger did not move
    # (position, reservation, fills, the day's PnL and fees); one warning names it.
    assert retrying == [] and failed == [] and after == [] and from_start == ()
    assert TradeCursor.parse(cursor).unsettled == {}
    assert await ledger_state(env.redis, desk.keys, coid) == before
    warned = [r.getMessage() for r in events(caplog, "venue.polymarket.trade_failed")]
    assert len(warned) == 1, warned
    assert f"trade_id={trade_id}" in warned[0] and f"client_order_id={coid}" in warned[0]
    assert events(caplog, "venue.polymarket.trade_failed")[0].levelno == logging.WARNING


async def test_reconcile_when_trade_failed_then_order_canceled_not_filled_and_no_position(
    env: Env,
) -> None:
    # Arrange: a crossing buy matched; its settlement failed — the exchange gives the
    # matched size back and (the simulator's choice) cancels the order.
    desk = Desk(env)
    coid, _ = await desk.matched(then="FAILED")
    # Act
    status = await env.venue.lookup(coid)
    report = await reconcile(desk.ledger, env.venue, now_ms=0)
    # Assert: released as CANCELED, not FILLED; no position, no fill applied; the
    # exchange's own balance moved back.
    assert status.state is VenueOrderState.CANCELED and status.fills == ()
    assert report.ok and report.fills_applied == 0
    assert await desk.state(coid) is OrderState.CANCELED
    assert await desk.position() == 0 and not await desk.reserved()
    assert (await env.venue.balances())[YES] == 0


async def test_lookup_when_exchange_still_says_matched_after_a_failure_then_open_not_filled(
    env: Env,
) -> None:
    # Arrange: a failure the exchange has not followed with a re-open or a cancel — it
    # still calls the order MATCHED (the real CLOB does not document which it does).
    desk = Desk(env)
    coid, _ = await desk.matched(then="FAILED")
    digest = await env.redis.hget(desk.keys.clob_orders, coid)
    so = env.exchange._orders[(env.venue.address.lower(), digest)]
    so.state = "filled"
    # Act
    status = await env.venue.lookup(coid)
    await reconcile(desk.ledger, env.venue, now_ms=0)
    # Assert: not filled, so the reservation is held (never released as if filled).
    assert status.state is VenueOrderState.OPEN and status.filled_qty == 0
    assert await desk.state(coid) is OrderState.SUBMITTED and await desk.reserved()
    assert await desk.position() == 0


# -- a restart between MATCHED and CONFIRMED -----------------------------------------------


async def test_restart_when_between_matched_and_confirmed_then_applied_once(
    env: Env,
) -> None:
    # Arrange: the first instance's resting order fills (maker) while settlement is held;
    # its pump sees the trade MATCHED, and the instance stops.
    desk = Desk(env)
    start, _ = await desk.pump(None)
    coid = await desk.place(Side.BUY, "0.48")
    await env.cross(env.order(Side.BUY, "0.48"))
    [trade_id] = (await settlement(env)).keys()
    cursor, before_stop = await desk.pump(start)
    # A trade matched a second later, confirmed at once, moves the cursor past it.
    await asyncio.sleep(1.05)
    await settlement(env, hold=False)
    later = await desk.place(Side.BUY, "0.52")
    cursor, other = await desk.pump(cursor)
    await env.venue.close()
    # Act: confirmed while no instance runs; a new instance (new client, new ledger
    # object, the same Redis) resumes from the cursor the first one left, and the
    # new term's pump and reconciler read again from the start.
    await settlement(env, trades={trade_id: "CONFIRMED"})
    successor = env.new_venue()
    await successor.start()
    try:
        desk2 = Desk(env)
        _, resumed = await desk2.pump(cursor, successor)
        _, from_start = await desk2.pump(None, successor)
        report = await reconcile(desk2.ledger, successor, now_ms=0)
    finally:
        await successor.close()
    # Assert: applied once — not lost by the cursor, not doubled by the re-reads.
    assert before_stop == [] and other == [FillOutcome.APPLIED]
    assert TradeCursor.parse(cursor).top > TradeCursor.parse(cursor).unsettled[trade_id]
    assert resumed == [FillOutcome.APPLIED]
    assert sorted(o.value for o in from_start) == [FillOutcome.DUPLICATE.value] * 2
    assert report.ok and report.fills_applied == 0
    assert await desk2.position() == 2 * QTY
    assert {await desk2.state(c) for c in (coid, later)} == {OrderState.FILLED}


# -- the cursor ----------------------------------------------------------------------------


@pytest.mark.parametrize("cursor", [
    "abc", "12", "-1:", "12:a,,b", "12:a b", "12:a|x", "12:a|0/t", "12:a|5/", "12:a|/t",
    "12:a|5/t,5/t", "12:a|5/t,", "12:a|5/t|6/u", "１２:a",
    "12:|" + ",".join(f"5/t{i}" for i in range(polymarket.MAX_UNSETTLED + 1)),
])
async def test_fills_when_cursor_malformed_then_refused_naming_it(env: Env, cursor: str) -> None:
    with pytest.raises(VenueError, match="malformed fills cursor") as info:
        await env.venue.fills_since(cursor)
    assert repr(cursor[:20])[1:-1] in str(info.value)


def test_cursor_when_written_then_read_back_the_same() -> None:
    cursor = TradeCursor(17, frozenset({"b", "a:0xff"}), {"t-2": 16, "t-1": 9})

    assert str(cursor) == "17:a:0xff,b|9/t-1,16/t-2"
    assert TradeCursor.parse(str(cursor)) == cursor
    assert TradeCursor.parse("17:a,b") == TradeCursor(17, frozenset({"a", "b"}))
    assert TradeCursor.parse(None) == TradeCursor.parse("") == TradeCursor()


async def test_fills_when_more_trades_unsettled_than_cursor_holds_then_none_lost(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.venue.polymarket")
    # Arrange: the cursor holds two unsettled trades; three match while held.
    monkeypatch.setattr(polymarket, "MAX_UNSETTLED", 2)
    desk = Desk(env)
    start, _ = await desk.pump(None)
    coids = [await desk.place(Side.BUY, "0.52") for _ in range(3)]
    held = await settlement(env)
    # Act
    cursor, first = await desk.pump(start)
    cursor, _ = await desk.pump(cursor)
    at = TradeCursor.parse(cursor)
    await settlement(env, trades={t: "CONFIRMED" for t in held})
    cursor, second = await desk.pump(cursor)
    cursor, third = await desk.pump(cursor)
    # Assert: bounded, and the third trade — not in the cursor — is read again; the
    # stall is said once while it lasts (before: nothing said the fills were held back).
    assert first == [] and len(at.unsettled) == 2
    [full] = [r.getMessage() for r in events(caplog, "venue.polymarket.cursor_full")]
    assert "unsettled=2" in full
    assert second == [FillOutcome.APPLIED] * 3 and third == []
    assert await desk.position() == 3 * QTY
    assert {await desk.state(c) for c in coids} == {OrderState.FILLED}


@pytest.fixture
async def impatient(env: Env, caplog: pytest.LogCaptureFixture
                    ) -> AsyncIterator[PolymarketVenue]:
    """A started venue of ``env``'s wallet that calls a trade stuck after 1 s (its
    warnings captured)."""
    caplog.set_level(logging.INFO, logger="guardrails.venue.polymarket")
    venue = env.new_venue(settlement_warn_after="1s")
    await venue.start()
    try:
        yield venue
    finally:
        await venue.close()


async def test_fills_when_trade_unsettled_too_long_then_logged_once_and_still_read(
    env: Env, caplog: pytest.LogCaptureFixture, impatient: PolymarketVenue,
) -> None:
    # Arrange: a venue that calls a trade stuck after 1 s.
    venue = impatient
    desk = Desk(env)
    start, _ = await desk.pump(None, venue)
    await desk.place(Side.BUY, "0.52", venue=venue)
    [trade_id] = (await settlement(env)).keys()
    # Act: polled for 3 s while it stays MATCHED, then confirmed.
    cursor, polls = start, []
    for _ in range(12):
        cursor, outcomes = await desk.pump(cursor, venue)
        polls += outcomes
        await asyncio.sleep(0.25)
    await settlement(env, trades={trade_id: "CONFIRMED"})
    cursor, confirmed = await desk.pump(cursor, venue)
    # Assert: one warning naming it, not one per poll; still read until it settled.
    warned = [r.getMessage() for r in events(caplog, "venue.polymarket.trade_unsettled")]
    assert len(warned) == 1 and f"trade_id={trade_id}" in warned[0], warned
    assert "status=MATCHED" in warned[0]
    assert polls == [] and confirmed == [FillOutcome.APPLIED]


async def test_fills_when_unsettled_trade_comes_back_with_an_earlier_match_time_then_applied_once(
    env: Env,
) -> None:
    # Arrange: our resting NO bid is taken (a raw trade row, as the exchange answers it);
    # the pump sees the trade MATCHED and holds it in the cursor at its match second.
    desk = Desk(env)
    coid = await desk.place(Side.BUY, "0.48", symbol=NO)
    digest = await env.redis.hget(desk.keys.clob_orders, coid)
    start, _ = await desk.pump(None)
    now = int(time.time())
    row = _maker_trade(env, digest, taker_asset=TOKENS[NO], maker_asset=TOKENS[NO],
                       price="0.48", status="MATCHED", match_time=str(now))
    await env.admin("/admin/answers", {"trades": [row]})
    cursor, matched = await desk.pump(start)
    # Act: the exchange now calls it CONFIRMED, with a match time an hour earlier.
    await env.admin("/admin/answers", {"trades": [
        {**row, "status": "CONFIRMED", "match_time": str(now - 3600)}]})
    cursor, confirmed = await desk.pump(cursor)
    cursor, again = await desk.pump(cursor)
    # Assert: applied once (before: the read from the cursor's second never saw it again;
    # the fill was lost and the trade rode in the cursor for ever, said nowhere).
    assert matched == [] and confirmed == [FillOutcome.APPLIED] and again == []
    assert TradeCursor.parse(cursor).unsettled == {}
    assert await desk.position(NO) == QTY and await desk.state(coid) is OrderState.FILLED


async def test_fills_when_unsettled_trade_no_longer_listed_then_kept_and_logged_once(
    env: Env, caplog: pytest.LogCaptureFixture, impatient: PolymarketVenue,
) -> None:
    # Arrange: a MATCHED trade of our resting bid, just matched, in the cursor.
    venue = impatient
    desk = Desk(env)
    coid = await desk.place(Side.BUY, "0.48", symbol=NO, venue=venue)
    digest = await env.redis.hget(desk.keys.clob_orders, coid)
    row = _maker_trade(env, digest, taker_asset=TOKENS[NO], maker_asset=TOKENS[NO],
                       price="0.48", status="MATCHED", match_time=str(int(time.time())))
    await env.admin("/admin/answers", {"trades": [row]})
    cursor, _ = await desk.pump(None, venue)
    # Act: the exchange stops listing it; polled past settlement_warn_after.
    await env.admin("/admin/answers", {"trades": []})
    for _ in range(5):
        cursor, outcomes = await desk.pump(cursor, venue)
        assert outcomes == []
        await asyncio.sleep(0.5)
    # Assert: still in the cursor (it may yet settle), and said once (before: never — it
    # was only ever warned about while the exchange listed it).
    assert row["id"] in TradeCursor.parse(cursor).unsettled
    warned = [r.getMessage() for r in events(caplog, "venue.polymarket.trade_unsettled")]
    assert len(warned) == 1 and f"trade_id={row['id']}" in warned[0], warned
    assert "status=ABSENT" in warned[0]


# -- the simulator --------------------------------------------------------------------------


def test_sim_when_settlement_replayed_then_failed_trade_stays_undone(tmp_path: Path) -> None:
    # Arrange: a daemon-style exchange (its record is its state) with settlement held;
    # two buys match, one trade fails, the other is still MATCHED when it stops.
    record = tmp_path / "record.jsonl"
    address = "0x" + "ab" * 20

    def open_exchange() -> ClobExchange:
        return ClobExchange(MARKET, RISK, TOKENS, record_path=record, resume=True,
                            market_digest="m", hold_settlement=True)

    ex = open_exchange()
    for coid in ("0xaa", "0xbb"):
        ex.place(Order(coid, YES, Side.BUY, QTY, Decimal("0.52"), 0, 2**62), address,
                 ex.now_ms())
    failed, matched = [f.fill_id for _, _, f in ex._fills]
    ex.settle({failed: "FAILED"})
    ex.close()
    # Act
    again = open_exchange()
    try:
        unsettled, failed_status = again.unsettled(), again.trade_status(failed)
        order = again.get_order(address, "0xaa") or {}
        shares = again.balance(address, "CONDITIONAL", TOKENS[YES])["balance"]
        with pytest.raises(ClobError, match="cannot move"):
            again.settle({matched: "CONFIRMED", failed: "CONFIRMED"})
        refused = again.unsettled()
        again.settle({matched: "CONFIRMED"})
        after = again.unsettled()
    finally:
        again.close()
    # Assert: the failed trade's order is canceled and its shares are gone; the other
    # trade could still be confirmed, the failed one never.
    assert unsettled == {matched: "MATCHED"} and failed_status == "FAILED"
    assert order.get("status") == "CANCELED" and order.get("size_matched") == "0"
    assert shares == str(10 * 10**6)
    assert refused == {matched: "MATCHED"}  # a refused request moves nothing
    assert after == {}


async def test_cancel_when_order_matched_but_trade_settling_then_unknown_not_accepted(
    env: Env,
) -> None:
    # Arrange: the order matched; its trade is still settling (it may yet fail, giving
    # the order its size back).
    desk = Desk(env)
    coid, trade_id = await desk.matched()
    # Act
    while_settling = await env.venue.cancel(coid)
    await settlement(env, trades={trade_id: "CONFIRMED"})
    once_confirmed = await env.venue.cancel(coid)
    # Assert: no promise that it can never execute until the settlement is final (before:
    # Accepted, "already final", as soon as the exchange called it MATCHED).
    assert isinstance(while_settling, Unknown) and "not settled" in while_settling.reason
    assert isinstance(once_confirmed, Accepted)


# -- real `guardrails run` processes: a restart while trades settle -------------------------


def _admin_settlement(url: str, **body: Any) -> dict[str, str]:
    req = urllib.request.Request(url + "/admin/settlement", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        out: dict[str, str] = json.loads(r.read())["unsettled"]
        return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_when_restarted_while_trades_settle_then_confirmed_applied_once_failed_never(
    tmp_path: Path, redis_server: RedisServer, procs: list[RunProc],
) -> None:
    # Arrange: the exchange holds settlement; a bot quotes until several of its bids
    # matched, sees them MATCHED, and stops.
    w = World(tmp_path, redis_server, admin=True)
    w.sim.start()
    try:
        _admin_settlement(w.url, hold=True)
        a = _spawn(procs, "a", w, tmp_path)
        a.wait_for("lease.acquired", timeout=60)
        deadline = time.time() + 90
        while len(_admin_settlement(w.url)) < 4 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # several pump passes over the MATCHED trades
        a.send(signal.SIGTERM)
        assert a.wait_exit(timeout=60) == 0, a.text()[-3000:]
        held = sorted(_admin_settlement(w.url))
        assert len(held) >= 4, w.sim.logs()[-2000:]
        # Act: with no bot running, half the trades fail and half are confirmed; a new
        # bot takes over (new process: reconciliation, its own fill pump from the start)
        # and trades on, its own trades confirmed at once.
        failed, confirmed = set(held[::2]), set(held[1::2])
        _admin_settlement(w.url, hold=False, trades={
            **{t: "FAILED" for t in failed}, **{t: "CONFIRMED" for t in confirmed}})
        b = _spawn(procs, "b", w, tmp_path)
        b.wait_for("lease.acquired", timeout=60)
        time.sleep(4.0)
        b.send(signal.SIGTERM)
        assert b.wait_exit(timeout=60) == 0, b.text()[-3000:]
        cfg = load_config(w.config)
    finally:
        w.sim.stop()
    # Assert, from the exchange's record: every trade that did not fail is applied
    # exactly once (the ledger's applied fills and its positions), no failed one ever.
    status = {r["fill_id"]: r["status"] for r in w.rows("settlement")}
    trades = {r["fill_id"]: r for r in w.rows("fill")}
    good = {t for t in trades if status.get(t, "CONFIRMED") == "CONFIRMED"}
    assert confirmed <= good and not failed & good
    assert a.events("fill") == [], "a MATCHED trade was applied before it was confirmed"

    async def ledger_view() -> tuple[set[str], dict[str, Decimal]]:
        keys = AccountKeys(AccountId("polymarket", w.address))
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            applied = set(await client.hkeys(keys.fills))
            views = await Ledger(client, keys, cfg.risk).positions()
        finally:
            await client.aclose()
        return applied, {s: v.qty for s, v in views.items() if v.qty}

    applied, positions = asyncio.run(ledger_view())
    assert {f.partition(":")[0] for f in applied} == good
    assert len(applied) == len(good)
    want: dict[str, Decimal] = {}
    for t in good:
        sign = 1 if trades[t]["side"] == "buy" else -1
        want[trades[t]["symbol"]] = want.get(trades[t]["symbol"], Decimal(0)) \
            + sign * Decimal(trades[t]["qty"])
    assert positions == {s: q for s, q in want.items() if q}
    said = [e.get("trade_id") for e in b.events("venue.polymarket.trade_failed")]
    assert sorted(said) == sorted(failed), said
