"""Alerts: delivered to a real local HTTP server as webhook JSON and as Telegram sendMessage,
retried with backoff, never raised, never blocking the caller; the router turns log events
into alerts once per change."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from guardrails import logs
from guardrails.config import ConfigError, parse_config
from guardrails.ops.notify import (
    Alert,
    AlertRouter,
    Notifier,
    TelegramChannel,
    WebhookChannel,
    channels_from_config,
)

ALL = frozenset({"kill", "resume", "takeover", "budget_80", "budget_100", "lease_lost", "self_fence",
                 "strategy_crashed", "redis_unreachable", "foreign_activity", "latch_lost"})


class Receiver:
    """A real aiohttp server on a free loopback port recording what it was sent."""

    def __init__(self, fail_first: int = 0, status: int = 200) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.fail_first = fail_first
        self.status = status
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.posts.append((request.path, await request.json()))
        return web.json_response({"ok": True}, status=self.status)

    async def __aenter__(self) -> Receiver:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def _until(pred: Any, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_webhook_and_telegram_when_alert_published_then_both_receive_it() -> None:
    async with Receiver() as rx:
        n = Notifier([WebhookChannel(url=rx.url + "/hook", events=ALL),
                      TelegramChannel(token="123:SECRET", chat_id="42", events=ALL, api_url=rx.url)])
        task = asyncio.create_task(n.run())
        try:
            n.publish(Alert("kill", "paper:demo", "HALTED — drill", {"reason": "drill"}))
            await _until(lambda: len(rx.posts) == 2)
        finally:
            task.cancel()
    by_path = dict(rx.posts)
    assert by_path["/hook"]["event"] == "kill"
    assert by_path["/hook"]["account"] == "paper:demo"
    assert by_path["/hook"]["fields"] == {"reason": "drill"}
    assert by_path["/bot123:SECRET/sendMessage"]["chat_id"] == "42"
    assert "HALTED" in by_path["/bot123:SECRET/sendMessage"]["text"]


async def test_channel_when_event_not_subscribed_then_not_sent() -> None:
    async with Receiver() as rx:
        n = Notifier([WebhookChannel(url=rx.url, events=frozenset({"kill"}))])
        task = asyncio.create_task(n.run())
        try:
            n.publish(Alert("budget_80", "a:b", "x"))
            n.publish(Alert("kill", "a:b", "y"))
            await _until(lambda: len(rx.posts) == 1)
            await asyncio.sleep(0.2)
        finally:
            task.cancel()
    assert [p[1]["event"] for p in rx.posts] == ["kill"]


async def test_delivery_when_endpoint_fails_then_retried_with_backoff() -> None:
    async with Receiver(fail_first=2) as rx:
        n = Notifier([WebhookChannel(url=rx.url, events=ALL)], backoff_s=0.05)
        task = asyncio.create_task(n.run())
        try:
            n.publish(Alert("kill", "a:b", "x"))
            await _until(lambda: len(rx.posts) == 1)
        finally:
            task.cancel()
    assert n.sent == 1 and n.failed == 0


async def test_delivery_when_endpoint_dead_then_logged_never_raised_and_token_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="guardrails.notify")
    # A port nothing listens on: take one and close it.
    async with Receiver() as rx:
        dead = rx.url
    n = Notifier([TelegramChannel(token="999:TOPSECRET", chat_id="1", events=ALL, api_url=dead,
                                  timeout_s=0.5)], backoff_s=0.01, max_attempts=3)
    task = asyncio.create_task(n.run())
    started = time.monotonic()
    for _ in range(500):  # publish is O(1): a dead endpoint never slows the caller
        n.publish(Alert("kill", "a:b", "x"))
    assert time.monotonic() - started < 0.5
    await _until(lambda: n.failed >= 1)
    task.cancel()
    assert n.dropped > 0  # the bounded queue shed the oldest, counted
    text = caplog.text
    assert "notify.failed" in text and "TOPSECRET" not in text


async def test_router_when_events_logged_then_alerts_once_per_change() -> None:
    got: list[Alert] = []
    clock = [0.0]
    r = AlertRouter("paper:demo", got.append, redis_threshold_s=5, clock=lambda: clock[0])
    remove = logs.add_listener(r.on_event)
    lg = logging.getLogger("test.notify")
    try:
        logs.event(lg, "kill.state", state="ACTIVE")
        logs.event(lg, "kill.state", state="HALTED", reason="drill", by="ops@host")
        logs.event(lg, "kill.state", state="HALTED", reason="drill", by="ops@host")
        logs.event(lg, "kill.state", state="ACTIVE", by="ops@host")
        logs.event(lg, "lease.standby", holder="h-old", token=7, ttl_ms=900)
        logs.event(lg, "lease.acquired", token=8, ttl_ms=3000, holder="h-new")
        logs.event(lg, "lease.lost", token=8, reason="renew_deadline", failed_renews=2)
        logs.event(lg, "positions", token=8, positions="flat", budget_used=Decimal("10"),
                   budget_limit=Decimal("250"))
        logs.event(lg, "positions", token=8, positions="flat", budget_used=Decimal("201"),
                   budget_limit=Decimal("250"))
        logs.event(lg, "positions", token=8, positions="flat", budget_used=Decimal("210"),
                   budget_limit=Decimal("250"))
        logs.event(lg, "positions", token=8, positions="flat", budget_used=Decimal("250"),
                   budget_limit=Decimal("250"))
        logs.event(lg, "runtime.redis_unavailable", during="heartbeat", error="ConnectionError")
        clock[0] = 4.0
        r.tick()
        clock[0] = 6.0
        r.tick()
        r.tick()
        logs.event(lg, "redis.recovered", during="heartbeat")
        logs.event(lg, "kill.latch_lost", logging.ERROR, lost=5, remembered_state="HALTED",
                   seen_state="ACTIVE", seen_version=0,
                   action="run `guardrails kill --account paper:demo --reason '...'`")
    finally:
        remove()
    events = [a.event for a in got]
    assert events == ["kill", "resume", "takeover", "self_fence", "budget_80", "budget_100",
                      "redis_unreachable", "redis_unreachable", "latch_lost"]
    assert "guardrails kill --account paper:demo" in got[-1].text
    assert got[-1].fields["remembered_state"] == "HALTED"
    takeover = got[2]
    assert takeover.fields["old_token"] == "7" and takeover.fields["old_holder"] == "h-old"
    assert takeover.fields["token"] == "8" and takeover.fields["holder"] == "h-new"
    assert got[4].fields["percent"] == "80"


def _cfg(notify: list[dict[str, Any]]) -> Any:
    return parse_config({
        "account": {"venue": "paper", "id": "demo"},
        "risk": {"quote_decimals": 2, "max_order_notional": "1", "max_gross_exposure": "1",
                 "daily_loss_limit": "1", "price_band": "0.1", "orders_per_second": "1", "burst": 1,
                 "instruments": {"X": {"tick": "0.01", "lot": "1", "max_position": "1"}}},
        "venue": {"kind": "paper", "start_prices": {"X": "1"}},
        "notify": notify,
    }, "t.toml")


def test_config_when_notify_entries_then_channels_built_token_from_env() -> None:
    cfg = _cfg([{"kind": "webhook", "url": "http://127.0.0.1:9/x", "events": ["kill"]},
                {"kind": "telegram", "chat_id": "5", "token_env": "TG_TOKEN_T"}])
    chans = channels_from_config(cfg.notify, {"TG_TOKEN_T": "1:abc"})
    assert [c.name for c in chans] == ["webhook", "telegram"]
    assert chans[0].events == frozenset({"kill"})
    assert "abc" not in repr(chans[1])
    with pytest.raises(ValueError, match=r"\$TG_TOKEN_T is not set"):
        channels_from_config(cfg.notify, {})


@pytest.mark.parametrize("entry, needle", [
    ({"kind": "webhook", "url": "ftp://x"}, "not an http(s) URL"),
    ({"kind": "webhook", "url": "http://x", "events": ["kil"]}, "notify"),
    ({"kind": "sms", "url": "http://x"}, "notify"),
    ({"kind": "telegram", "chat_id": "1", "token": "inline-secret"}, "token"),
])
def test_config_when_notify_entry_bad_then_refused_naming_field(entry: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        _cfg([entry])
    assert needle in str(e.value) and "t.toml" in str(e.value)
