"""status: the account's combined state, as JSON valid against docs/status.schema.json
and as a table; read-only (it works as a Redis ACL user without write permission)."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from guardrails.killswitch import KillSwitch
from guardrails.model import Denied, DenyReason, Intent, Side, TradingState
from tests import opskit
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer, free_port

SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())


def status(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrails", "status", "--redis-url", url, *extra],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )


def status_json(url: str) -> dict[str, Any]:
    done = status(url, "--account", str(opskit.ACCOUNT), "--json")
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc


async def test_status_when_position_filled_and_order_denied_then_json_shows_combined_state(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: one fill of 0.01 BTC at 59900 (mark 60000), then a kill and a denial
    await opskit.seed(redis_client)
    await opskit.buy_and_fill(redis_client, "0.01", "59900", "s1")
    await KillSwitch(redis_client, opskit.KEYS).set_state(
        TradingState.HALTED, reason="status test", by="t@h")
    denied = await opskit.admit(
        redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.001"), Decimal("60000"),
                             intent_id="ops-d"))
    assert isinstance(denied, Denied) and denied.reason is DenyReason.HALTED

    # Act
    doc = status_json(redis_server.url)

    # Assert
    (a,) = doc["accounts"]
    assert a["errors"] == []
    assert a["lease"] == {"holder": opskit.HOLDER, "token": opskit.TOKEN,
                          "ttl_ms": a["lease"]["ttl_ms"], "fence": opskit.TOKEN}
    assert a["lease"]["ttl_ms"] > 500_000
    assert a["trading"]["state"] == "HALTED" and a["trading"]["reason"] == "status test"
    (p,) = a["positions"]
    assert (p["symbol"], p["qty"], p["mark"]) == ("BTC-USD", "0.0100", "60000.00")
    assert p["avg_cost"].startswith("59900") and p["unrealized"] == "1.000000"
    assert a["budget"]["limit"] == "250.000000"
    assert a["counts"] == {"admitted": 1, "denied": {"halted": 1}}
    assert a["recent_denials"][0]["reason"] == "halted"
    assert a["open_orders"] == []
    assert a["limits"]["digest"] == opskit.RISK.digest()


async def test_status_when_read_only_acl_user_then_same_document_without_errors(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange
    await opskit.seed(redis_client)
    await opskit.buy_and_fill(redis_client, "0.02", "60000", "ro1")
    ro_url = await opskit.read_only_url(redis_client, redis_server.port)
    ro = aioredis.Redis.from_url(ro_url, decode_responses=True)
    with pytest.raises(NoPermissionError):
        await ro.set("probe", "1")  # the user really cannot write
    await ro.aclose()

    # Act
    full = status_json(redis_server.url)
    limited = status_json(ro_url)

    # Assert
    for doc in (full, limited):
        doc.pop("generated_at_ms")
        doc["accounts"][0]["lease"].pop("ttl_ms")
    assert limited["accounts"][0]["errors"] == []
    assert limited == full


async def test_status_table_when_account_has_position_then_lists_it(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange
    await opskit.seed(redis_client)
    await opskit.buy_and_fill(redis_client, "0.1", "3000", "t1", symbol=opskit.ETH)

    # Act
    done = status(redis_server.url, "--account", str(opskit.ACCOUNT))

    # Assert
    assert done.returncode == 0, done.stderr
    assert "== paper:ops ==" in done.stdout
    assert "ETH-USD" in done.stdout and "0.100" in done.stdout
    assert f"token={opskit.TOKEN}" in done.stdout


async def test_status_table_when_stored_text_carries_terminal_controls_then_shown_escaped(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: a kill reason that would redraw the HALTED line as ACTIVE (and forge one)
    from guardrails.killswitch import KillSwitch
    from guardrails.model import TradingState

    await opskit.seed(redis_client)
    forged = "oops\r\x1b[2Ktrading   ACTIVE  reason=resume\nfake line \u202e"
    await KillSwitch(redis_client, opskit.KEYS).set_state(
        TradingState.HALTED, reason=forged, by="test\x9b31m")
    # Act
    done = status(redis_server.url, "--account", str(opskit.ACCOUNT))
    # Assert: no control character reaches the terminal; they are shown as escapes
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("trading"))
    assert line.startswith("trading   HALTED"), line
    assert "\\x0d\\x1b[2K" in line and "\\x0afake line \\u202e" in line and "\\x9b" in line
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7f <= ord(c) <= 0x9f
                   for c in done.stdout.replace("\n", ""))


async def test_status_when_part_of_an_account_is_unreadable_then_exit_1_naming_it(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    await opskit.seed(redis_client)
    await redis_client.delete(opskit.KEYS.positions)
    await redis_client.set(opskit.KEYS.positions, "planted")  # a STRING where a HASH belongs
    done = status(redis_server.url, "--account", str(opskit.ACCOUNT))
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "error" in done.stdout and opskit.KEYS.positions in done.stdout


def test_status_when_redis_unreachable_then_exit_2() -> None:
    # Act
    done = status(f"redis://127.0.0.1:{free_port()}/0", "--account", "paper:x", "--json")

    # Assert
    assert done.returncode == 2
    assert "could not read Redis" in done.stderr
