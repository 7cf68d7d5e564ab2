"""One writer per account through the ccxt venue, with real `guardrails run` processes.

Two copies of one account trade through the unmodified ccxt ``binance`` class against a
``guardrails venue serve --protocol binance`` process. Every claim is proven from what
the processes logged (their ``order.submitted`` client order ids, lease events) and what
the exchange recorded (its JSONL record: each order's arrival, window and verdict) — the
Binance protocol carries no fencing token, so orders are attributed to an instance by
client order id. Lease timings are short (ttl 1.5 s); margins are seconds (shared box).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrails.sim.daemon import SimulatorProcess
from guardrails.sim.exchange import read_record
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc

pytestmark = pytest.mark.slow

TTL_S = 1.5
RENEW_INTERVAL_S = 0.25
MARGIN_S = 2.0
KEY_ENV, SECRET_ENV = "GUARDRAILS_TEST_CCXT_KEY", "GUARDRAILS_TEST_CCXT_SECRET"

CONFIG = """
[account]
venue = "binance"
id = "t1"

[redis]
url = "{redis_url}"
socket_timeout = "500ms"

[lease]
ttl = "{ttl}"
renew_deadline = "{renew_deadline}"
renew_interval = "{renew_interval}"
drift_margin = "50ms"

[risk]
max_order_notional = "1000000"
max_gross_exposure = "100000000"
daily_loss_limit = "1000000"
price_band = "0.05"
orders_per_second = "100"
burst = 100

[risk.instruments."BTC/USDT"]
tick = "0.01"
lot = "0.0001"
max_position = "1000"

[venue]
kind = "ccxt"
exchange = "binance"
url = "{venue_url}"
api_key_env = "{key_env}"
secret_env = "{secret_env}"
enable_rate_limit = false
request_timeout = "5s"

[venue.simulator]
seed = 7
step = "250ms"
volatility = "0.0005"
start_prices = {{ "BTC/USDT" = "60000.00" }}

[[strategies]]
name = "looper"
module = "strategies.looper:Looper"
params = {{ symbol = "BTC/USDT", interval = "100ms", offset = "{offset}" }}

