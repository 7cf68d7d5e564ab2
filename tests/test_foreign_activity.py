"""Across hosts the venue is the only shared truth: a fill on the account of an order the
ledger never admitted (a second writer) halts the account with reason foreign_activity.
A real `guardrails run` on the paper venue; the foreign order is placed at the venue directly."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails.config import load_config
from guardrails.model import Order, Side
from guardrails.venues.base import Accepted
from guardrails.venues.paper import PaperVenue
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow


async def _foreign_order(url: str, cfg_path: Path) -> None:
    """What a second copy of the bot on another host (another lease domain) would do."""
    cfg = load_config(cfg_path)
    client = aioredis.Redis.from_url(url)
    try:
        venue = PaperVenue(client, cfg.venue, cfg.account_id, risk=cfg.risk)  # type: ignore[arg-type]
        result = await venue.submit(Order("foreign-1", "BTC-USD", Side.BUY, Decimal("0.001"),
                                          Decimal("66000.00"), 1, int(time.time() * 1000) + 60_000))
        assert isinstance(result, Accepted), result
    finally:
        await client.aclose()


def test_run_when_the_venue_shows_a_fill_it_never_admitted_then_account_halted_foreign_activity(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"offset": "-0.05", "interval": "500ms", "count": 2})
    bot = RunProc("bot", cfg, tmp_path).start()
    try:
        bot.wait_for("strategy.finished", timeout=60)
        asyncio.run(_foreign_order(redis_server.url, cfg))
        seen = bot.wait_for("foreign_activity", timeout=30)
        bot.wait_for("kill.halted", timeout=30)
        status = run_cli("status", "--config", str(cfg), "--json")
    finally:
        bot.send(signal.SIGTERM)
        bot.wait_exit()
        bot.cleanup()
    assert seen["client_order_id"] == "foreign-1"
    trading = json.loads(status.stdout)["accounts"][0]["trading"]
    assert trading["state"] == "HALTED"
    assert trading["reason"].startswith("foreign_activity") and "foreign-1" in trading["reason"]
    assert "foreign activity" in trading["by"]


def test_run_when_foreign_threshold_is_0_then_logged_not_halted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url,
                       looper={"offset": "-0.05", "interval": "500ms", "count": 1})
    text = cfg.read_text().replace("[runtime]\n", "[runtime]\nforeign_activity_threshold = 0\n")
    cfg.write_text(text)
    bot = RunProc("bot", cfg, tmp_path).start()
    try:
        bot.wait_for("strategy.finished", timeout=60)
        asyncio.run(_foreign_order(redis_server.url, cfg))
        bot.wait_for("foreign_activity", timeout=30)
        time.sleep(1.0)
        state = redis_server.client().hget("gr:{paper:t1}:state", "state")
    finally:
        bot.send(signal.SIGTERM)
        bot.wait_exit()
        bot.cleanup()
    assert state in (None, b"ACTIVE", "ACTIVE")
