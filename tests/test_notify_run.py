"""Alerts from real `guardrails run` processes reach a real local HTTP server, as webhook JSON
and as Telegram `sendMessage`: a kill, a takeover after SIGKILL (old and new token and
holder), the loss budget crossing 80 %; and a dead endpoint changes nothing about trading."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from guardrails.keys import AccountId, AccountKeys
from guardrails.tradingday import TradingDay
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow
KEYS = AccountKeys(AccountId("paper", "t1"))
TOKEN = "4242:TEST-BOT-TOKEN"


class Receiver:
    """A threaded HTTP server on a free loopback port that records every POST."""

    def __init__(self) -> None:
        posts: list[tuple[str, Any]] = []
        self.posts = posts

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                posts.append((self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def webhook(self, event: str) -> list[dict[str, Any]]:
        return [b for p, b in list(self.posts) if p == "/hook" and b["event"] == event]

    def telegram(self) -> list[dict[str, Any]]:
        return [b for p, b in list(self.posts) if p == f"/bot{TOKEN}/sendMessage"]

    def wait(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not self.webhook(event):
            assert time.monotonic() < deadline, f"no {event} alert; got {self.posts}"
            time.sleep(0.05)
        return self.webhook(event)[0]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _config(tmp_path: Path, url: str, notify_url: str) -> Path:
    cfg = write_config(tmp_path / "c.toml", redis_url=url, daily_loss_limit="100",
                       looper={"offset": "-0.02", "interval": "300ms"})
    with cfg.open("a") as f:
        f.write(f"""
[[notify]]
kind = "webhook"
url = "{notify_url}/hook"
timeout = "2s"

[[notify]]
kind = "telegram"
chat_id = "77"
token_env = "GR_TEST_TG_TOKEN"
api_url = "{notify_url}"
events = ["kill", "takeover", "budget_80"]
""")
    return cfg


def test_run_when_kill_takeover_and_budget_then_webhook_and_telegram_receive_each(
    redis_server: RedisServer, tmp_path: Path, receiver: Receiver
) -> None:
    cfg = _config(tmp_path, redis_server.url, receiver.url)
    env = {"GR_TEST_TG_TOKEN": TOKEN}
    a = RunProc("a", cfg, tmp_path, env=env).start()
    b = RunProc("b", cfg, tmp_path, standby=True, env=env)
    try:
        a_lead = a.wait_for("runtime.active")
        b.start().wait_for("lease.standby")

        # Kill: the active instance sees the latch and says so.
        r = run_cli("kill", "--config", str(cfg), "--account", "paper:t1", "--reason", "drill")
        assert r.returncode == 0, r.stderr
        kill = receiver.wait("kill")
        assert kill["account"] == "paper:t1" and kill["fields"]["reason"] == "drill"
        r = run_cli("resume", "--config", str(cfg), "--account", "paper:t1")
        assert r.returncode == 0, r.stderr
        receiver.wait("resume")

        # Budget: a realized loss of 85 of 100 booked today (the documented day key).
        day = TradingDay("UTC").today()
        redis_server.client().hset(KEYS.day(day), "realized_pnl", str(-85 * 10**6))
        budget = receiver.wait("budget_80")
        assert Decimal(budget["fields"]["used"]) >= 85

        # Takeover: SIGKILL the active; the standby's alert names both terms.
        a.send(signal.SIGKILL)
        b_lead = b.wait_for("runtime.active", timeout=30)
        takeover = receiver.wait("takeover")
        assert takeover["fields"]["old_token"] == a_lead["token"]
        assert takeover["fields"]["token"] == b_lead["token"]
        assert int(b_lead["token"]) > int(a_lead["token"])
        assert takeover["fields"]["old_holder"] and takeover["fields"]["holder"]
        assert takeover["fields"]["old_holder"] != takeover["fields"]["holder"]

        # Telegram got exactly the events it subscribed to, in its own format.
        deadline = time.monotonic() + 15
        while len(receiver.telegram()) < 3:
            assert time.monotonic() < deadline, receiver.telegram()
            time.sleep(0.05)
        texts = [m["text"] for m in receiver.telegram()]
        assert all(m["chat_id"] == "77" for m in receiver.telegram())
        assert any("HALTED" in t for t in texts) and any("took over" in t for t in texts)
        assert any("daily loss at" in t and "% of the limit" in t for t in texts), texts
        assert not any("resumed" in t for t in texts)  # not subscribed
        # The bot token never reaches a log line.
        assert TOKEN not in a.text() + b.text()
    finally:
        for p in (a, b):
            p.cleanup()


def test_run_when_notify_endpoint_dead_then_trading_unchanged(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    dead = Receiver()
    dead_url = dead.url
    dead.server.server_close()  # nothing listens there now
    cfg = _config(tmp_path, redis_server.url, dead_url)
    a = RunProc("a", cfg, tmp_path, env={"GR_TEST_TG_TOKEN": TOKEN}).start()
    try:
        a.wait_for("runtime.active")
        r = run_cli("kill", "--config", str(cfg), "--account", "paper:t1", "--reason", "drill")
        assert r.returncode == 0, r.stderr
        a.wait_for("kill.halted")
        run_cli("resume", "--config", str(cfg), "--account", "paper:t1")
        after = time.time()
        # Orders keep being admitted and sent after the alerts failed.
        a.wait_for("order.submitted", after=after + 1, timeout=30)
        a.wait_for("notify.retry", timeout=30)
        assert a.running()
    finally:
        a.send(signal.SIGTERM)
        assert a.wait_exit() == 0
        a.cleanup()


def test_run_when_telegram_token_variable_missing_then_refused_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, redis_server.url, "http://127.0.0.1:9")
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    assert "GR_TEST_TG_TOKEN" in r.stderr and "Traceback" not in r.stderr


def test_doctor_when_notify_and_a_problem_then_the_findings_reach_the_webhook(
    redis_server: RedisServer, tmp_path: Path, receiver: Receiver
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    with cfg.open("a") as f:
        f.write(f'\n[[notify]]\nkind = "webhook"\nurl = "{receiver.url}/hook"\nevents = ["doctor"]\n')
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[accounts]]\naccount = "paper:t1"\ninstances = 1\n')  # none runs
    r = run_cli("doctor", "--config", str(cfg), "--manifest", str(manifest), "--notify")
    assert r.returncode == 1, r.stdout + r.stderr
    alert = receiver.wait("doctor", timeout=20)
    assert "problem" in alert["text"] and "paper:t1" in alert["text"]


def test_doctor_when_notify_without_channels_then_cannot_check_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    r = run_cli("doctor", "--config", str(cfg), "--manifest", "", "--notify")
    assert r.returncode == 2 and "[[notify]]" in r.stdout + r.stderr
