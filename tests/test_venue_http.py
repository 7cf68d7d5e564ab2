"""The HTTP venue against the exchange simulator, over real HTTP: conformance, signatures,
the venue-side fences, unknown outcomes reconciled by client order id, and key secrecy."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eth_account import Account

from guardrails.config import HttpVenueConfig, PaperVenueConfig, parse_config
from guardrails.keys import AccountId
from guardrails.model import Order, Side
from guardrails.sim.daemon import SimulatorProcess
from guardrails.sim.exchange import DEFAULT_RISK, SimExchange, read_record
from guardrails.sim.server import Simulator
from guardrails.venues import eip712, make_venue, signing
from guardrails.venues.base import (
    Accepted,
    Rejected,
    Unknown,
    VenueError,
    VenueOrderState,
)
from guardrails.venues.http import HttpVenue
from tests.conftest import subprocess_env
from tests.redis_harness import free_port
from tests.venue_conformance import (
    SecretConformance,
    VenueConformance,
    VenueHarness,
    now_ms,
)

SYMBOL = "BTC-USD"
KEY_ENV = "GUARDRAILS_TEST_HTTP_KEY"
CHAIN_ID = 31337

MARKET = PaperVenueConfig.model_validate(
    {
        "name": "sim",
        "seed": 5,
        "step": "1h",  # the wall clock never moves the market during a test
        "start_prices": {SYMBOL: "60000.00", "ETH-USD": "3000.00"},
    }
)


def new_key() -> str:
    return "0x" + bytes(Account.create().key).hex()


def address_of(key: str) -> str:
    return str(Account.from_key(key).address).lower()


def venue_cfg(url: str, **over: Any) -> HttpVenueConfig:
    data: dict[str, Any] = {
        "url": url, "key_env": KEY_ENV, "chain_id": CHAIN_ID, "request_timeout": "1s",
    }
    data.update(over)
    return HttpVenueConfig.model_validate(data)


class Env:
    """A simulator served in-process (admin hooks on) and an HTTP venue with a key."""

    def __init__(self, sim: Simulator, venue: HttpVenue, key: str, record: Path) -> None:
        self.sim, self.venue, self.key, self.record = sim, venue, key, record

    async def admin(self, path: str, body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.sim.url + path, json=body) as r:
            assert r.status == 200, await r.text()

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.post(self.sim.url + path, json=body) as r:
            data: dict[str, Any] = await r.json()
            return r.status, data

    async def cross(self, order: Order) -> None:
        await self.admin("/admin/mark", {"symbol": order.symbol, "price": str(order.price)})

    def order(self, side: Side, price: Decimal, *, coid: str | None = None,
              deadline_ms: int | None = None, qty: str = "0.0010") -> Order:
        return Order(coid or "c" + uuid.uuid4().hex, SYMBOL, side, Decimal(qty), price, 9,
                     deadline_ms if deadline_ms is not None else now_ms() + 60_000)

    async def mark(self) -> Decimal:
        return (await self.venue.marks([SYMBOL]))[SYMBOL]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    record = tmp_path / "sim-record.jsonl"
    sim = Simulator(
        SimExchange(MARKET, DEFAULT_RISK, chain_id=CHAIN_ID, record_path=record), admin=True
    )
    url = await sim.start()
    venue = HttpVenue(venue_cfg(url), AccountId("http", address_of(key)))
    await venue.start()
    try:
        yield Env(sim, venue, key, record)
    finally:
        await venue.close()
        await sim.stop()


class TestHttpConformance(VenueConformance, SecretConformance):
    @pytest.fixture
    async def harness(self, env: Env) -> AsyncIterator[VenueHarness]:
        async def provoke() -> None:
            # A venue that cannot be reached: the lookup must raise, and say nothing secret.
            broken = HttpVenue(venue_cfg(f"http://127.0.0.1:{free_port()}"),
                               AccountId("http", address_of(env.key)))
            await broken.start()
            try:
                await broken.lookup("c-nowhere")
            finally:
                await broken.close()

        yield VenueHarness(
            venue=env.venue,
            symbol=SYMBOL,
            tick=Decimal("0.01"),
            lot=Decimal("0.0001"),
            cross=env.cross,
            secrets=(env.key, env.key.removeprefix("0x")),
            provoke_error=provoke,
        )


async def test_submit_when_signed_order_sent_then_round_trips_with_its_fields(env: Env) -> None:
    # Arrange
    price = await env.mark() - Decimal("100.00")
    order = env.order(Side.BUY, price)
    # Act
    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id)
    # Assert
    assert isinstance(result, Accepted) and result.venue_order_id
    assert status.state is VenueOrderState.OPEN
    entry = next(r for r in read_record(env.record) if r.get("coid") == order.client_order_id)
    assert entry["result"] == "accepted"
    assert entry["account"] == address_of(env.key)
    assert (entry["token"], entry["qty"], entry["price"]) == (9, "0.0010", str(price))
    assert entry["deadline_ms"] == order.submit_deadline_ms


async def test_submit_when_signature_tampered_then_rejected_bad_signature(env: Env) -> None:
    # Arrange: sign an order, then change its price in flight.
    signer = signing.Signer.from_key(env.key)
    order = env.order(Side.BUY, await env.mark() + Decimal("100.00"))
    signed = eip712.sign_order(signer, order, CHAIN_ID)
    tampered = dict(signed.message, price=str(order.price - 1))
    # Act
    status, body = await env.post("/v1/orders", {"order": tampered, "signature": signed.signature})
    lookup = await env.venue.lookup(order.client_order_id)
    # Assert
    assert (status, body["status"], body["reason"]) == (401, "rejected", "bad_signature")
    assert lookup.state is VenueOrderState.NOT_FOUND


async def test_submit_when_signed_by_another_key_then_rejected_bad_signature(env: Env) -> None:
    intruder = signing.Signer.from_key(new_key())
    order = env.order(Side.BUY, await env.mark() + Decimal("100.00"))
    signed = eip712.sign_order(intruder, order, CHAIN_ID)
    claims_victim = dict(signed.message, account=address_of(env.key))

    status, body = await env.post(
        "/v1/orders", {"order": claims_victim, "signature": signed.signature}
    )

    assert (status, body["reason"]) == (401, "bad_signature")
    assert (await env.venue.lookup(order.client_order_id)).state is VenueOrderState.NOT_FOUND


async def test_submit_when_signed_for_another_chain_then_rejected(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + Decimal("100.00"))
    signed = eip712.sign_order(signing.Signer.from_key(env.key), order, CHAIN_ID + 1)

    status, body = await env.post("/v1/orders", {"order": signed.message,
                                                 "signature": signed.signature})

    assert (status, body["reason"]) == (401, "bad_signature")


async def test_submit_when_expiration_passed_then_rejected_expired(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + 100, deadline_ms=now_ms() - 2_000)

    result = await env.venue.submit(order)
    again = await env.venue.submit(order)

    assert result == Rejected("expired")
    assert again == Rejected("expired")  # a decided client order id stays decided
    assert (await env.venue.lookup(order.client_order_id)).filled_qty == 0


async def test_submit_when_client_order_id_duplicated_then_one_order(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + 100)

    first = await env.venue.submit(order)
    second = await env.venue.submit(order)
    fills = (await env.venue.fills_since(None)).fills

    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.venue_order_id == second.venue_order_id
    assert [f.client_order_id for f in fills] == [order.client_order_id]
    results = [r["result"] for r in read_record(env.record)
               if r["type"] == "order" and r["coid"] == order.client_order_id]
    assert results == ["accepted", "duplicate"]


async def test_submit_when_response_lost_then_unknown_reconciled_and_resend_dedupes(
    env: Env,
) -> None:
    # Arrange: the venue applies the next submit, then drops the connection unanswered.
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    resent = await env.venue.submit(order)
    fills = (await env.venue.fills_since(None)).fills
    # Assert: unknown, not rejected; the lookup sees the real (filled) order; the re-send
    # of the same client order id is the same order, not a second one.
    assert isinstance(result, Unknown), result
    assert status.state is VenueOrderState.FILLED and status.filled_qty == order.qty
    assert isinstance(resent, Accepted)
    assert [f.client_order_id for f in fills] == [order.client_order_id]
    accepted = [r for r in read_record(env.record)
                if r["type"] == "order" and r["coid"] == order.client_order_id
                and r["result"] == "accepted"]
    assert len(accepted) == 1


async def test_submit_when_answer_is_5xx_after_applying_then_unknown_and_order_exists(
    env: Env,
) -> None:
    order = env.order(Side.BUY, await env.mark() - 100)
    await env.admin("/admin/faults", {"fail_submits": 1, "fail_status": 502, "fail_applies": True})

    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id)

    assert isinstance(result, Unknown) and "502" in result.reason
    assert status.state is VenueOrderState.OPEN


async def test_submit_when_5xx_without_applying_then_unknown_until_deadline_passes(
    env: Env,
) -> None:
    # Arrange: an error answer, and the order never reached the book.
    order = env.order(Side.BUY, await env.mark() - 100)
    await env.admin("/admin/faults", {"fail_submits": 1, "fail_status": 503, "fail_applies": False})
    # Act
    result = await env.venue.submit(order)
    live = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    dead = await env.venue.lookup(order.client_order_id, deadline_ms=now_ms() - 1_000)
    # Assert: unknown; NOT_FOUND may still arrive until its deadline, then it cannot.
    assert isinstance(result, Unknown)
    assert live.state is VenueOrderState.NOT_FOUND and live.can_still_arrive
    assert dead.state is VenueOrderState.NOT_FOUND and not dead.can_still_arrive


async def test_submit_when_answer_slower_than_timeout_then_unknown_and_applied(env: Env) -> None:
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.admin("/admin/faults", {"delay_submit_responses": 1, "delay_seconds": 3})

    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id)

    # Unknown (not Accepted): the client gave up at its 1 s timeout before the answer.
    assert isinstance(result, Unknown), result
    assert "TimeoutError" in result.reason
    assert status.state is VenueOrderState.FILLED


async def test_submit_when_venue_unreachable_then_rejected_nothing_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    venue = HttpVenue(venue_cfg(f"http://127.0.0.1:{free_port()}"),
                      AccountId("http", address_of(key)))
    await venue.start()
    try:
        order = Order("c-refused", SYMBOL, Side.BUY, Decimal("0.001"), Decimal("1.00"), 1,
                      now_ms() + 60_000)

        result = await venue.submit(order)

        assert isinstance(result, Rejected) and "venue_unreachable" in result.reason
    finally:
        await venue.close()


async def test_start_when_account_is_another_address_then_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, new_key())
    venue = HttpVenue(venue_cfg("http://127.0.0.1:1"), AccountId("http", address_of(new_key())))

    with pytest.raises(VenueError, match="not the signing key's address"):
        await venue.start()


async def test_key_when_used_everywhere_then_absent_from_logs_reprs_and_errors(
    env: Env, caplog: pytest.LogCaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    secret = env.key.removeprefix("0x").lower()
    # Act: every path that touches the key, including its failures.
    order = env.order(Side.BUY, await env.mark() + 100)
    await env.venue.submit(order)
    await env.venue.cancel(order.client_order_id)
    await env.venue.lookup(order.client_order_id)
    texts += [repr(env.venue), str(env.venue), repr(signing.Signer.from_key(env.key))]
    monkeypatch.setenv(KEY_ENV, env.key[:-2])  # a malformed key: the error must not quote it
    with pytest.raises(signing.SigningKeyError) as bad_key:
        signing.load_signer(key_env=KEY_ENV)
    texts += [str(bad_key.value), repr(bad_key.value), repr(bad_key.value.__context__)]
    keystore = tmp_path / "key.json"
    keystore.write_text(__import__("json").dumps(
        Account.encrypt(env.key, "right", kdf="pbkdf2", iterations=2)))
    monkeypatch.setenv("GR_TEST_PW", "wrong")
    with pytest.raises(signing.SigningKeyError) as bad_pw:
        signing.load_signer(key_env=KEY_ENV, keystore=str(keystore), keystore_password_env="GR_TEST_PW")
    texts += [str(bad_pw.value), repr(bad_pw.value)]
    with pytest.raises(TypeError):
        __import__("pickle").dumps(signing.Signer.from_key(env.key))
    texts.append(caplog.text)
    # Assert
    assert "venue.http.submit" in caplog.text  # the logs did run
    for text in texts:
        assert secret not in text.lower()
        assert secret[:-2] not in text.lower()


async def test_keystore_when_password_right_then_signer_is_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = new_key()
    keystore = tmp_path / "key.json"
    keystore.write_text(__import__("json").dumps(
        Account.encrypt(key, "pw", kdf="pbkdf2", iterations=2)))
    monkeypatch.setenv("GR_TEST_PW", "pw")

    signer = signing.load_signer(key_env="UNSET_ENV_FOR_TEST", keystore=str(keystore),
                                 keystore_password_env="GR_TEST_PW")

    assert signer.address == address_of(key)


async def test_make_venue_when_http_embedded_then_reaches_the_per_user_simulator_daemon(
    monkeypatch: pytest.MonkeyPatch, redis_client: Any,
) -> None:
    # Arrange
    key = new_key()
    monkeypatch.setenv(KEY_ENV, key)
    cfg = parse_config({
        "account": {"venue": "http", "id": address_of(key)},
        "risk": DEFAULT_RISK.model_dump(mode="json"),
        "venue": {"kind": "http", "url": "embedded", "key_env": KEY_ENV,
                  "simulator": MARKET.model_dump(mode="json")},
    })
    venue = make_venue(cfg, redis_client)
    await venue.start()
    try:
        # Act
        mark = (await venue.marks([SYMBOL]))[SYMBOL]
        order = Order("c-embedded", SYMBOL, Side.SELL, Decimal("0.001"), mark - 50, 2,
                      now_ms() + 60_000)
        result = await venue.submit(order)
        balances = await venue.balances()
        # Assert
        assert isinstance(venue, HttpVenue) and venue.url.startswith("http://127.0.0.1:")
        assert isinstance(result, Accepted)
        assert balances[SYMBOL] == Decimal("-0.001")
        assert balances["cash"] == mark * Decimal("0.001")
    finally:
        await venue.close()


@pytest.mark.slow
async def test_venue_serve_when_run_as_command_then_round_trip_and_jsonl_record(
    tmp_path: Path,
) -> None:
    # Arrange: `guardrails venue serve` as a child process on a free port.
    key = new_key()
    record = tmp_path / "record.jsonl"
    proc = SimulatorProcess(record=record, admin=True, seed=3, env=subprocess_env())
    try:
        url = proc.start()
        venue = HttpVenue(venue_cfg(url, chain_id=1), AccountId("http", address_of(key)),
                          signing.Signer.from_key(key))
        await venue.start()
        try:
            mark = (await venue.marks([SYMBOL]))[SYMBOL]
            order = Order("c-serve", SYMBOL, Side.BUY, Decimal("0.0010"), mark + 10, 4,
                          now_ms() + 60_000)
            # Act
            result = await venue.submit(order)
            status = await venue.lookup("c-serve")
        finally:
            await venue.close()
    finally:
        logs = proc.stop()
    # Assert
    assert isinstance(result, Accepted)
    assert status.state is VenueOrderState.FILLED
    kinds = [(r["type"], r["coid"]) for r in read_record(record)]
    assert kinds == [("order", "c-serve"), ("fill", "c-serve")]
    assert "simulator.listening" in logs
    assert key.removeprefix("0x") not in logs


async def test_start_when_embedded_and_no_key_configured_then_accounts_demo_key_signs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: two instances of one account (active and standby), no key configured.
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = venue_cfg("embedded", simulator=MARKET.model_dump(mode="json"))
    venue = HttpVenue(cfg, AccountId("http", "demo"), risk=DEFAULT_RISK)
    standby = HttpVenue(cfg, AccountId("http", "demo"), risk=DEFAULT_RISK)
    other = HttpVenue(cfg, AccountId("http", "other"), risk=DEFAULT_RISK)
    await venue.start()
    await standby.start()
    await other.start()
    try:
        mark = (await venue.marks([SYMBOL]))[SYMBOL]
        order = Order("c-demo", SYMBOL, Side.BUY, Decimal("0.001"), mark + 1, 1,
                      now_ms() + 60_000)
        # Act
        result = await venue.submit(order)
        seen_by_standby = await standby.lookup("c-demo")
        # Assert: one exchange account per guardrails account, the same in every instance.
        assert isinstance(result, Accepted)
        assert venue.address.startswith("0x") and len(venue.address) == 42
        assert standby.address == venue.address != other.address
        assert standby.url == venue.url
        assert seen_by_standby.state is VenueOrderState.FILLED
    finally:
        for v in (venue, standby, other):
            await v.close()


async def test_start_when_remote_url_and_no_key_then_refused_naming_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    venue = HttpVenue(venue_cfg("http://127.0.0.1:1"), AccountId("http", "demo"))

    with pytest.raises(VenueError, match=KEY_ENV):
        await venue.start()


async def test_reconcile_when_submit_answer_lost_then_ledger_filled_once_and_resend_dedupes(
    env: Env, redis_client: Any,
) -> None:
    """The must-show end to end: gate -> signed submit whose answer is lost -> UNKNOWN in
    the ledger (reservation kept) -> reconcile by client order id -> FILLED, position
    applied once; a deliberate re-send of the same id is the same order."""
    from guardrails.gate import OrderGate
    from guardrails.keys import AccountKeys
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, OrderState
    from guardrails.reconcile import reconcile
    from tests import gatekit

    # Arrange: the account's limits, a live lease, marks; the simulator at 60000.00.
    keys = AccountKeys(AccountId("http", address_of(env.key)))
    cfg = gatekit.risk()
    await gatekit.seed(redis_client, keys, cfg)
    gate, ledger = OrderGate(redis_client, keys, cfg), Ledger(redis_client, keys, cfg)
    decision = await gate.admit(gatekit.buy("0.0010", "60100.00"), intent_id="i-lost",
                                token=gatekit.TOKEN, holder_id=gatekit.HOLDER)
    assert isinstance(decision, Admitted)
    order = Order(decision.client_order_id, SYMBOL, Side.BUY, Decimal("0.0010"),
                  Decimal("60100.00"), decision.token, decision.submit_deadline_ms)
    await env.admin("/admin/faults", {"drop_submit_responses": 1})
    # Act
    result = await env.venue.submit(order)
    assert isinstance(result, Unknown), result
    await ledger.mark_unknown(order.client_order_id, result.reason)
    held = await ledger.order(order.client_order_id)
    report = await reconcile(ledger, env.venue, now_ms=now_ms())
    resent = await env.venue.submit(order)
    again = await reconcile(ledger, env.venue, now_ms=now_ms())
    # Assert
    assert held is not None and held.state is OrderState.UNKNOWN and held.open_qty == order.qty
    assert report.ok and report.fills_applied == 1
    after = await ledger.order(order.client_order_id)
    assert after is not None and after.state is OrderState.FILLED and after.open_qty == 0
    assert (await ledger.positions())[SYMBOL].qty == Decimal("0.0010")
    assert isinstance(resent, Accepted)
    assert again.checked == 0  # nothing left open: the re-send changed nothing
    orders = [r for r in read_record(env.record) if r["type"] == "order"]
    assert [r["result"] for r in orders] == ["accepted", "duplicate"]
    assert len([r for r in read_record(env.record) if r["type"] == "fill"]) == 1
    # ...and the signing key is nowhere in Redis (keys, values, streams) or the record.
    dump = await redis_dump(redis_client) + env.record.read_text()
    assert address_of(env.key) in dump  # the dump does see the account's state
    assert env.key.removeprefix("0x").lower() not in dump.lower()


async def redis_dump(r: Any) -> str:
    """Every key and value in Redis as text (strings, hashes, sets, zsets, lists, streams)."""
    parts: list[str] = []
    async for key in r.scan_iter("*"):
        kind = await r.type(key)
        parts.append(key)
        if kind == "string":
            parts.append(str(await r.get(key)))
        elif kind == "hash":
            parts.append(repr(await r.hgetall(key)))
        elif kind == "set":
            parts.append(repr(await r.smembers(key)))
        elif kind == "zset":
            parts.append(repr(await r.zrange(key, 0, -1, withscores=True)))
        elif kind == "list":
            parts.append(repr(await r.lrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(repr(await r.xrange(key)))
    return "\n".join(parts)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"status": "accepted", "venue_order_id": "so-1"}, Accepted("so-1")),
        (422, {"status": "rejected", "reason": "expired"}, Rejected("expired")),
        (401, {"status": "rejected", "reason": "bad_signature"}, Rejected("bad_signature")),
        (429, {"status": "rejected", "reason": "throttled"}, Rejected("throttled")),
        (500, {"status": "rejected", "reason": "oops"}, Unknown),
        (503, None, Unknown),
        (404, None, Unknown),  # e.g. a proxy's page: not the venue's verdict
        (200, None, Unknown),
        (200, {"status": "weird"}, Unknown),
    ],
)
def test_classify_submit_when_answer_given_then_only_venue_verdicts_are_certain(
    status: int, body: dict[str, Any] | None, expected: object
) -> None:
    from guardrails.venues.http import classify_submit

    result = classify_submit(status, body)

    if expected is Unknown:
        assert isinstance(result, Unknown)
    else:
        assert result == expected


async def test_submit_when_cancel_arrived_first_then_rejected_recorded_and_never_fills(
    env: Env,
) -> None:
    # Arrange: a paused instance's order arrives after the cancel of its id.
    order = env.order(Side.BUY, await env.mark() + 100)
    canceled = await env.venue.cancel(order.client_order_id)
    # Act
    result = await env.venue.submit(order)
    status = await env.venue.lookup(order.client_order_id, deadline_ms=order.submit_deadline_ms)
    # Assert
    assert isinstance(canceled, Accepted), canceled
    assert result == Rejected("canceled_before_arrival")
    assert status.state is VenueOrderState.CANCELED and not status.fills
    rows = [(r["type"], r["result"], r.get("reason", "")) for r in read_record(env.record)]
    assert rows == [
        ("cancel", "canceled", "canceled_before_arrival"),
        ("order", "rejected", "canceled_before_arrival"),
    ]
    assert (await env.venue.fills_since(None)).fills == ()
