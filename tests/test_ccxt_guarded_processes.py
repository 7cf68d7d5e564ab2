"""The guarded example bot (examples/guarded_bot.py, unmodified) run twice on one account,
as real processes against the Binance-protocol simulator (its own process) and a real
redis-server (issue 12). Each copy has its own host-lock directory, as two hosts would;
neither is told about the other. Claims are proven from what the simulator recorded (every
order that reached the exchange), from the ledger's record of each order (its token) and
the gate's journal (admissions stamped by Redis), and from the processes' timestamped
events. Lease ttl 1.5 s; margins are seconds, because this box is shared.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from guardrails.keys import AccountId, AccountKeys
from guardrails.sim.daemon import SimulatorProcess
from guardrails.sim.exchange import read_record
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc
from tests.test_ccxt_guarded import write_config

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("binance", "guarded"))
ROOT = Path(__file__).resolve().parent.parent
BOT = ROOT / "examples" / "guarded_bot.py"
TTL_S = 1.5
RUN_WITH_LOGS = ("import runpy, sys; from guardrails import logs; logs.setup(fmt='kv'); "
                 "runpy.run_path(sys.argv[1], run_name='__main__')")
"""The example as it is, with the harness's events on stderr (key=value lines)."""


class Exchange:
    """The simulator process and what reached it, each order with its ledger token."""

    def __init__(self, tmp_path: Path, config: Path, redis_url: str) -> None:
        self.key, self.secret = "k" + uuid.uuid4().hex, uuid.uuid4().hex
        keys = tmp_path / "keys.json"
        keys.touch(mode=0o600)
        keys.write_text(json.dumps({self.key: self.secret}))
        self.record = tmp_path / "record.jsonl"
        self.sim = SimulatorProcess(config=str(config), protocol="binance", keys_file=keys,
                                    record=self.record)
        self.url = self.sim.start()
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def accepted(self) -> list[tuple[int, int, Decimal]]:
        """(token, arrival ms, qty) of every order the exchange accepted."""
        out = []
        for r in read_record(self.record):
            if r.get("type") == "order" and r.get("result") == "accepted":
                token = self.redis.hget(KEYS.order(str(r["coid"])), "token")
                out.append((int(token) if token else -1, int(r["arrival_ms"]),
                            Decimal(str(r["qty"]))))
        return out

    def tokens(self) -> set[int]:
        return {t for t, _, _ in self.accepted()}

    def admits(self) -> list[tuple[int, int]]:
        """(Redis ms, token) of every gate admission, in the journal's order."""
        return [(int(i.split("-")[0]), int(f["token"]))
                for i, f in self.redis.xrange(KEYS.journal) if f.get("ev") == "admit"]

    def close(self) -> None:
        self.sim.stop()
        self.redis.close()


class GuardedBot(RunProc):
    def __init__(self, name: str, config: Path, log_dir: Path, exchange: Exchange, *,
                 interval: float) -> None:
        lock_dir = log_dir / f"locks-{name}"
        lock_dir.mkdir(mode=0o700)
        super().__init__(name, config, log_dir, env={
            "GUARDRAILS_LOCK_DIR": str(lock_dir), "BOT_CONFIG": str(config),
            "EXCHANGE_URL": exchange.url, "BOT_API_KEY": exchange.key,
            "BOT_SECRET": exchange.secret, "BOT_INTERVAL": str(interval),
        })

    def start(self) -> GuardedBot:
        from tests.conftest import subprocess_env

        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RUN_WITH_LOGS, str(BOT)], stdout=self._log,
            stderr=subprocess.STDOUT, env=subprocess_env(**self.env), cwd=ROOT,
        )
        return self

    def said(self, words: str) -> int:
        """How many of the bot's own lines (its prints) contain ``words``."""
        return sum(words in line for line in self.text().splitlines())


