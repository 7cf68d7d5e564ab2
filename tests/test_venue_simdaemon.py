"""The per-user simulator daemon (``url = "embedded"``): one exchange for every instance
of the user on the host, started once, reused, its state replayed after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from guardrails.config import HttpVenueConfig, PaperVenueConfig
from guardrails.keys import AccountId
from guardrails.model import Order, Side
from guardrails.sim import daemon
from guardrails.sim.exchange import DEFAULT_RISK, SimExchange, SimStateError, read_record
from guardrails.venues import eip712, signing
from guardrails.venues.base import Accepted, Rejected, VenueError, VenueOrderState
from guardrails.venues.http import HttpVenue
from tests.conftest import subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc
from tests.venue_conformance import now_ms

SYMBOL = "BTC-USD"
MARKET = {
    "name": "sim", "seed": 5, "step": "1h",  # the wall clock never moves the market here
    "start_prices": {SYMBOL: "60000.00", "ETH-USD": "3000.00"},
}


def venue_cfg(**market_over: object) -> HttpVenueConfig:
    return HttpVenueConfig.model_validate({
        "url": "embedded", "key_env": "GUARDRAILS_TEST_UNSET_KEY", "request_timeout": "5s",
        "simulator": {**MARKET, **market_over},
    })


def state_root() -> Path:
    return Path(os.environ["GUARDRAILS_STATE_DIR"]) / "simulator"


@pytest.fixture
async def daemon_cleanup() -> AsyncIterator[None]:
    try:
        yield
    finally:
        daemon.stop()


async def started(cfg: HttpVenueConfig | None = None, account: str = "demo") -> HttpVenue:
    venue = HttpVenue(cfg or venue_cfg(), AccountId("paper", account), risk=DEFAULT_RISK)
    await venue.start()
    return venue


def order(coid: str, side: Side, price: Decimal) -> Order:
    return Order(coid, SYMBOL, side, Decimal("0.001"), price, 3, now_ms() + 60_000)


_STARTER = """
import json, sys
from guardrails.sim import daemon, exchange
from guardrails.venues import eip712, signing
from guardrails.config import PaperVenueConfig
spec = daemon.MarketSpec(PaperVenueConfig.model_validate(json.loads(sys.argv[1])),
                            exchange.DEFAULT_RISK, 1)
