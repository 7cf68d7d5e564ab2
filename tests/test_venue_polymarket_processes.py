"""Real ``guardrails run`` processes on one Polymarket wallet, against the CLOB simulator
process, driven by the unmodified py-clob-client: the seed incident replayed, and a
paused active fenced by the exchange's heartbeat. Claims are proven from the processes'
logs and the simulator's record."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from guardrails.sim.daemon import SimulatorProcess
from guardrails.sim.exchange import read_record
from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer, free_port
from tests.run_harness import RunProc

pytestmark = pytest.mark.slow

YES = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
NO = "52114319501245915516055106046884209969926127482827954674443846427813813222426"
MAX_COMBINED = Decimal(30)
DAILY_LOSS = Decimal(5)
SIZE = Decimal(5)


def write_config(path: Path, *, url: str, redis_url: str, address: str,
                 cancel_on_takeover: bool = True, volatility: str = "0.02") -> Path:
    path.write_text(f"""
[account]
venue = "polymarket"
id = "{address}"

[redis]
url = "{redis_url}"
socket_timeout = "500ms"

[lease]
ttl = "1500ms"
renew_deadline = "1s"
renew_interval = "250ms"
drift_margin = "50ms"

[risk]
quote_decimals = 6
max_order_notional = "100"
max_gross_exposure = "1000"
daily_loss_limit = "{DAILY_LOSS}"
price_band = "0.2"
orders_per_second = "50"
burst = 50

[risk.instruments.YES]
tick = "0.01"
lot = "0.01"
max_position = "{MAX_COMBINED}"

[risk.instruments.NO]
tick = "0.01"
lot = "0.01"
max_position = "{MAX_COMBINED}"

[venue]
kind = "polymarket"
url = "{url}"
key_env = "GUARDRAILS_TEST_POLY_KEY"
heartbeat_interval = "500ms"
cancel_on_takeover = {str(cancel_on_takeover).lower()}
tokens = {{ YES = "{YES}", NO = "{NO}" }}

[venue.simulator]
seed = 11
step = "200ms"
volatility = "{volatility}"
start_prices = {{ YES = "0.50", NO = "0.50" }}

[[strategies]]
name = "both-sides"
module = "strategies.binary_quoter:BinaryQuoter"
params.yes = "YES"
params.no = "NO"
params.size = "{SIZE}"
params.max_combined = "{MAX_COMBINED}"
params.edge = "0.02"
params.refresh = "300ms"