@pytest.fixture
def started(artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[list[object]]:
    things: list[object] = []
    try:
        yield things
    finally:
        out = artifacts_dir / "ccxt_guarded" / request.node.name
        out.mkdir(parents=True, exist_ok=True)
        for t in reversed(things):
            if isinstance(t, GuardedBot):
                t.cleanup()
                if t.log_path.exists():
                    shutil.copy(t.log_path, out / t.log_path.name)
            elif isinstance(t, Exchange):
                t.close()


def _until(cond: Callable[[], bool], limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _two_bots(tmp_path: Path, redis_server: RedisServer, started: list[object], *,
              max_position: str, interval_a: float, interval_b: float,
              ) -> tuple[Exchange, GuardedBot, int, GuardedBot]:
    """The exchange, then bot a active with an order at the exchange, then bot b (the
    same script, told nothing) on standby: (exchange, a, a's token, b)."""
    cfg = write_config(tmp_path / "bot.toml", redis_server.url, max_position=max_position)
    exchange = Exchange(tmp_path, cfg, redis_server.url)
    started.append(exchange)
    a = GuardedBot("a", cfg, tmp_path, exchange, interval=interval_a)
    started.append(a.start())
    token_a = a.wait_for("ccxt.active", timeout=60).int("token")
    _until(lambda: len(exchange.accepted()) >= 1, 30, "a's first order at the exchange")
    b = GuardedBot("b", cfg, tmp_path, exchange, interval=interval_b)
    started.append(b.start())
    b.wait_for("lease.standby", timeout=60)
    return exchange, a, token_a, b


def test_guarded_example_twice_then_one_writer_and_after_sigkill_the_other_trades_within_the_budget_left(
    redis_server: RedisServer, tmp_path: Path, started: list[object]
) -> None:
    # Arrange: room for exactly 30 resting bids of 0.0001 on the account.
    exchange, a, token_a, b = _two_bots(tmp_path, redis_server, started, max_position="0.003",
                                        interval_a=0.4, interval_b=0.1)
    _until(lambda: b.said("waiting: guardrails") >= 3, 30, "b's refused create_order calls")

    # Assert: one writer — b's create_order raised NotActive, every order is a's.
    assert b.events("ccxt.active") == [] and b.said(" placed ") == 0
    assert exchange.tokens() == {token_a}

    # Act: SIGKILL a while it still has budget left.
    _until(lambda: len(exchange.accepted()) >= 2, 30, "a's second order")
    killed_at = time.time()
    a.send(signal.SIGKILL)
    a.wait_exit()
    assert len(exchange.accepted()) < 30, "a used the whole budget before the kill"
    active_b = b.wait_for("ccxt.active", timeout=30)

    # Assert: b took over with a larger token, after its reconciliation, and trades — only
    # as much as the budget a left: a's and b's orders together fill it exactly, then b's
    # orders are refused (position_limit).
    token_b = active_b.int("token")
    assert token_b > token_a
    reconciled = b.wait_for("reconcile.done", where=lambda e: e.int("token") == token_b)
    assert reconciled.ts <= active_b.ts
    assert active_b.ts - killed_at < TTL_S + 5.0
    _until(lambda: b.said("position_limit") >= 1 and len(exchange.accepted()) >= 30, 60,
           "b to fill the budget a left and be refused")
    time.sleep(1.0)
    rows = exchange.accepted()
    n_a = sum(t == token_a for t, _, _ in rows)
    n_b = sum(t == token_b for t, _, _ in rows)
    assert n_a >= 2 and n_b >= 1 and n_a + n_b == len(rows) == 30, rows
    assert sum(q for _, _, q in rows) == Decimal("0.003")
    first_b = min(ms for t, ms, _ in rows if t == token_b)
    assert all(ms < first_b for t, ms, _ in rows if t == token_a)


def test_guarded_example_paused_past_ttl_then_pending_create_order_raises_and_nothing_is_admitted(
    redis_server: RedisServer, tmp_path: Path, started: list[object]
) -> None:
    # Arrange: a places an order every 20 ms (so a create_order is usually pending when it
    # is frozen); b stands by.
    exchange, a, token_a, b = _two_bots(tmp_path, redis_server, started, max_position="1",
                                        interval_a=0.02, interval_b=0.3)

    # Act: freeze a past the TTL; b takes over and trades; wake a up.
    a.send(signal.SIGSTOP)
    stopped_at = time.time()
    active_b = b.wait_for("ccxt.active", timeout=30)
    token_b = active_b.int("token")
    _until(lambda: token_b in exchange.tokens(), 30, "b's first order at the exchange")
    refused_before = a.said("waiting: guardrails")
    continued_at = time.time()
    a.send(signal.SIGCONT)
    ended = a.wait_for("ccxt.term_ended", timeout=30, after=continued_at - 0.5)
    a.wait_for("lease.standby", timeout=30, after=continued_at - 0.5,
               where=lambda e: e.int("token") == token_b)
    _until(lambda: a.said("waiting: guardrails") > refused_before + 2, 30,
           "a's create_order calls refused after waking")
    time.sleep(1.0)

    # Assert: a's term was ended (its own token), its create_order calls since waking
    # raised NotActive, it is alive and standby; nothing it sent was admitted once its
    # lease had expired, and the exchange got nothing under a's token after b's term began.
    assert token_b > token_a
    assert ended.int("token") == token_a
    assert a.running(), a.text()[-3000:]
    woke = continued_at - 0.5
    assert [e for e in a.events("ccxt.active") if e.ts >= woke] == []
    assert [e for e in a.events("order.submitted") if e.ts >= woke] == []
    last_a = max(ms for ms, tok in exchange.admits() if tok == token_a)
    assert last_a <= (stopped_at + TTL_S) * 1000
    late = [row for row in exchange.accepted()
            if row[0] == token_a and row[1] >= active_b.ts * 1000]
    assert late == []


def test_guarded_example_sigterm_then_exits_cleanly_and_releases_the_lease(
    redis_server: RedisServer, tmp_path: Path, started: list[object]
) -> None:
    """SIGTERM ends a guarded bot as it ends a plain one — its loop (which retries
    ccxt.NetworkError) does not spin on NotActive — after releasing the lease."""
    cfg = write_config(tmp_path / "bot.toml", redis_server.url)
    exchange = Exchange(tmp_path, cfg, redis_server.url)
    started.append(exchange)
    a = GuardedBot("a", cfg, tmp_path, exchange, interval=0.1)
    started.append(a.start())
    a.wait_for("ccxt.active", timeout=60)
    _until(lambda: len(exchange.accepted()) >= 1, 30, "a's first order")
    a.send(signal.SIGTERM)
    assert a.wait_exit(timeout=30) == 0, a.text()[-3000:]
    assert exchange.redis.get(KEYS.lease) is None
    assert a.said("waiting: guardrails") <= 2
