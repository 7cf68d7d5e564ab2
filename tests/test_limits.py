"""One set of limits per account: stored once, differences named, changed deliberately."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis.asyncio as aioredis

from guardrails import limits
from guardrails.keys import SCHEMA_VERSION
from tests.conftest import ROOT, subprocess_env
from tests.gatekit import account_keys, risk
from tests.redis_harness import RedisServer


async def test_check_or_init_when_none_stored_then_stores_with_who_and_schema(
    redis_client: aioredis.Redis,
) -> None:
    keys = account_keys()
    assert await limits.check_or_init(redis_client, keys, risk(), "alice@host") is None
    stored = await redis_client.hgetall(keys.limits)
    assert stored["set_by"] == "alice@host" and int(stored["set_at_ms"]) > 0
    assert stored["daily_loss_limit"] == "250000000"
    assert stored["i:BTC-USD"] == "1 2 1 4 1 1000"  # tick 0.01, lot 0.0001, k=1, 0.1 BTC
    assert await redis_client.get(keys.schema) == str(SCHEMA_VERSION)
    assert await limits.check_or_init(redis_client, keys, risk(), "bob@host") is None
    assert (await redis_client.hgetall(keys.limits))["set_by"] == "alice@host"


async def test_check_or_init_when_config_differs_then_mismatch_names_each_difference(
    redis_client: aioredis.Redis,
) -> None:
    keys = account_keys()
    await limits.check_or_init(redis_client, keys, risk(), "alice")
    before = await redis_client.hgetall(keys.limits)
    other = risk(daily_loss_limit="500", max_order_notional="2500.00",
                 instruments={"BTC-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "1"}})
    mismatch = await limits.check_or_init(redis_client, keys, other, "bob")
    assert mismatch is not None
    text = str(mismatch)
    assert "daily_loss_limit: stored 250, configured 500" in text
    assert "instruments.BTC-USD.max_position: stored 0.1, configured 1" in text
    assert "instruments.ETH-USD.tick: stored 0.01, not configured" in text
    assert "max_order_notional" not in text  # 2500.00 == 2500
    assert "alice" in text
    assert await redis_client.hgetall(keys.limits) == before


async def test_check_or_init_when_only_schema_differs_then_mismatch_says_migrate_not_apply(
    redis_client: aioredis.Redis,
) -> None:
    """An account left at an older key schema (an embedded Redis kept from an earlier
    version, say) is refused as a mismatch whose text and action name the migration:
    `limits apply` would change nothing about it."""
    keys = account_keys()
    await limits.check_or_init(redis_client, keys, risk(), "alice")
    await redis_client.set(keys.schema, "1")
    mismatch = await limits.check_or_init(redis_client, keys, risk(), "bob")
    assert mismatch is not None and mismatch.schema_only
    assert str(mismatch) == (f"key schema: stored 1, this version speaks {SCHEMA_VERSION} "
                             "(stop every instance, then `guardrails migrate --apply`)")
    assert "guardrails migrate --apply" in mismatch.action and "limits apply" not in mismatch.action
    # with the limits differing too, both are said and `limits apply` is named
    both = await limits.check_or_init(redis_client, keys, risk(daily_loss_limit="500"), "bob")
    assert both is not None and not both.schema_only
    assert "key schema: stored 1" in str(both) and "daily_loss_limit" in str(both)
    assert "limits apply" in both.action


async def test_apply_when_deliberate_then_replaced_and_stale_instruments_removed(
    redis_client: aioredis.Redis,
) -> None:
    keys = account_keys()
    await limits.check_or_init(redis_client, keys, risk(), "alice")
    only_btc = risk(instruments={"BTC-USD": {"tick": "0.01", "lot": "0.0001",
                                             "max_position": "0.2"}})
    await limits.apply(redis_client, keys, only_btc, "bob")
    stored = await redis_client.hgetall(keys.limits)
    assert "i:ETH-USD" not in stored and stored["i:BTC-USD"].endswith(" 2000")
    assert stored["set_by"] == "bob"
    assert await limits.check_or_init(redis_client, keys, only_btc, "carol") is None


def _config(tmp: Path, loss: str) -> Path:
    p = tmp / "c.toml"
    p.write_text(f"""
[account]
venue = "paper"
id = "limitcli"
[risk]
max_order_notional = "2500"
max_gross_exposure = "10000"
daily_loss_limit = "{loss}"
[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "0.1"
[venue]
kind = "paper"
start_prices = {{ BTC-USD = "60000.00" }}
""")
    return p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guardrails", *args], cwd=ROOT, env=subprocess_env(),
        capture_output=True, text=True, timeout=60,
    )


def test_limits_cli_when_show_then_apply_then_stored_changes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    def limits_cli(cfg: Path, *action: str) -> subprocess.CompletedProcess[str]:
        return _cli("limits", "--config", str(cfg), "--redis-url", redis_server.url, *action)

    first = _config(tmp_path, "250")
    assert limits_cli(first, "show").returncode == 1  # nothing stored yet
    out = limits_cli(first, "apply", "--yes")
    assert out.returncode == 0, out.stderr
    second = _config(tmp_path, "300")
    shown = limits_cli(second, "show")
    assert shown.returncode == 0 and "daily_loss_limit: stored 250, configured 300" in shown.stdout
    assert limits_cli(second, "apply").returncode == 2  # no --yes and no terminal
    assert limits_cli(second, "apply", "--yes").returncode == 0
    client = redis_server.client()
    try:
        assert client.hget("gr:{paper:limitcli}:limits", "daily_loss_limit") == "300000000"
    finally:
        client.close()


def test_reconcile_cli_when_account_clean_then_exit_zero(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = _config(tmp_path, "250")
    out = _cli("reconcile", "--config", str(cfg), "--redis-url", redis_server.url)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reconcile ok" in out.stdout and "sweep clean" in out.stdout