[runtime]
heartbeat_interval = "500ms"
heartbeat_ttl = "3s"
""")
    return path


class World:
    def __init__(self, tmp_path: Path, redis_server: RedisServer, *, admin: bool = False,
                 **cfg: Any) -> None:
        key = "0x" + bytes(Account.create().key).hex()
        self.address = str(Account.from_key(key).address).lower()
        self.env = {"GUARDRAILS_TEST_POLY_KEY": key}
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.record = tmp_path / "clob-record.jsonl"
        self.config = write_config(tmp_path / "poly.toml", url=self.url,
                                   redis_url=redis_server.url, address=self.address, **cfg)
        self.sim = SimulatorProcess(config=str(self.config), record=self.record,
                                    protocol="clob", heartbeat_timeout_ms=3_000, port=port,
                                    admin=admin, env=subprocess_env())

    def rows(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in read_record(self.record) if r.get("type") == kind]


@pytest.fixture
def procs(tmp_path: Path, artifacts_dir: Path, request: pytest.FixtureRequest
          ) -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()
        out = artifacts_dir / "polymarket_processes" / request.node.name
        out.mkdir(parents=True, exist_ok=True)
        for p in started:
            if p.log_path.exists():
                shutil.copy(p.log_path, out / p.log_path.name)


@pytest.fixture
def world(tmp_path: Path, redis_server: RedisServer) -> Iterator[World]:
    w = World(tmp_path, redis_server)
    w.sim.start()
    try:
        yield w
    finally:
        w.sim.stop()


def _spawn(procs: list[RunProc], name: str, w: World, tmp_path: Path, **kw: Any) -> RunProc:
    env = {**w.env, **kw.pop("env", {})}
    proc = RunProc(name, w.config, tmp_path, env=env, **kw)
    procs.append(proc)
    return proc.start()


def test_seed_incident_when_two_runs_on_one_wallet_with_different_home_then_one_trades_in_budget(
    world: World, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: one copy started by hand, one by a supervisor with another HOME.
    (tmp_path / "home-hand").mkdir()
    (tmp_path / "home-supervisor").mkdir()
    hand = _spawn(procs, "hand", world, tmp_path, env={"HOME": str(tmp_path / "home-hand")})
    hand.wait_for("lease.acquired", timeout=60)
    supervised = _spawn(procs, "supervisor", world, tmp_path, standby=True,
                        env={"HOME": str(tmp_path / "home-supervisor")})
    supervised.wait_for("lease.standby", timeout=60)
    # Act: both live for a while on a market that moves through their bids.
    hand.wait_for("fill", timeout=60)
    time.sleep(6.0)
    # Assert: exactly one copy trades...
    assert supervised.events("order.admitted") == []
    assert supervised.events("order.submitted") == []
    submitted = {e["venue_order_id"] for e in hand.events("order.submitted")}
    accepted = [r for r in world.rows("order") if r["result"] == "accepted"]
    assert accepted and {r["coid"] for r in accepted} <= submitted
    assert all(r["account"] == world.address for r in accepted)
    # ...and the wallet's combined position and loss stay within ONE budget, by the
    # exchange's own record of every fill.
    fills = world.rows("fill")
    assert fills, "the market never crossed a bid"
    position = {"YES": Decimal(0), "NO": Decimal(0)}
    spent = Decimal(0)
    for f in fills:
        sign = 1 if f["side"] == "buy" else -1
        position[f["symbol"]] += sign * Decimal(f["qty"])
        spent += sign * Decimal(f["qty"]) * Decimal(f["price"])
    assert sum(position.values()) <= MAX_COMBINED, position
    # Every fill was a bid at or below the mark: worst case at the marks the account holds.
    marks = _last_marks(world)
    loss = spent - sum(position[s] * marks.get(s, Decimal(0)) for s in position)
    assert loss <= DAILY_LOSS, (loss, position, marks)


def _last_marks(w: World) -> dict[str, Decimal]:
    import urllib.request

    out = {}
    for sym, tok in (("YES", YES), ("NO", NO)):
        with urllib.request.urlopen(f"{w.url}/midpoint?token_id={tok}", timeout=5) as r:
            out[sym] = Decimal(json.loads(r.read())["mid"])
    return out


def test_sigstop_when_active_paused_past_ttl_then_heartbeat_cancels_and_late_orders_refused(
    tmp_path: Path, redis_server: RedisServer, procs: list[RunProc]
) -> None:
    # Arrange: one active with resting bids, its local self-fence off, so after the pause
    # it keeps submitting with its old token for 3 s and only Redis and the exchange can
    # stop it; no standby, no takeover cancel: the heartbeat alone cancels at the exchange.
    # A still market: the bids rest (nothing fills them), so there is something to cancel.
    w = World(tmp_path, redis_server, cancel_on_takeover=False, volatility="0")
    w.sim.start()
    try:
        a = _spawn(procs, "a", w, tmp_path, stale_leader_ms=3000)
        token = a.wait_for("lease.acquired", timeout=60).int("token")
        a.wait_for("order.submitted", timeout=60)
        # Act: freeze it well past the TTL (1.5 s) and the heartbeat timeout (3 s).
        a.send(signal.SIGSTOP)
        stopped_ms = time.time() * 1000
        time.sleep(6.0)
        continued = time.time()
        a.send(signal.SIGCONT)
        a.wait_for("runtime.standby", timeout=30, after=continued)
        time.sleep(1.0)
        # Assert: while it was frozen the exchange cancelled its resting orders itself...
        hb = [r for r in w.rows("cancel") if r.get("reason") == "heartbeat_timeout"]
        assert hb, w.sim.logs()[-2000:]
        assert all(stopped_ms <= r["arrival_ms"] <= continued * 1000 for r in hb)
        # Every order it cancelled is one this bot placed before it froze. (Not only those
        # logged as submitted: an order in flight at the SIGSTOP rests at the exchange while
        # its answer waits, unread, in the frozen process.)
        placed = {r["coid"] for r in w.rows("order")
                  if r.get("result") != "rejected" and r["arrival_ms"] <= stopped_ms + 500}
        assert {r["coid"] for r in hb} <= placed, (hb, placed)
        resting = {e["venue_order_id"] for e in a.events("order.submitted")}
        assert {r["coid"] for r in hb} & resting, (hb, resting)
        # ...and its late orders under the old token were refused by the gate.
        late = [e for e in a.events("order.denied") if e.ts >= continued
                and e.get("token") == str(token)]
        assert late, a.text()[-3000:]
        assert {e["reason"] for e in late} <= {"lease_expired", "stale_token"}
        assert [e for e in a.events("order.admitted")
                if e.ts >= continued and e.get("token") == str(token)] == []
        assert a.running()
    finally:
        w.sim.stop()