[runtime]
heartbeat_interval = "500ms"
heartbeat_ttl = "3s"
"""


class Exchange:
    """The Binance-protocol simulator process with one API key (and ``more_keys``: its
    ``--keys-file`` entries), and its record."""

    def __init__(self, tmp: Path, more_keys: dict[str, Any] | None = None) -> None:
        self.key, self.secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex * 2
        keys = tmp / "keys.json"
        keys.write_text(json.dumps({self.key: self.secret, **(more_keys or {})}))
        os.chmod(keys, 0o600)
        self.record = tmp / "binance-record.jsonl"
        self.tmp = tmp
        self.proc: SimulatorProcess | None = None

    def start(self, config: Path) -> str:
        self.proc = SimulatorProcess(config=str(config), record=self.record, admin=True,
                                     protocol="binance", keys_file=self.tmp / "keys.json")
        return self.proc.start()

    def env(self) -> dict[str, str]:
        return {KEY_ENV: self.key, SECRET_ENV: self.secret}

    def faults(self, **body: Any) -> None:
        import urllib.request

        assert self.proc is not None
        req = urllib.request.Request(self.proc.url + "/admin/faults", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

    def orders(self) -> list[dict[str, Any]]:
        return [r for r in read_record(self.record) if r.get("type") == "order"]


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    ex = Exchange(tmp_path)
    try:
        yield ex
    finally:
        if ex.proc is not None:
            ex.proc.stop()


@pytest.fixture
def procs(artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()
        out = artifacts_dir / "ccxt_processes" / request.node.name
        out.mkdir(parents=True, exist_ok=True)
        for p in started:
            if p.log_path.exists():
                shutil.copy(p.log_path, out / p.log_path.name)


def setup(tmp: Path, redis_url: str, exchange: Exchange, *, ttl: str = "1500ms",
          renew_deadline: str = "1s", renew_interval: str = "250ms",
          offset: str = "-0.01") -> Path:
    """Write the config (the simulator's URL is known only once it listens)."""
    def write(url: str) -> Path:
        path = tmp / "c.toml"
        path.write_text(CONFIG.format(redis_url=redis_url, venue_url=url, ttl=ttl,
                                      renew_deadline=renew_deadline,
                                      renew_interval=renew_interval, key_env=KEY_ENV,
                                      secret_env=SECRET_ENV, offset=offset))
        return path

    url = exchange.start(write("http://127.0.0.1:1"))
    return write(url)


def spawn(procs: list[RunProc], name: str, cfg: Path, tmp: Path, exchange: Exchange,
          **kw: Any) -> RunProc:
    proc = RunProc(name, cfg, tmp, env=exchange.env(), **kw)
    procs.append(proc)
    return proc.start()


def submitted(proc: RunProc) -> set[str]:
    return {e["client_order_id"] for e in proc.events("order.submitted")}


def test_run_when_two_copies_on_one_account_then_only_the_lease_holder_trades_and_kill_fails_over(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc], exchange: Exchange,
) -> None:
    # Arrange: A active and trading through ccxt, B a deliberate standby.
    cfg = setup(tmp_path, redis_server.url, exchange)
    a = spawn(procs, "a", cfg, tmp_path, exchange)
    acquired_a = a.wait_for("lease.acquired", timeout=60)
    a.wait_for("order.submitted", timeout=60)
    b = spawn(procs, "b", cfg, tmp_path, exchange, standby=True)
    b.wait_for("lease.standby", timeout=60)
    time.sleep(3 * TTL_S)
    # Assert: exactly one trades — every order the exchange accepted is one A sent.
    assert b.events("lease.acquired") == [] and b.events("order.submitted") == []
    accepted = {r["coid"] for r in exchange.orders() if r["result"] == "accepted"}
    assert accepted and accepted <= submitted(a)
    # Act: SIGKILL the active one.
    killed_at = time.time()
    a.send(signal.SIGKILL)
    a.wait_exit()
    acquired_b = b.wait_for("lease.acquired", timeout=30)
    b.wait_for("order.submitted", timeout=30, after=acquired_b.ts)
    # Assert: B took over within a TTL (+ margin), with a larger token, and trades.
    assert acquired_b.ts - killed_at <= TTL_S + RENEW_INTERVAL_S + MARGIN_S
    assert acquired_b.int("token") > acquired_a.int("token")
    rows = {r["coid"]: r for r in exchange.orders() if r["result"] == "accepted"}
    mine = submitted(b)
    assert mine and mine <= set(rows)
    assert not (mine & submitted(a))
    assert all(int(rows[c]["arrival_ms"]) >= killed_at * 1000 for c in mine)


def test_run_when_paused_holders_order_reaches_exchange_late_then_recv_window_rejects_it(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc], exchange: Exchange,
) -> None:
    # Arrange: A trades; the exchange holds A's next order request 4 s in flight (a
    # paused/partitioned sender), and A itself is frozen past its TTL.
    cfg = setup(tmp_path, redis_server.url, exchange)
    a = spawn(procs, "a", cfg, tmp_path, exchange)
    token_a = a.wait_for("lease.acquired", timeout=60).int("token")
    a.wait_for("order.submitted", timeout=60)
    b = spawn(procs, "b", cfg, tmp_path, exchange, standby=True)
    b.wait_for("lease.standby", timeout=60)
    exchange.faults(hold_submits=1, hold_seconds=4.0)
    time.sleep(0.5)  # A sends every 100 ms: its next order is now held
    a.send(signal.SIGSTOP)
    # Act
    acquired_b = b.wait_for("lease.acquired", timeout=30)
    b.wait_for("order.submitted", timeout=30, after=acquired_b.ts)
    time.sleep(4.0)  # the held request is processed meanwhile
    continued_at = time.time()
    a.send(signal.SIGCONT)
    a.wait_for("lease.standby", timeout=30, after=continued_at - 0.5,
               where=lambda e: e["holder"] == "b")
    # Assert: the exchange itself refused A's late order (-1021, after its window), and
    # accepted nothing of A's once B held the lease.
    a_sent = {e["client_order_id"] for e in a.events("order.admitted")
              if e.get("token") == str(token_a)}
    late = [r for r in exchange.orders() if r["coid"] in a_sent and r["reason"] == "expired"]
    assert late, exchange.orders()[-5:]
    assert all(r.get("binance_code") == -1021 and r["arrival_ms"] > r["deadline_ms"]
               for r in late)
    fills = {r["coid"] for r in read_record(exchange.record) if r.get("type") == "fill"}
    assert not ({r["coid"] for r in late} & fills)
    after_b = [r for r in exchange.orders() if r["coid"] in a_sent and r["result"] == "accepted"
               and int(r["arrival_ms"]) >= acquired_b.ts * 1000]
    assert after_b == []
    assert a.running() and a.events("strategy.crashed") == []