url = daemon.ensure_running(spec)
print(json.dumps({"url": url, "pid": daemon.status()["pid"]}))
"""


def test_ensure_running_when_two_processes_start_at_once_then_one_daemon_both_reach(
    daemon_cleanup: None,
) -> None:
    # Arrange: two processes, as `make run` and a `--standby` in another terminal.
    env = subprocess_env()
    procs = [
        subprocess.Popen([sys.executable, "-c", _STARTER, json.dumps(MARKET)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    try:
        # Act
        outs = [p.communicate(timeout=90) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Assert: both got the same daemon; exactly one was ever started.
    assert all(p.returncode == 0 for p in procs), [err[-3000:] for _, err in outs]
    answers = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert answers[0] == answers[1]
    log = (state_root() / "sim.log").read_text()
    assert log.count("event=simulator.listening") == 1
    assert daemon.status()["pid"] == answers[0]["pid"]


async def test_restart_when_daemon_stopped_then_orders_fills_balances_and_tombstones_replayed(
    daemon_cleanup: None,
) -> None:
    # Arrange: a fill, a resting order and a tombstone at the daemon.
    venue = await started()
    try:
        mark = (await venue.marks([SYMBOL]))[SYMBOL]
        taker, rest = order("c-taker", Side.BUY, mark + 10), order("c-rest", Side.BUY, mark - 500)
        late = order("c-late", Side.SELL, mark - 10)
        assert isinstance(await venue.submit(taker), Accepted)
        assert isinstance(await venue.submit(rest), Accepted)
        assert isinstance(await venue.cancel(late.client_order_id), Accepted)
        before_fills = await venue.fills_since(None)
        before_balances = await venue.balances()
        first_pid = daemon.status()["pid"]
    finally:
        await venue.close()
    # Act: the daemon stops; the next instance starts it again (a new process).
    assert daemon.stop() is True
    assert daemon.status()["running"] is False
    venue = await started()
    try:
        info = daemon.status()
        taker_now = await venue.lookup("c-taker")
        rest_now = await venue.lookup("c-rest")
        resent = await venue.submit(taker)
        late_result = await venue.submit(late)
        fills_now = await venue.fills_since(None)
        after_cursor = await venue.fills_since(before_fills.cursor)
        balances_now = await venue.balances()
        canceled = await venue.cancel("c-rest")
    finally:
        await venue.close()
    # Assert
    assert info["running"] and info["pid"] != first_pid and info["replayed"] >= 5
    assert taker_now.state is VenueOrderState.FILLED
    assert [f.fill_id for f in taker_now.fills] == [f.fill_id for f in before_fills.fills]
    assert rest_now.state is VenueOrderState.OPEN
    assert isinstance(resent, Accepted)  # a duplicate: the original acknowledgement
    assert late_result == Rejected("canceled_before_arrival")
    assert list(fills_now.fills) == list(before_fills.fills)
    assert fills_now.cursor == before_fills.cursor and list(after_cursor.fills) == []
    assert balances_now == before_balances
    assert isinstance(canceled, Accepted)
    results = [(r["type"], r.get("coid"), r.get("result")) for r in read_record(state_root()
                                                                              / "record.jsonl")]
    assert ("order", "c-taker", "duplicate") in results
    assert results.count(("fill", "c-taker", None)) == 1


def test_venue_status_and_stop_when_run_as_commands_then_report_and_stop(
    daemon_cleanup: None,
) -> None:
    # Arrange: a process starts the daemon and exits (the daemon is shared: it stays).
    env = subprocess_env()
    starter = subprocess.run([sys.executable, "-c", _STARTER, json.dumps(MARKET)],
                             capture_output=True, text=True, env=env, timeout=90)
    assert starter.returncode == 0, starter.stderr
    cmd = [sys.executable, "-m", "guardrails", "venue"]
    # Act
    running = subprocess.run([*cmd, "status", "--json"], capture_output=True, text=True,
                             env=env, timeout=60)
    stopped = subprocess.run([*cmd, "stop"], capture_output=True, text=True, env=env, timeout=60)
    after = subprocess.run([*cmd, "status", "--json"], capture_output=True, text=True, env=env,
                           timeout=60)
    # Assert
    info = json.loads(running.stdout)
    assert running.returncode == 0 and info["running"] is True
    assert info["state_dir"] == str(state_root()) and info["url"].startswith("http://127.0.0.1:")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert after.returncode == 3 and json.loads(after.stdout)["running"] is False
    assert not (state_root() / "sim.json").exists()


async def test_start_when_running_daemon_simulates_another_market_then_refused(
    daemon_cleanup: None,
) -> None:
    venue = await started()
    await venue.close()

    with pytest.raises(VenueError, match="another market"):
        await started(venue_cfg(seed=6))


def test_resume_when_record_has_torn_tail_then_cut_and_state_kept(tmp_path: Path) -> None:
    # Arrange: an exchange with one fill, killed while writing its next line.
    market = PaperVenueConfig.model_validate(MARKET)
    record = tmp_path / "record.jsonl"
    first = SimExchange(market, DEFAULT_RISK, record_path=record, resume=True, market_digest="d1")
    signer = signing.Signer.demo("paper:torn")
    signed = eip712.sign_order(signer, order("c-1", Side.BUY, Decimal("60010.00")), first.chain_id)
    status, _ = first.submit({"order": signed.message, "signature": signed.signature})
    assert status == 200
    first.close()
    good = record.read_bytes()
    with record.open("ab") as f:
        f.write(b'{"seq": 99, "type": "ord')
    # Act
    again = SimExchange(market, DEFAULT_RISK, record_path=record, resume=True, market_digest="d1")
    again.close()
    lookup = again.lookup(signer.address, "c-1")
    balances = again.balances(signer.address)
    # Assert: the torn line is gone, the next line starts clean, all lines parse.
    text = record.read_bytes()
    assert lookup[1]["state"] == "filled" and len(lookup[1]["fills"]) == 1
    assert balances == {"balances": {SYMBOL: "0.0010", "cash": "-60.000000"}}
    assert text.startswith(good) and b'"type": "ord' not in text
    assert all(json.loads(line) for line in text.splitlines())
    with pytest.raises(SimStateError, match="another market"):
        SimExchange(market, DEFAULT_RISK, record_path=record, resume=True, market_digest="d2")


def test_daemon_when_started_then_not_under_home_and_outlives_its_starter(
    daemon_cleanup: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # Arrange: a HOME that must not matter.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    env = subprocess_env()
    # Act: a process starts the daemon and exits.
    out = subprocess.run([sys.executable, "-c", _STARTER, json.dumps(MARKET)],
                         capture_output=True, text=True, env=env, timeout=90)
    info = daemon.status()
    # Assert
    assert out.returncode == 0, out.stderr
    assert info["running"] is True and info["pid"] == json.loads(out.stdout)["pid"]
    assert Path(info["state_dir"]).is_relative_to(Path(os.environ["GUARDRAILS_STATE_DIR"]))
    assert not (tmp_path / "home").exists()


@pytest.fixture
def runs() -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()


def test_run_when_demo_config_fails_over_then_standby_trades_on_the_same_exchange(
    redis_server: RedisServer, tmp_path: Path, runs: list[RunProc], daemon_cleanup: None,
) -> None:
    # Arrange: `make run`'s config in one "terminal", a --standby in another.
    example = Path(__file__).resolve().parent.parent / "config" / "paper.toml"
    extra = ["--redis-url", redis_server.url]
    a = RunProc("a", example, tmp_path, extra_args=extra)
    runs.append(a)
    a.start()
    a_lease = a.wait_for("lease.acquired", timeout=60)
    a.wait_for("order.submitted", timeout=60)
    b = RunProc("b", example, tmp_path, standby=True, extra_args=extra)
    runs.append(b)
    b.start()
    b.wait_for("venue.http.started", timeout=60)
    # Act: the active one is stopped; the standby takes over.
    a.send(signal.SIGTERM)
    assert a.wait_exit(timeout=60) == 0
    b_lease = b.wait_for("lease.acquired", timeout=60)
    b.wait_for("order.submitted", timeout=60, after=b_lease.ts)
    b.send(signal.SIGTERM)
    assert b.wait_exit(timeout=60) == 0
    # Assert: one exchange, one exchange account, both terms' orders in its record.
    a_venue, b_venue = a.wait_for("venue.http.started"), b.wait_for("venue.http.started")
    assert (a_venue["url"], a_venue["account"]) == (b_venue["url"], b_venue["account"])
    assert b_lease.int("token") > a_lease.int("token")
    record = read_record(state_root() / "record.jsonl")
    accepted = {r["coid"]: r for r in record if r["type"] == "order" and r["result"] == "accepted"}
    for proc in (a, b):
        sent = [e["client_order_id"] for e in proc.events("order.submitted")]
        assert sent and all(c in accepted for c in sent), proc.name
        assert {accepted[c]["account"] for c in sent} == {a_venue["account"]}
    tokens = {int(r["token"]) for r in accepted.values()}
    assert {a_lease.int("token"), b_lease.int("token")} <= tokens
    assert (state_root() / "sim.log").read_text().count("event=simulator.listening") == 1


def test_serve_daemon_when_another_daemon_owns_the_record_then_second_refuses(
    daemon_cleanup: None,
) -> None:
    # Arrange: a running daemon (as if it hung, a second start is attempted by hand).
    env = subprocess_env()
    starter = subprocess.run([sys.executable, "-c", _STARTER, json.dumps(MARKET)],
                             capture_output=True, text=True, env=env, timeout=90)
    assert starter.returncode == 0, starter.stderr
    first = json.loads(starter.stdout)
    # Act
    subprocess.run([sys.executable, "-m", "guardrails", "venue", "serve", "--daemon-dir",
                    str(state_root())], env=env, timeout=60, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    error = state_root() / "sim.error"
    deadline = time.monotonic() + 60
    while not error.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    # Assert: one writer of the record; the first daemon serves on.
    assert "another simulator daemon" in error.read_text()
    assert daemon.status()["pid"] == first["pid"]
