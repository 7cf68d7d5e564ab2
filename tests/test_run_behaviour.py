"""What an active `guardrails run` does besides holding the lease, shown with real processes:
it reacts to the kill switch, contains a crashing strategy, and refuses to lead with
limits that differ from the account's."""

from __future__ import annotations

import signal
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from guardrails.keys import AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config
from tests.test_run_processes import _record, _spawn

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("paper", "t1"))


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()


def test_run_when_kill_switch_halts_account_then_open_orders_canceled_and_new_ones_denied(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: five resting orders, then a looper that keeps trying.
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"count": 5, "offset": "-0.02", "interval": "50ms"},
                       extra_strategies=textwrap.dedent("""
                           [[strategies]]
                           name = "late"
                           module = "strategies.looper:Looper"
                           params = { symbol = "BTC-USD", offset = "-0.02", interval = "300ms" }
                       """))
    a = _spawn(procs, "a", cfg, tmp_path)
    a.wait_for("strategy.finished", where=lambda e: e["strategy"] == "looper")
    client = redis_server.client()
    assert client.scard(KEYS.open_orders) >= 5

    # Act
    killed = run_cli("kill", "--config", str(cfg), "--account", "paper:t1", "--reason", "drill")
    halted = a.wait_for("kill.halted", where=lambda e: e["trigger"] == "control message")
    after = time.time()
    a.wait_for("order.denied", after=after, where=lambda e: e["reason"] == "halted")

    # Assert: every order that was open is cancelled at the venue and in the ledger.
    assert killed.returncode == 0, killed.stderr
    assert int(halted["canceled"]) == int(halted["open_orders"]) >= 5
    canceled_at_venue = {r["coid"] for r in _record(redis_server.url, "paper-t1")
                         if r["type"] == "cancel" and r["result"] == "canceled"}
    assert len(canceled_at_venue) >= 5
    assert client.scard(KEYS.open_orders) == 0
    assert [e for e in a.events("order.admitted") if e.ts > after] == []


CRASHY = """
from decimal import Decimal
from guardrails.model import Intent, Side


class Crashy:
    async def run(self, ctx):
        mark = await ctx.mark("BTC-USD")
        price = (mark * Decimal("0.98")).quantize(Decimal("0.01"))
        await ctx.submit(Intent("BTC-USD", Side.BUY, Decimal("0.001"), price, tag="crashy"))
        raise RuntimeError("boom")
"""


def test_run_when_strategy_raises_then_logged_its_orders_canceled_and_others_keep_running(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    (tmp_path / "crashy.py").write_text(CRASHY)
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"interval": "200ms"},
                       extra_strategies=textwrap.dedent(f"""
                           [[strategies]]
                           name = "crashy"
                           module = "{tmp_path / 'crashy.py'}:Crashy"
                       """))
    a = _spawn(procs, "a", cfg, tmp_path)

    crashed = a.wait_for("strategy.crashed")
    stopped = a.wait_for("strategy.stopped", where=lambda e: e["strategy"] == "crashy")
    a.wait_for("order.admitted", after=stopped.ts, where=lambda e: e["strategy"] == "looper")

    assert crashed["strategy"] == "crashy"
    assert "RuntimeError: boom" in crashed["error"]
    assert stopped["canceled_open_orders"] == "1"
    crashy_coids = {e["client_order_id"] for e in a.events("order.admitted", strategy="crashy")}
    canceled = {r["coid"] for r in _record(redis_server.url, "paper-t1")
                if r["type"] == "cancel" and r["result"] == "canceled"}
    assert crashy_coids and crashy_coids <= canceled
    assert a.running()


