"""``Guard`` in a bot of one's own, with real processes and a real Redis (issue 12).

Two copies of the same bot script (``tests/guard_bot.py``) on one account, each with its
own host-lock directory — as two hosts would be, neither told about the other. Claims are
proven from what Redis recorded (the journal's ``admit`` entries, stamped by Redis, with
their tokens), from what the paper venue recorded (each order's token and arrival time),
and from the processes' own timestamped events — never from a process's opinion of itself.
Lease timings are short (ttl 1.5 s); margins are seconds, because this box is shared.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardrails.keys import AccountId, AccountKeys
from tests.redis_harness import RedisServer
from tests.run_harness import Event, RunProc, write_config
from tests.test_run_processes import _accepted_orders

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("paper", "t1"))
ROOT = Path(__file__).resolve().parent.parent


class BotProc(RunProc):
    """``python -m tests.guard_bot`` (instead of ``guardrails run``), its own lock dir."""

    def __init__(self, name: str, config: Path, log_dir: Path, *, workers: int = 1,
                 interval: float = 0.1) -> None:
        lock_dir = log_dir / f"locks-{name}"
        lock_dir.mkdir(mode=0o700)
        super().__init__(name, config, log_dir, env={"GUARDRAILS_LOCK_DIR": str(lock_dir)})
        self.bot_args = [str(config), name, "--workers", str(workers), "--interval", str(interval)]

    def start(self) -> BotProc:
        from tests.conftest import subprocess_env

        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.guard_bot", *self.bot_args], stdout=self._log,
            stderr=subprocess.STDOUT, env=subprocess_env(**self.env), cwd=ROOT,
        )
        return self


@pytest.fixture
def bots(artifacts_dir: Path, request: pytest.FixtureRequest) -> Iterator[list[BotProc]]:
    started: list[BotProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()
        out = artifacts_dir / "guard_processes" / request.node.name
        out.mkdir(parents=True, exist_ok=True)
        for p in started:
            if p.log_path.exists():
                shutil.copy(p.log_path, out / p.log_path.name)


def _spawn(bots: list[BotProc], name: str, cfg: Path, tmp_path: Path, **kw: float) -> BotProc:
    bot = BotProc(name, cfg, tmp_path, **kw)  # type: ignore[arg-type]
    bots.append(bot)
    return bot.start()


def _admits(redis_server: RedisServer) -> list[tuple[int, int]]:
    """(Redis ms, token) of every gate admission, in the journal's order."""
    client = redis_server.client()
    out = []
    for entry_id, fields in client.xrange(KEYS.journal):
        if fields.get("ev") == "admit":
            out.append((int(entry_id.split("-")[0]), int(fields["token"])))
    return out


def _after(events: list[Event], ts: float) -> list[Event]:
    return [e for e in events if e.ts >= ts]


def test_guard_when_two_bots_share_an_account_then_one_trades_and_after_sigkill_the_other_takes_over(
    redis_server: RedisServer, tmp_path: Path, bots: list[BotProc]
) -> None:
    # Arrange: the same bot twice on one account, a's guard.active() first.
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, extra_strategies="#")
    a = _spawn(bots, "a", cfg, tmp_path)
    token_a = a.wait_for("bot.active", timeout=60).int("token")
    a.wait_for("bot.decision", where=lambda e: e["outcome"] == "admitted")
    b = _spawn(bots, "b", cfg, tmp_path)
    b.wait_for("lease.standby", timeout=60)
    time.sleep(3.0)  # many renewals: b must stay outside guard.active() the whole time

    # Assert: exactly one writer — b never became active, every admission is a's.
    assert b.events("bot.active") == [] and b.events("order.admitted") == []
    assert {tok for _, tok in _admits(redis_server)} == {token_a}

    # Act: SIGKILL the active bot.
    killed_at = time.time()
    a.send(signal.SIGKILL)
    a.wait_exit()
    active_b = b.wait_for("bot.active", timeout=30)

    # Assert: b's guard.active() returned with a larger token, after its reconciliation,
    # and b trades; nothing under a's token was admitted after b's term began.
    token_b = active_b.int("token")
    assert token_b > token_a
    reconciled = b.wait_for("reconcile.done", where=lambda e: e.int("token") == token_b)
    assert reconciled.ts <= active_b.ts
    assert active_b.ts - killed_at < 1.5 + 0.25 + 5.0, "takeover within ttl (+ margin)"
    b.wait_for("bot.decision", after=active_b.ts, where=lambda e: e["outcome"] == "admitted")
    admits = _admits(redis_server)
    first_b = min(ms for ms, tok in admits if tok == token_b)
    assert all(ms <= first_b for ms, tok in admits if tok == token_a)
    assert {tok for _, tok in admits} == {token_a, token_b}


def test_guard_when_active_bot_paused_past_ttl_then_submits_refused_body_cancelled_nothing_admitted(
    redis_server: RedisServer, tmp_path: Path, bots: list[BotProc]
) -> None:
    # Arrange: a submits every 20 ms from two workers (so a submit is usually pending
    # when it is frozen); b stands by.
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url, extra_strategies="#")
    a = _spawn(bots, "a", cfg, tmp_path, workers=2, interval=0.02)
    token_a = a.wait_for("bot.active", timeout=60).int("token")
    a.wait_for("bot.decision", where=lambda e: e["outcome"] == "admitted")
    b = _spawn(bots, "b", cfg, tmp_path)
    b.wait_for("lease.standby", timeout=60)

    # Act: freeze a past the TTL; b takes over and trades; wake a up.
    a.send(signal.SIGSTOP)
    stopped_at = time.time()
    active_b = b.wait_for("bot.active", timeout=30)
    b.wait_for("bot.decision", after=active_b.ts, where=lambda e: e["outcome"] == "admitted")
    continued_at = time.time()
    a.send(signal.SIGCONT)
    ended = a.wait_for("bot.term_ended", timeout=30, after=continued_at - 0.5)
    a.wait_for("lease.standby", timeout=30, after=continued_at - 0.5,
               where=lambda e: e["holder"] == "b")
    time.sleep(1.0)

    # Assert: a's body was cancelled, with TermEnded of its own term; every submit it
    # had pending or started after waking was refused or raised — none left the process
    # (no order.submitted); a is alive, standby, and outside guard.active().
    assert active_b.int("token") > token_a
    assert ended.int("token") == token_a and ended["reason"] == "lease lost"
    woke = continued_at - 0.5
    ends = _after(a.events("bot.worker_ended"), woke)
    assert len(ends) == 2 and {e["error"] for e in ends} == {"CancelledError"}
    assert {e["error"] for e in _after(a.events("bot.submit_raised"), woke)} <= {"CancelledError"}
    assert _after(a.events("order.submitted"), woke) == []
    assert a.running(), a.text()[-3000:]
    assert _after(a.events("bot.active"), woke) == []
    # ... and nothing a sent was admitted once its lease had expired: Redis stamped every
    # admission under a's token before a was even stopped + ttl, and the venue accepted
    # nothing under a's token after b's term began.
    admits = _admits(redis_server)
    last_a = max(ms for ms, tok in admits if tok == token_a)
    assert last_a <= (stopped_at + 1.5) * 1000
    late = [r for r in _accepted_orders(redis_server.url, "paper-t1", token_a)
            if int(r["arrival_ms"]) >= active_b.ts * 1000]
    assert late == []