def test_run_when_active_gets_sigterm_then_standby_takes_over_at_once_without_overlap(
    redis_server: RedisServer, tmp_path: Path, procs: list[RunProc], exchange: Exchange,
) -> None:
    # Arrange: a TTL long enough that only the release explains a fast takeover.
    cfg = setup(tmp_path, redis_server.url, exchange, ttl="6s", renew_deadline="4s",
                renew_interval="500ms")
    a = spawn(procs, "a", cfg, tmp_path, exchange)
    a.wait_for("lease.acquired", timeout=60)
    a.wait_for("order.submitted", timeout=60)
    b = spawn(procs, "b", cfg, tmp_path, exchange, standby=True)
    b.wait_for("lease.standby", timeout=60)
    # Act
    a.send(signal.SIGTERM)
    rc = a.wait_exit(timeout=30)
    acquired_b = b.wait_for("lease.acquired", timeout=30)
    b.wait_for("order.submitted", timeout=30, after=acquired_b.ts)
    # Assert: clean exit, handover well under the TTL, and at the exchange every order
    # of A arrived before B's first.
    assert rc == 0, a.text()[-3000:]
    released = a.wait_for("lease.released")
    assert 0 <= acquired_b.ts - released.ts < 2.0
    rows = {r["coid"]: r for r in exchange.orders() if r["result"] == "accepted"}
    last_a = max(int(rows[c]["arrival_ms"]) for c in submitted(a))
    first_b = min(int(rows[c]["arrival_ms"]) for c in submitted(b))
    assert last_a <= first_b


def test_venue_serve_when_keys_file_is_not_json_then_exit_2_naming_it(tmp_path: Path) -> None:
    from tests.run_harness import run_cli

    bad = tmp_path / "keys.json"
    bad.write_text("{not json")

    done = run_cli("venue", "serve", "--protocol", "binance", "--port", "0",
                   "--keys-file", str(bad))

    assert done.returncode == 2, done.stderr
    assert f"--keys-file {bad}: not JSON" in done.stderr and "Traceback" not in done.stderr


def test_run_when_configured_tick_differs_from_the_exchange_then_exit_2_naming_both(
    redis_server: RedisServer, tmp_path: Path, exchange: Exchange,
) -> None:
    from tests.run_harness import run_cli

    # Arrange: the exchange lists BTC/USDT with tick 0.01; the config says 0.1.
    cfg = setup(tmp_path, redis_server.url, exchange)
    cfg.write_text(cfg.read_text().replace('tick = "0.01"', 'tick = "0.1"'))
    # Act
    done = run_cli("run", "--config", str(cfg), env=exchange.env(), timeout=60)
    # Assert
    assert done.returncode == 2, done.stderr[-2000:]
    assert "BTC/USDT tick: config 0.1, exchange PRICE_FILTER tickSize 0.01" in done.stderr
    assert exchange.secret not in done.stderr