def test_run_when_limits_differ_from_accounts_then_refuses_to_become_active(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    good = write_config(tmp_path / "good.toml", redis_url=redis_server.url)
    other = write_config(tmp_path / "other.toml", redis_url=redis_server.url,
                         daily_loss_limit="999")
    a = _spawn(procs, "a", good, tmp_path)
    a.wait_for("lease.acquired")
    b = _spawn(procs, "b", other, tmp_path, standby=True)

    mismatch = b.wait_for("limits.mismatch")
    a.send(signal.SIGKILL)
    a.wait_exit()
    time.sleep(3 * 1.5)

    # Assert: B refused to become active although the lease was free...
    assert "daily_loss_limit" in mismatch["differences"]
    assert b.events("lease.acquired") == []
    assert b.events("order.admitted") == []
    assert b.running()

    # ...until the operator changes the account's limits deliberately.
    applied = run_cli("limits", "--config", str(other), "apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    b.wait_for("lease.acquired", timeout=30)
    b.wait_for("order.admitted", timeout=30)


def test_run_when_example_config_then_story_of_lease_reconcile_orders_and_clean_stop(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # The `make run` config (config/paper.toml), pointed at a throwaway Redis.
    example = Path(__file__).resolve().parent.parent / "config" / "paper.toml"
    demo = RunProc("demo", example, tmp_path, extra_args=["--redis-url", redis_server.url])
    procs.append(demo)
    demo.start()

    acquired = demo.wait_for("lease.acquired")
    demo.wait_for("reconcile.done")
    started = {demo.wait_for("strategy.started", where=lambda e, n=n: e["strategy"] == n)["strategy"]
               for n in ("meanrev-btc", "quoter-eth")}
    demo.wait_for("order.admitted", where=lambda e: e["strategy"] == "quoter-eth")
    demo.wait_for("positions", timeout=30)
    demo.send(signal.SIGINT)

    assert demo.wait_exit() == 0
    assert started == {"meanrev-btc", "quoter-eth"}
    assert demo.wait_for("lease.released").int("token") == acquired.int("token")
    assert demo.events("strategy.crashed") == []


def test_run_when_mean_reversion_sees_deviation_then_it_trades_through_the_gate(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       extra_strategies=textwrap.dedent("""
                           [[strategies]]
                           name = "mr"
                           module = "strategies.mean_reversion:MeanReversion"
                           params.symbol = "BTC-USD"
                           params.window = 3
                           params.threshold = "0.0001"
                           params.size = "0.001"
                           params.interval = "300ms"
                       """))
    a = _spawn(procs, "a", cfg, tmp_path)

    signal_event = a.wait_for("strategy.signal", timeout=60)
    admitted = a.wait_for("order.admitted", timeout=30, where=lambda e: e["strategy"] == "mr")

    assert admitted["side"] == signal_event["side"]
    assert a.events("strategy.crashed") == []


def test_run_when_active_has_order_in_doubt_then_it_is_looked_up_and_settled_without_resend(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: an active instance; then one of "its" submits loses the venue's answer
    # (injected here with the holder's own token, as if its ack had been dropped).
    import asyncio

    import redis.asyncio as aioredis

    from guardrails.config import load_config
    from guardrails.gate import OrderGate
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, Intent, Order, OrderState, Side
    from guardrails.runtime.context import Context, MarkBook
    from guardrails.venues.base import SubmitResult, Unknown
    from guardrails.venues.paper import PaperVenue

    cfg_path = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                            looper={"count": 1})
    a = _spawn(procs, "a", cfg_path, tmp_path)
    token = a.wait_for("lease.acquired").int("token")
    a.wait_for("strategy.finished")
    cfg = load_config(cfg_path)

    class LostAck(PaperVenue):
        async def submit(self, order: Order) -> SubmitResult:
            await super().submit(order)
            return Unknown("ack lost (injected)")

    class Holder:
        def __init__(self) -> None:
            self.token, self.holder_id = token, "a"

        def valid(self) -> bool:
            return True

    async def lose_an_ack() -> str:
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            venue = LostAck(client, cfg.venue, cfg.account_id, risk=cfg.risk)  # type: ignore[arg-type]
            ctx = Context("doubt", gate=OrderGate(client, KEYS, cfg.risk),
                          ledger=Ledger(client, KEYS, cfg.risk), venue=venue,
                          leadership=Holder(), risk=cfg.risk, marks=MarkBook())
            mark = await ctx.mark("BTC-USD")
            decision = await ctx.submit(
                Intent("BTC-USD", Side.BUY, Decimal("0.001"), (mark * Decimal("0.98")).quantize(
                    Decimal("0.01")), intent_id="doubt-1"))
            assert isinstance(decision, Admitted)
            record = await ctx._ledger.order(decision.client_order_id)
            assert record is not None and record.state is OrderState.UNKNOWN
            return decision.client_order_id
        finally:
            await client.aclose()

    coid = asyncio.run(lose_an_ack())

    # Act: the active instance's in-doubt loop looks it up at the venue.
    settled = a.wait_for("reconcile.in_doubt", timeout=30)

    # Assert: settled from the venue's record (it is resting there), sent exactly once.
    assert settled["transitions"] == "1"
    state = redis_server.client().hget(KEYS.order(coid), "state")
    assert state == "SUBMITTED"
    sends = [r for r in _record(redis_server.url, "paper-t1")
             if r["type"] == "order" and r["coid"] == coid]
    assert len(sends) == 1


def test_run_when_health_port_given_then_health_endpoint_and_registry_show_role_and_token(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc]
) -> None:
    import json
    import urllib.request

    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    a = _spawn(procs, "a", cfg, tmp_path, extra_args=["--health-port", "0"])
    url = a.wait_for("health.serving")["url"]
    token = a.wait_for("lease.acquired").int("token")
    a.wait_for("order.admitted")
    time.sleep(1.5)  # at least one heartbeat as active

    with urllib.request.urlopen(url, timeout=10) as resp:
        facts = json.loads(resp.read())
    beat = redis_server.client().hgetall(KEYS.instance("a"))

    assert facts["role"] == "active" and facts["token"] == token
    assert facts["pid"] == a.pid
    assert beat["role"] == "active" and beat["token"] == str(token)
    assert beat["health_url"] == url
