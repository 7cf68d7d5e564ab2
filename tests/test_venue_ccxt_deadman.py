"""The ccxt venue's dead-man switch: the UNMODIFIED ccxt ``kraken`` class (its URLs
pointed at the Kraken-protocol simulator, real HTTP on loopback) arms Kraken's
``CancelAllOrdersAfter`` while the venue is active, refreshes it, disarms it at a graceful
end, and a paused holder's resting orders are cancelled by the exchange — the last in a
real child process stopped with SIGSTOP. Binance's ccxt class has no such call, so there
the venue runs no switch. Nothing of ccxt is mocked."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import ccxt as ccxt_sync
import ccxt.async_support as ccxt_async
import pytest

from guardrails.config import CcxtVenueConfig, LeaseConfig, PaperVenueConfig, RiskConfig
from guardrails.keys import AccountId
from guardrails.sim import kraken as sk
from guardrails.sim.binance import account_label
from guardrails.sim.exchange import SimExchange, read_record
from guardrails.sim.server import Simulator
from guardrails.venues.base import VenueError
from guardrails.venues.ccxt import CcxtVenue

SYMBOL = "BTC/USD"
ACCOUNT = AccountId("kraken", "main")
KEY_ENV, SECRET_ENV = "GUARDRAILS_TEST_KRAKEN_KEY", "GUARDRAILS_TEST_KRAKEN_SECRET"
RISK = RiskConfig.model_validate({
    "max_order_notional": "100000", "max_gross_exposure": "100000", "daily_loss_limit": "1000",
    "orders_per_second": "1000", "burst": 1000,
    "instruments": {SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "1"}},
})
MARKET = PaperVenueConfig.model_validate({
    "name": "sim", "seed": 5, "step": "1h", "start_prices": {SYMBOL: "60000.00"},
})
LEASE = LeaseConfig.model_validate({"ttl": "500ms", "renew_deadline": "300ms",
                                    "renew_interval": "100ms"})
"""4 TTLs = 2 s: the countdown the venue arms by default with this lease."""


def venue_cfg(url: str, **over: Any) -> CcxtVenueConfig:
    data: dict[str, Any] = {
        "exchange": "kraken", "urls": {"public": url, "private": url},
        "api_key_env": KEY_ENV, "secret_env": SECRET_ENV, "enable_rate_limit": False,
        "request_timeout": "2s",
    }
    data.update(over)
    return CcxtVenueConfig.model_validate(data)


class Env:
    def __init__(self, sim: sk.KrakenSim, url: str, key: str, secret: str,
                 record: Path) -> None:
        self.sim, self.url, self.key, self.secret, self.record = sim, url, key, secret, record
        self.account = account_label(key)

    def venue(self, **over: Any) -> CcxtVenue:
        return CcxtVenue(venue_cfg(self.url, **over), ACCOUNT, risk=RISK, lease=LEASE)

    def bot(self) -> Any:
        """A plain ccxt kraken client of the same account: the orders left resting."""
        ex = ccxt_async.kraken({"apiKey": self.key, "secret": self.secret,
                                "enableRateLimit": False})
        ex.urls["api"]["public"] = self.url
        ex.urls["api"]["private"] = self.url
        return ex

    def dead_man(self) -> list[dict[str, Any]]:
        return [r for r in read_record(self.record)
                if r.get("type") == "dead_man" and r.get("account") == self.account]

    def open_orders(self) -> list[str]:
        return [so.order.client_order_id for so in self.sim.exchange.orders_of(self.account)
                if so.state == "open"]


@pytest.fixture
async def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    key = "k" + uuid.uuid4().hex
    secret = base64.b64encode(os.urandom(64)).decode()
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv(SECRET_ENV, secret)
    record = tmp_path / "kraken-record.jsonl"
    exchange = SimExchange(MARKET, RISK, record_path=record)
    front = sk.KrakenSim(exchange, {key: secret})
    sim = Simulator(exchange, app=lambda: sk.build_kraken_app(front))
    url = await sim.start()
    try:
        yield Env(front, url, key, secret, record)
    finally:
        await sim.stop()


async def wait_for(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def rest(env: Env, n: int) -> list[str]:
    """``n`` resting buys, far below the mark, sent by a plain ccxt kraken client."""
    bot, coids = env.bot(), []
    try:
        for _ in range(n):
            coid = "c" + uuid.uuid4().hex[:20]
            await bot.create_order(SYMBOL, "limit", "buy", "0.0010", "50000.00",
                                   {"clientOrderId": coid})
            coids.append(coid)
        seen = {o["clientOrderId"] for o in await bot.fetch_open_orders(SYMBOL)}
    finally:
        await bot.close()
    assert seen == set(coids)  # ccxt's own parse of Kraken's OpenOrders
    return coids


async def test_begin_term_when_never_refreshed_then_the_exchange_cancels_resting_orders(
        env: Env) -> None:
    venue = env.venue()
    await venue.start()
    try:
        assert venue.dead_man_switch and venue.dead_man_timeout_ms() == 2000
        await venue.begin_term()
        coids = await rest(env, 2)
        assert env.account in env.sim.timers
        await wait_for(lambda: not env.open_orders(), 30, "the switch to fire")
    finally:
        await venue.close()
    arm, trigger = env.dead_man()[0], env.dead_man()[-1]
    assert arm["action"] == "arm" and arm["timeout_s"] == 2
    assert trigger["action"] == "trigger" and trigger["canceled"] == len(coids)
    assert trigger["arrival_ms"] >= arm["arrival_ms"] + 2000
    states = {so.order.client_order_id: so.state
              for so in env.sim.exchange.orders_of(env.account)}
    assert states == dict.fromkeys(coids, "canceled")


async def test_term_service_refreshes_then_a_graceful_end_disarms(env: Env) -> None:
    venue = env.venue()
    await venue.start()
    try:
        await venue.begin_term()
        assert venue.term_service is not None
        service = asyncio.create_task(venue.term_service())
        coids = await rest(env, 1)
        placed = time.monotonic()
        # Well past one countdown (2 s), refreshed every 500 ms: nothing is cancelled.
        await wait_for(lambda: time.monotonic() - placed > 4.0
                       and sum(r["action"] == "arm" for r in env.dead_man()) >= 6, 30,
                       "several refreshes past one countdown")
        assert env.open_orders() == coids
        assert all(r["action"] == "arm" for r in env.dead_man())
        service.cancel()
        with pytest.raises(asyncio.CancelledError):
            await service
    finally:
        await venue.close()
    assert env.dead_man()[-1]["action"] == "disarm"
    assert env.account not in env.sim.timers  # no countdown left at the exchange
    assert env.open_orders() == coids


async def test_dead_man_timeout_is_rounded_up_to_whole_seconds_and_bounded(env: Env) -> None:
    venue = env.venue(dead_man_timeout="2500ms")
    await venue.start()
    try:
        assert venue.dead_man_timeout_ms() == 3000
        await venue.begin_term()
    finally:
        await venue.close()
    assert env.dead_man()[-1]["timeout_s"] == 3
    # OKX accepts 10..120 s (its API documentation): raised to the minimum, refused above.
    okx = CcxtVenue(venue_cfg(env.url, exchange="okx"), ACCOUNT, risk=RISK, lease=LEASE)
    assert okx.dead_man_timeout_ms() == 10_000
    okx = CcxtVenue(venue_cfg(env.url, exchange="okx", dead_man_timeout="5m"), ACCOUNT,
                    risk=RISK, lease=LEASE)
    with pytest.raises(VenueError, match="maximum of 120s"):
        okx.dead_man_timeout_ms()


async def test_dead_man_switch_off_runs_no_service(env: Env) -> None:
    venue = env.venue(dead_man_switch=False)
    await venue.start()
    try:
        assert not venue.dead_man_switch and venue.term_service is None
        await venue.begin_term()
    finally:
        await venue.close()
    assert env.dead_man() == []


CHILD = Path(__file__).with_name("deadman_child.py")


class Holder:
    """The child process holding the venue; its log goes to a file (never a full pipe)."""

    def __init__(self, env: Env, tmp_path: Path) -> None:
        self.ready, self.log = tmp_path / "ready", tmp_path / "holder.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), env.url, str(self.ready)],
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                stdout=subprocess.DEVNULL, stderr=log,
            )
        self.env = env

    async def resting(self) -> str:
        """The client order id the holder left resting, once it armed and rested it."""
        await wait_for(lambda: (self.ready.exists() and bool(self.env.open_orders()))
                       or self.proc.poll() is not None, 60, "the holder to arm and rest")
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        coid = self.ready.read_text().strip()
        assert self.env.open_orders() == [coid]
        return coid

    async def terminate(self) -> str:
        """SIGTERM (a graceful end of the term); its log once it exited 0."""
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 30)
        text = self.log.read_text()
        assert self.proc.returncode == 0, text[-2000:]
        return text

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


async def test_paused_holder_process_resting_orders_are_cancelled_by_the_exchange(
        env: Env, tmp_path: Path) -> None:
    """A real process holds the venue (armed, refreshing, one resting order); SIGSTOP it:
    the exchange cancels the order one countdown after the last refresh. After SIGCONT
    it refreshes again, and at SIGTERM it does not disarm (it was stalled past a lease
    TTL in this term: it may not be the holder any more)."""
    holder = Holder(env, tmp_path)
    try:
        await holder.resting()
        holder.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        await wait_for(lambda: not env.open_orders(), 30, "the exchange to cancel")
        assert time.monotonic() - stopped >= 1.0
        trigger = env.dead_man()[-1]
        last_arm = [r for r in env.dead_man() if r["action"] == "arm"][-1]
        assert trigger["action"] == "trigger" and trigger["canceled"] == 1
        assert trigger["arrival_ms"] >= last_arm["arrival_ms"] + 2000
        holder.proc.send_signal(signal.SIGCONT)
        # It refreshes again once resumed (harmless: the switch is the account's), and
        # still does not disarm at its end: it saw itself stalled in this term.
        await wait_for(lambda: env.dead_man()[-1]["action"] == "arm", 30,
                       "a refresh after SIGCONT")
        log = await holder.terminate()
    finally:
        holder.kill()
    assert "dead_man_left_armed" in log
    assert all(r["action"] != "disarm" for r in env.dead_man())


async def test_holder_process_sigterm_disarms(env: Env, tmp_path: Path) -> None:
    holder = Holder(env, tmp_path)
    try:
        coid = await holder.resting()
        log = await holder.terminate()
    finally:
        holder.kill()
    assert "dead_man_off" in log
    assert env.dead_man()[-1]["action"] == "disarm"
    assert env.account not in env.sim.timers
    assert env.open_orders() == [coid]


def test_binance_class_has_no_cancel_all_orders_after() -> None:
    """Why the switch is proven on Kraken: ccxt's binance (spot) class lacks it, so the
    venue runs no switch there (docs/venues.md)."""
    assert not ccxt_sync.binance().has.get("cancelAllOrdersAfter")
    assert ccxt_sync.kraken().has.get("cancelAllOrdersAfter") is True
