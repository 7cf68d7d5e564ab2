"""A fill applied without its fee (``Fill.fees_uncounted``: ccxt with BNB fee payment)
is counted once in its trading day's ``fees_uncounted`` and shown where operators look:
``guardrails status`` (table and ``--json``), ``guardrails doctor`` (a warning, exit 1) and
its ``--notify`` alert. Real redis-server, the real CLI processes; the ccxt path itself is
in tests/test_venue_ccxt_fees.py."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis

from guardrails.ledger import FillOutcome, Ledger
from guardrails.model import Admitted, Fill, Intent, Side
from tests import opskit
from tests.conftest import ROOT, subprocess_env
from tests.redis_harness import RedisServer
from tests.run_harness import run_cli, write_config
from tests.test_notify_run import Receiver, receiver  # noqa: F401  (the fixture)

STATUS_SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
DOCTOR_SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())
BNB = (("BNB", "0.00027808"),)


async def fill_once(r: aioredis.Redis, tag: str, *, uncounted: tuple[tuple[str, str], ...] = BNB,
                    qty: str = "0.01", times: int = 1) -> list[FillOutcome]:
    """Admit and submit one buy, then apply its one fill ``times`` times (same fill id)."""
    decision = await opskit.admit(r, Intent(opskit.BTC, Side.BUY, Decimal(qty),
                                            Decimal("60000"), intent_id=f"fee-{tag}"))
    assert isinstance(decision, Admitted), decision
    ledger = Ledger(r, opskit.KEYS, opskit.RISK)
    await ledger.mark_submitted(decision.client_order_id, f"v-{tag}")
    fill = Fill(f"f-{tag}", decision.client_order_id, opskit.BTC, Side.BUY, Decimal(qty),
                Decimal("60000"), int(time.time() * 1000), fees_uncounted=uncounted)
    return [await ledger.apply_fill(fill) for _ in range(times)]


async def today(r: aioredis.Redis) -> dict[str, str]:
    day = (await Ledger(r, opskit.KEYS, opskit.RISK).budget()).trading_day
    return dict(await r.hgetall(opskit.KEYS.day(day)))


def cli(url: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardrails", *argv, "--redis-url", url],
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)


async def test_apply_fill_when_fee_uncounted_then_day_counts_each_fill_once(
    redis_client: aioredis.Redis,
) -> None:
    await opskit.seed(redis_client)

    first = await fill_once(redis_client, "a", times=3)
    second = await fill_once(redis_client, "b", uncounted=(("BNB", "0.1"), ("XYZ", "2")))
    counted = await fill_once(redis_client, "c", uncounted=())

    assert first == [FillOutcome.APPLIED, FillOutcome.DUPLICATE, FillOutcome.DUPLICATE]
    assert second == counted == [FillOutcome.APPLIED]
    day = await today(redis_client)
    assert day["fees_uncounted"] == "2" and day["fills"] == "3"
    fills = {f["fill_id"]: f["fees_uncounted"] for _, f in
             await redis_client.xrange(opskit.KEYS.journal) if f.get("ev") == "fill"}
    assert fills == {"f-a": "BNB:0.00027808", "f-b": "BNB:0.1,XYZ:2", "f-c": ""}


async def test_apply_fill_when_refused_then_its_uncounted_fee_is_not_counted(
    redis_client: aioredis.Redis,
) -> None:
    # An over-fill is refused: nothing written, the uncounted fee not counted either.
    await opskit.seed(redis_client)
    decision = await opskit.admit(redis_client, Intent(opskit.BTC, Side.BUY, Decimal("0.01"),
                                                       Decimal("60000"), intent_id="fee-over"))
    assert isinstance(decision, Admitted)
    ledger = Ledger(redis_client, opskit.KEYS, opskit.RISK)
    over = Fill("f-over", decision.client_order_id, opskit.BTC, Side.BUY, Decimal("0.02"),
                Decimal("60000"), int(time.time() * 1000), fees_uncounted=BNB)

    assert await ledger.apply_fill(over) is FillOutcome.REFUSED
    assert "fees_uncounted" not in await today(redis_client)


async def test_apply_fill_when_uncounted_text_malformed_then_script_refuses_before_any_write(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The script's own check (the Python side never sends such a text): refused, nothing
    # written — not a fill applied with half its record.
    await opskit.seed(redis_client)
    monkeypatch.setattr(Ledger, "fees_uncounted_text", staticmethod(lambda fill: "BNB 1\n"))

    assert await fill_once(redis_client, "bad") == [FillOutcome.REFUSED]
    assert await today(redis_client) == {}
    refused = [f for _, f in await redis_client.xrange(opskit.KEYS.journal)
               if f.get("ev") == "fill_refused"]
    assert refused and refused[-1]["detail"] == "malformed uncounted fees"


def test_fees_uncounted_text_when_venue_text_is_odd_then_safe_and_bounded() -> None:
    def text(*fees: tuple[str, str]) -> str:
        return Ledger.fees_uncounted_text(Fill("f", "c", "S", Side.BUY, Decimal(1), Decimal(1),
                                               1, fees_uncounted=fees))

    assert text() == ""
    assert text(("BNB", "0.00027808"), ("unknown", "n/a")) == "BNB:0.00027808,unknown:n?a"
    assert text(("", "1e-9 ; x")) == "?:1e-9???x"
    assert text(("A" * 50, "1")) == "A" * 40 + ":1"
    assert text(*[("BNB", "1")] * 20).count("BNB") == 16


async def test_status_and_doctor_when_fills_today_lacked_their_fee_then_both_show_the_count(
    redis_server: RedisServer, redis_client: aioredis.Redis,
) -> None:
    # Arrange: two fills applied without their fee, the lease released (no other finding)
    await opskit.seed(redis_client)
    await fill_once(redis_client, "a", times=2)
    await fill_once(redis_client, "b")
    await redis_client.delete(opskit.KEYS.lease)
    account = str(opskit.ACCOUNT)

    # Act
    table = cli(redis_server.url, "status", "--account", account)
    as_json = cli(redis_server.url, "status", "--account", account, "--json")
    doctor = cli(redis_server.url, "doctor", "--json", "--manifest", "")
    doctor_text = cli(redis_server.url, "doctor", "--manifest", "")

    # Assert
    assert table.returncode == 0, table.stderr
    assert "FEES      2 fill(s) on " in table.stdout
    assert "account for these fees by hand" in table.stdout
    doc: dict[str, Any] = json.loads(as_json.stdout)
    jsonschema.validate(doc, STATUS_SCHEMA)
    assert doc["accounts"][0]["budget"]["fees_uncounted"] == 2
    report = json.loads(doctor.stdout)
    jsonschema.validate(report, DOCTOR_SCHEMA)
    (finding,) = [f for f in report["findings"] if f["code"] == "fees_uncounted"]
    assert finding["severity"] == "warning" and finding["account"] == account
    assert "2 fill(s)" in finding["message"]
    assert finding["action"].startswith("turn BNB fee payment off, or account for these fees")
    assert doctor.returncode == 1
    assert f"WARNING [fees_uncounted] {account}: 2 fill(s)" in doctor_text.stdout


async def test_status_when_every_fee_counted_then_zero_and_no_fees_line(
    redis_server: RedisServer, redis_client: aioredis.Redis,
) -> None:
    await opskit.seed(redis_client)
    await fill_once(redis_client, "a", uncounted=())

    table = cli(redis_server.url, "status", "--account", str(opskit.ACCOUNT))
    as_json = json.loads(cli(redis_server.url, "status", "--account", str(opskit.ACCOUNT),
                             "--json").stdout)
    doctor = json.loads(cli(redis_server.url, "doctor", "--json", "--manifest", "").stdout)

    assert "FEES " not in table.stdout
    assert as_json["accounts"][0]["budget"]["fees_uncounted"] == 0
    assert "fees_uncounted" not in {f["code"] for f in doctor["findings"]}


async def test_doctor_notify_when_fills_today_lacked_their_fee_then_the_alert_names_it(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path,
    receiver: Receiver,  # noqa: F811
) -> None:
    # Doctor's problems reach the [[notify]] channels that take "doctor": the existing path.
    await opskit.seed(redis_client)
    await fill_once(redis_client, "a")
    await redis_client.delete(opskit.KEYS.lease)
    cfg = write_config(tmp_path / "c.toml", redis_url=redis_server.url)
    with cfg.open("a") as f:
        f.write(f'\n[[notify]]\nkind = "webhook"\nurl = "{receiver.url}/hook"\n'
                'events = ["doctor"]\n')

    r = run_cli("doctor", "--config", str(cfg), "--manifest", "", "--notify")

    assert r.returncode == 1, r.stdout + r.stderr
    alert = receiver.wait("doctor", timeout=20)
    assert f"[fees_uncounted] {opskit.ACCOUNT} 1 fill(s)" in alert["text"]
