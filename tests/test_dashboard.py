"""Dashboard: the JSON API equals `status --json`, /metrics is Prometheus text, the kill
button exists only with an operator token, every read runs as a read-only Redis ACL
user, and the page in a real headless Chromium shows the same figures and updates
live after a fill (screenshot kept in artifacts/)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from guardrails.keys import AccountId, AccountKeys
from guardrails.killswitch import read_latch
from guardrails.ledger import Ledger
from guardrails.model import Intent, Side, TradingState
from guardrails.ops.dashboard import (
    MIN_OPERATOR_TOKEN_LEN,
    DashboardError,
    FailureThrottle,
    create_app,
    serve,
)
from tests import opskit
from tests.browser import Browser
from tests.conftest import ROOT, subprocess_env
from tests.ha_harness import NodeServer, wait_replica_online
from tests.redis_harness import RedisServer, free_port

SCHEMA = json.loads((ROOT / "docs" / "status.schema.json").read_text())
OPERATOR_TOKEN = "op-secret-123-0a1b2c3d"  # >= MIN_OPERATOR_TOKEN_LEN


def status_json(url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "guardrails", "status", "--redis-url", url,
         "--account", str(opskit.ACCOUNT), "--json"],
        env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


@dataclass
class Served:
    url: str
    admin: aioredis.Redis
    redis_url: str


@pytest.fixture
async def served(
    redis_server: RedisServer, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    """The dashboard reading through a read-only ACL user, with a seeded account."""
    monkeypatch.delenv("GUARDRAILS_OPERATOR_TOKEN", raising=False)
    await opskit.seed(redis_client)
    await opskit.buy_and_fill(redis_client, "0.01", "59900", "d1")
    ro = aioredis.Redis.from_url(
        await opskit.read_only_url(redis_client, redis_server.port), decode_responses=True)
    app = create_app(ro, accounts=[opskit.ACCOUNT], interval_s=0.5)
    runner, url = await serve(app, "127.0.0.1", 0)
    try:
        yield Served(url, redis_client, redis_server.url)
    finally:
        await runner.cleanup()
        await ro.aclose()


async def test_api_status_when_read_only_user_then_equals_status_json(served: Served) -> None:
    # Act
    async with aiohttp.ClientSession() as s, s.get(served.url + "api/status") as resp:
        api = await resp.json()
    cli = status_json(served.redis_url)

    # Assert
    jsonschema.validate(api, SCHEMA)
    assert api["kill_enabled"] is False
    assert api["accounts"][0]["errors"] == []
    for doc in (api, cli):
        doc.pop("generated_at_ms")
        doc.pop("kill_enabled", None)
        doc.pop("dashboard", None)  # the page's extras (P&L history, fills) beside the document
        doc["accounts"][0]["lease"].pop("ttl_ms")
    assert api == cli


async def test_metrics_when_scraped_then_prometheus_text_with_positions_and_counters(
    served: Served,
) -> None:
    # Act
    async with aiohttp.ClientSession() as s, s.get(served.url + "metrics") as resp:
        text = await resp.text()
        ctype = resp.headers["Content-Type"]

    # Assert
    assert ctype.startswith("text/plain")
    lines = text.splitlines()
    assert "guardrails_up 1" in lines
    assert 'guardrails_position_qty{account="paper:ops",symbol="BTC-USD"} 0.0100' in lines
    assert 'guardrails_budget_limit{account="paper:ops"} 250.000000' in lines
    assert 'guardrails_fees_uncounted{account="paper:ops"} 0' in lines
    assert f'guardrails_lease_token{{account="paper:ops"}} {opskit.TOKEN}' in lines
    assert 'guardrails_trading_state{account="paper:ops",state="ACTIVE"} 1' in lines
    assert 'guardrails_admitted_total{account="paper:ops"} 1' in lines
    assert "# TYPE guardrails_denied_total counter" not in text  # nothing denied yet
    for line in lines:  # every sample is `name{labels} value` or a HELP/TYPE comment
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2


async def test_events_when_subscribed_then_status_events_stream(served: Served) -> None:
    # Act
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as s, s.get(served.url + "api/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        async with asyncio.timeout(30):
            async for raw in resp.content:
                line = raw.decode().strip()
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
                    if len(events) == 2:
                        break

    # Assert
    assert [e["accounts"][0]["account"] for e in events] == ["paper:ops", "paper:ops"]
    assert events[1]["generated_at_ms"] >= events[0]["generated_at_ms"]


async def test_page_when_fetched_then_index_and_every_file_it_links_are_served(
    served: Served,
) -> None:
    # Act: the page and each /static/ file it references (the package's ops/web/ files)
    async with aiohttp.ClientSession() as s:
        async with s.get(served.url) as resp:
            page, page_status = await resp.text(), resp.status
        linked = sorted(set(re.findall(r'(?:href|src)="/static/([^"]+)"', page)))
        bodies = {}
        for name in linked:
            async with s.get(served.url + "static/" + name) as resp:
                bodies[name] = (resp.status, await resp.text())

    # Assert
    assert page_status == 200 and "<html" in page.lower()
    assert linked == ["app.js", "style.css"]
    assert all(status == 200 and body.strip() for status, body in bodies.values())


async def test_kill_when_no_operator_token_then_404_and_latch_untouched(served: Served) -> None:
    # Act
    async with aiohttp.ClientSession() as s, s.post(
        served.url + "api/kill", json={"account": "paper:ops", "token": "x"}
    ) as resp:
        status = resp.status

    # Assert
    assert status == 404
    assert (await read_latch(served.admin, opskit.KEYS)).state is TradingState.ACTIVE


async def test_kill_when_operator_token_configured_then_bad_token_403_good_token_halts(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Arrange: reads through the read-only user, the kill through a writing client
    await opskit.seed(redis_client)
    ro = aioredis.Redis.from_url(
        await opskit.read_only_url(redis_client, redis_server.port), decode_responses=True)
    app = create_app(ro, accounts=[opskit.ACCOUNT], operator_token=OPERATOR_TOKEN,
                     kill_redis=redis_client, confirm_timeout_s=0.2)
    runner, url = await serve(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "api/status") as resp:
                assert (await resp.json())["kill_enabled"] is True
            # Act
            async with s.post(url + "api/kill", json={
                    "account": "paper:ops", "reason": "x", "token": "wrong"}) as resp:
                bad = resp.status
            async with s.post(url + "api/kill", json={
                    "account": "paper:ops", "reason": "from the page",
                    "token": OPERATOR_TOKEN}) as resp:
                good, good_status = await resp.json(), resp.status
    finally:
        await runner.cleanup()
        await ro.aclose()

    # Assert: written, but no bot runs here, so not confirmed (202, ok false, says so)
    assert bad == 403
    assert good_status == 202 and good["state"] == "HALTED"
    assert good["written"] is True and good["confirmed"] is False and good["ok"] is False
    assert "NOT CONFIRMED" in good["error"]
    latch = await read_latch(redis_client, opskit.KEYS)
    assert (latch.state, latch.reason) == (TradingState.HALTED, "from the page")
    assert "dashboard" in latch.by


async def test_page_when_opened_in_chromium_then_shows_status_figures_and_updates_after_fill(
    served: Served, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange
    before = status_json(served.redis_url)["accounts"][0]
    browser = await Browser(tmp_path / "profile").start()
    qty_js = ("document.querySelector('#acct-paper_ops tr[data-symbol=\"BTC-USD\"] "
              "td[data-field=\"qty\"]')?.textContent")
    def field_js(name: str) -> str:
        return f"document.querySelector('#acct-paper_ops [data-field=\"{name}\"]')?.textContent"

    used_js, limit_js, token_js = (field_js(n) for n in ("budget-used", "budget-limit",
                                                          "lease-token"))
    fees_js, fees_hidden_js = (field_js("budget-fees-uncounted"),
                               "document.querySelector('#acct-paper_ops .fees-uncounted').hidden")
    try:
        # Act 1: load the page
        await browser.navigate(served.url)
        await browser.wait_for("window.guardrailsDashboard?.updates > 0")

        # Assert 1: the same figures as status --json
        assert await browser.evaluate(qty_js) == before["positions"][0]["qty"] == "0.0100"
        assert await browser.evaluate(used_js) == before["budget"]["used"]
        assert await browser.evaluate(limit_js) == before["budget"]["limit"]
        assert await browser.evaluate(token_js) == str(opskit.TOKEN)
        assert await browser.evaluate("document.querySelector('.kill').hidden") is True
        assert await browser.evaluate(fees_hidden_js) is True  # every fee counted so far
        updates_before = await browser.evaluate("window.guardrailsDashboard.updates")

        # Act 2: a fill lands, no reload — its fee paid in BNB, which the ledger cannot count
        await opskit.buy_and_fill(served.admin, "0.02", "60100", "d2",
                                  fees_uncounted=(("BNB", "0.0015"),))
        after = status_json(served.redis_url)["accounts"][0]
        new_qty = after["positions"][0]["qty"]
        assert new_qty == "0.0300"

        # Assert 2: the open page shows the new figures (live, via server-sent events)
        await browser.wait_for(f"({qty_js}) === {json.dumps(new_qty)}")
        await browser.wait_for(f"({used_js}) === {json.dumps(after['budget']['used'])}")
        assert after["budget"]["used"] != before["budget"]["used"]
        # ... and says that today's figures leave a fee out
        assert after["budget"]["fees_uncounted"] == 1
        await browser.wait_for(f"({fees_js}) === '1'")
        assert await browser.evaluate(fees_hidden_js) is False
        assert await browser.evaluate("window.guardrailsDashboard.updates") > updates_before
        assert await browser.evaluate("location.href") == served.url  # never reloaded
        png = await browser.screenshot()
    finally:
        await browser.close()
    (artifacts_dir / "dashboard.png").write_bytes(png)
    assert png.startswith(b"\x89PNG")


async def test_kill_when_token_but_no_writing_client_then_button_hidden_and_404(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: e.g. `guardrails run --dashboard` with the token in its environment
    await opskit.seed(redis_client)
    app = create_app(redis_client, accounts=[opskit.ACCOUNT], operator_token=OPERATOR_TOKEN)
    runner, url = await serve(app, "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            # Act
            async with s.get(url + "api/status") as resp:
                enabled = (await resp.json())["kill_enabled"]
            async with s.post(url + "api/kill", json={
                    "account": "paper:ops", "token": OPERATOR_TOKEN}) as resp:
                status = resp.status
    finally:
        await runner.cleanup()

    # Assert
    assert enabled is False and status == 404
    assert (await read_latch(redis_client, opskit.KEYS)).state is TradingState.ACTIVE


def test_cli_dashboard_when_started_then_serves_known_accounts_and_stops_on_sigterm(
    redis_server: RedisServer,
) -> None:
    # Arrange
    # paper:cli ran once (its limits are stored); paper:ghost is only in the index, as a
    # kill typed for a typo'd id leaves it: a phantom, never shown (#14).
    c = redis_server.client()
    c.sadd("gr:accounts", "paper:cli", "paper:ghost")
    c.hset(AccountKeys(AccountId("paper", "cli")).limits, "digest", "x")
    c.close()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrails", "dashboard", "--redis-url", redis_server.url,
         "--port", str(port)],
        env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()

        # Act
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=30) as r:
            doc = json.loads(r.read())
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    # Assert
    assert banner.startswith(f"dashboard on http://127.0.0.1:{port}/")
    assert "paper:cli" in [a["account"] for a in doc["accounts"]]
    assert "paper:ghost" not in [a["account"] for a in doc["accounts"]]
    assert rc == 0


# -- the kill endpoint against a browser elsewhere (issue #9 item 5) --------------------


@dataclass
class KillServed:
    url: str
    port: int
    admin: aioredis.Redis


@pytest.fixture
def kill_throttle() -> FailureThrottle | None:
    """The dashboard's default throttle; a test parametrizes this name to inject one."""
    return None


@pytest.fixture
async def kill_served(
    redis_server: RedisServer, redis_client: aioredis.Redis,
    kill_throttle: FailureThrottle | None,
) -> AsyncIterator[KillServed]:
    """A dashboard with kill enabled: reads as the read-only user, kills on the admin client."""
    await opskit.seed(redis_client)
    ro = aioredis.Redis.from_url(
        await opskit.read_only_url(redis_client, redis_server.port), decode_responses=True)
    throttle = kill_throttle
    app = create_app(ro, accounts=[opskit.ACCOUNT], operator_token=OPERATOR_TOKEN,
                     kill_redis=redis_client, throttle=throttle, confirm_timeout_s=0.2)
    runner, url = await serve(app, "127.0.0.1", 0)
    try:
        yield KillServed(url, int(url.rsplit(":", 1)[1].strip("/")), redis_client)
    finally:
        await runner.cleanup()
        await ro.aclose()


KILL_BODY = json.dumps({"account": "paper:ops", "reason": "csrf", "token": OPERATOR_TOKEN})


async def test_kill_when_cross_site_text_plain_form_post_then_refused_and_latch_untouched(
    kill_served: KillServed,
) -> None:
    # Act: what a page on another site can send without a CORS preflight — a text/plain
    # form post carrying a JSON-looking body — with and without the browser's Origin
    results = []
    async with aiohttp.ClientSession() as s:
        for headers in ({"Content-Type": "text/plain", "Origin": "http://evil.example"},
                        {"Content-Type": "text/plain"},
                        {"Content-Type": "application/json", "Origin": "http://evil.example"},
                        {"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
                        {"Content-Type": "application/json", "Origin": "null"}):
            async with s.post(kill_served.url + "api/kill", data=KILL_BODY,
                              headers=headers) as resp:
                results.append(resp.status)

    # Assert
    assert results == [403, 415, 403, 403, 403]
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.ACTIVE


async def test_kill_when_same_origin_json_with_origin_header_then_halts(
    kill_served: KillServed,
) -> None:
    # Act: what the page itself sends (fetch from its own origin)
    async with aiohttp.ClientSession() as s, s.post(
        kill_served.url + "api/kill", data=KILL_BODY,
        headers={"Content-Type": "application/json",
                 "Origin": f"http://127.0.0.1:{kill_served.port}",
                 "Sec-Fetch-Site": "same-origin"},
    ) as resp:
        status = resp.status

    # Assert: written (202: no running instance confirmed it; none runs in this test)
    assert status == 202
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.HALTED


async def test_api_status_when_foreign_host_header_then_refused(kill_served: KillServed) -> None:
    # Act: a DNS-rebound page (evil.example -> 127.0.0.1) reads with its own Host
    statuses = {}
    async with aiohttp.ClientSession() as s:
        for host in (f"evil.example:{kill_served.port}", "evil.example",
                     f"127.0.0.1:{kill_served.port}", f"localhost:{kill_served.port}"):
            for path in ("api/status", "metrics", ""):
                async with s.get(kill_served.url + path, headers={"Host": host}) as resp:
                    body = await resp.text()
                    statuses[(host, path)] = resp.status
                    if host.startswith("evil"):
                        assert "paper:ops" not in body

    # Assert
    for (host, _path), status in statuses.items():
        assert status == (421 if host.startswith("evil") else 200), (host, status)


async def test_kill_when_token_brute_forced_then_failures_throttled_and_right_token_still_halts(
    kill_served: KillServed,
) -> None:
    # Act: 50 wrong guesses as fast as the client can send them, then the right token
    statuses = []
    async with aiohttp.ClientSession() as s:
        for i in range(50):
            async with s.post(kill_served.url + "api/kill", json={
                    "account": "paper:ops", "token": f"guess-{i:012d}"}) as resp:
                statuses.append(resp.status)
                retry_after = resp.headers.get("Retry-After")
        async with s.post(kill_served.url + "api/kill", json={
                "account": "paper:ops", "token": OPERATOR_TOKEN}) as resp:
            right = resp.status

    # Assert: after five failures the wrong ones get 429; the right token is never locked
    # out (every local user is this same loopback peer)
    assert statuses == [403] * 5 + [429] * 45
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    assert right == 202  # written; unconfirmed only because no bot runs here
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.HALTED


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


@pytest.mark.parametrize("kill_throttle", [
    FailureThrottle(per_peer=3, overall=10, window_s=30.0, clock=CLOCK)])
async def test_kill_when_throttle_window_passed_then_right_token_halts(
    kill_served: KillServed,
) -> None:
    # Arrange: three failures lock the peer out
    async with aiohttp.ClientSession() as s:
        for i in range(4):
            async with s.post(kill_served.url + "api/kill", json={
                    "account": "paper:ops", "token": f"wrong-token-{i:08d}"}) as resp:
                assert resp.status == (403 if i < 3 else 429)
        # Act
        CLOCK.now += 31
        async with s.post(kill_served.url + "api/kill", json={
                "account": "paper:ops", "reason": "after", "token": OPERATOR_TOKEN}) as resp:
            status = resp.status

    # Assert
    assert status == 202
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.HALTED


@pytest.mark.parametrize("paused", [False, True], ids=["replica_acks", "replica_paused"])
async def test_kill_when_replica_lags_then_202_not_replicated_and_ok_false(
    kill_served: KillServed, redis_server: RedisServer, paused: bool,
) -> None:
    # Arrange: one replica of the Redis the dashboard kills on; paused (SIGSTOP) it stays
    # connected and acknowledges nothing, as a lagging replica does
    replica = NodeServer(["--replicaof", "127.0.0.1", str(redis_server.port)], aof=False)
    replica.start()
    try:
        wait_replica_online(redis_server)
        # caught up and acknowledging (a replica just online may still be loading the
        # first sync: on a loaded machine its first ack can miss the kill's 500 ms WAIT)
        warm = redis_server.client()
        warm.set("warmup", "1")
        assert warm.execute_command("WAIT", 1, 10_000) == 1
        warm.close()
        if paused:
            replica.pause()
        # Act
        async with aiohttp.ClientSession() as s:
            async with s.post(kill_served.url + "api/kill", json={
                    "account": "paper:ops", "reason": "drill", "token": OPERATOR_TOKEN}) as resp:
                status, body = resp.status, await resp.json()
    finally:
        replica.resume()
        replica.stop()

    # Assert: written either way; never ok (no bot confirms here), and a lagging replica
    # is said, as `guardrails kill` says it with exit 3
    assert status == 202 and body["written"] is True and body["ok"] is False
    assert body["replicas"] == 1
    assert body["replicated"] is (not paused)
    assert body["replicas_acked"] == (0 if paused else 1)
    assert ("NOT REPLICATED" in body["error"]) is paused
    assert "NOT CONFIRMED" in body["error"]
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.HALTED


async def test_create_app_when_operator_token_short_then_refused(
    redis_client: aioredis.Redis,
) -> None:
    with pytest.raises(DashboardError, match=f"at least {MIN_OPERATOR_TOKEN_LEN}"):
        create_app(redis_client, operator_token="x" * (MIN_OPERATOR_TOKEN_LEN - 1),
                   kill_redis=redis_client)


def test_cli_dashboard_when_operator_token_short_then_exit_2_one_line(
    redis_server: RedisServer,
) -> None:
    # Act
    done = subprocess.run(
        [sys.executable, "-m", "guardrails", "dashboard", "--redis-url", redis_server.url,
         "--port", str(free_port())],
        env=subprocess_env(GUARDRAILS_OPERATOR_TOKEN="short-token"), capture_output=True,
        text=True, timeout=60,
    )

    # Assert
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "GUARDRAILS_OPERATOR_TOKEN" in lines[0]
    assert f"at least {MIN_OPERATOR_TOKEN_LEN}" in lines[0] and "short-token" not in lines[0]


def test_cli_dashboard_when_operator_url_set_then_kill_goes_through_operator_user(
    redis_server: RedisServer,
) -> None:
    # Arrange: reads as the read-only user; kills as a separate operator user whose
    # password comes from the environment
    admin = redis_server.client()
    admin.execute_command("ACL", "SETUSER", *opskit.READ_ONLY_ACL)
    admin.execute_command("ACL", "SETUSER", "op", "on", ">op-pass-0123", "~gr:*", "&gr:*",
                          "+@all")
    admin.sadd("gr:accounts", "paper:ops")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "guardrails", "dashboard", "--port", str(port)],
        env=subprocess_env(
            GUARDRAILS_REDIS_URL=f"redis://ro:ro-pass@127.0.0.1:{redis_server.port}/0",
            GUARDRAILS_OPERATOR_REDIS_URL=f"redis://op@127.0.0.1:{redis_server.port}/0",
            GUARDRAILS_OPERATOR_REDIS_PASSWORD="op-pass-0123",
            GUARDRAILS_OPERATOR_TOKEN=OPERATOR_TOKEN),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        # Act
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/kill", method="POST",
            data=json.dumps({"account": "paper:ops", "reason": "op",
                             "token": OPERATOR_TOKEN}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.loads(r.read())
        users = {line.split(" user=")[1].split(" ")[0]
                 for line in admin.execute_command("CLIENT", "LIST").splitlines()}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        state = admin.hget("gr:{paper:ops}:state", "state")
        admin.close()

    # Assert
    assert "kill button enabled" in banner, err
    assert answer["written"] is True and state == "HALTED"
    assert answer["confirmed"] is False  # no bot runs in this test
    assert {"ro", "op"} <= users
    assert "op-pass-0123" not in err and OPERATOR_TOKEN not in err


async def test_kill_when_real_browser_posts_cross_site_then_refused_and_same_origin_page_halts(
    kill_served: KillServed, tmp_path: Path,
) -> None:
    # Arrange: another site (another origin: another port) the operator's browser visits
    evil = web.Application()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html><body>hi</body></html>", content_type="text/html")

    evil.router.add_get("/", page)
    evil_runner = web.AppRunner(evil)
    await evil_runner.setup()
    evil_port = free_port()
    await web.TCPSite(evil_runner, "127.0.0.1", evil_port).start()
    browser = await Browser(tmp_path / "profile").start()
    send = ("window.res = null; fetch({url!r}, {{method: 'POST', mode: {mode!r}, "
            "headers: {{'Content-Type': {ctype!r}}}, body: {body!r}}})"
            ".then(r => window.res = 'status:' + r.status, e => window.res = 'error:' + e)")
    target = kill_served.url + "api/kill"
    try:
        # Act 1: from the other site — a simple text/plain post, and a JSON one (preflighted)
        await browser.navigate(f"http://localhost:{evil_port}/")
        await browser.wait_for("document.body && document.body.textContent === 'hi'")
        await browser.evaluate(send.format(url=target, mode="no-cors", ctype="text/plain",
                                           body=KILL_BODY))
        cross_plain = await browser.wait_for("window.res")
        await browser.evaluate(send.format(url=target, mode="cors", ctype="application/json",
                                           body=KILL_BODY))
        cross_json = await browser.wait_for("window.res")
        latch_after_cross = (await read_latch(kill_served.admin, opskit.KEYS)).state

        # Act 2: the dashboard's own page sends what its kill button sends
        await browser.navigate(kill_served.url)
        await browser.wait_for("window.guardrailsDashboard?.updates > 0")
        await browser.evaluate(send.format(url="/api/kill", mode="same-origin",
                                           ctype="application/json", body=KILL_BODY))
        same_origin = await browser.wait_for("window.res")
    finally:
        await browser.close()
        await evil_runner.cleanup()

    # Assert
    assert cross_plain == "status:0"  # opaque to the page; the server refused it (below)
    assert cross_json.startswith("error:")  # the preflight was not granted
    assert latch_after_cross is TradingState.ACTIVE
    assert same_origin == "status:202"  # written; no bot runs here to confirm it
    assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.HALTED


def test_failure_throttle_when_many_peers_fail_then_overall_limit_holds_and_window_frees() -> None:
    # Arrange
    clock = FakeClock()
    t = FailureThrottle(per_peer=2, overall=5, window_s=10.0, clock=clock)

    # Act: five peers fail once each (none over its own limit), then a sixth tries
    for i in range(5):
        assert t.retry_after(f"10.0.0.{i}") == 0
        t.failed(f"10.0.0.{i}")
    blocked_overall = t.retry_after("10.0.0.99")
    clock.now += 10.5
    freed = t.retry_after("10.0.0.99")

    # Assert
    assert 9.9 <= blocked_overall <= 10.0
    assert freed == 0
    with pytest.raises(ValueError):
        FailureThrottle(per_peer=3, overall=2)


async def test_page_when_operator_clicks_kill_then_resume_in_chromium_then_status_json_follows(
    kill_served: KillServed, redis_server: RedisServer, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange: a fill (recent fills), a resting order (open orders), P&L samples (the chart)
    await opskit.buy_and_fill(kill_served.admin, "0.01", "60000", "click")
    await opskit.admit(kill_served.admin, Intent(opskit.BTC, Side.BUY, Decimal("0.01"),
                                                 Decimal("59000"), intent_id="ops-rest"))
    ledger = Ledger(kill_served.admin, opskit.KEYS, opskit.RISK)
    now = int(time.time() * 1000)
    for i in range(5):
        await ledger.record_pnl_sample(await ledger.budget(), now - (5 - i) * 5000)
    sec = "#acct-paper_ops"
    browser = await Browser(tmp_path / "profile").start()

    async def click(selector: str) -> None:
        await browser.evaluate(f"document.querySelector('{sec} {selector}').click()")

    async def fill_form(reason: str) -> None:
        await browser.evaluate(
            f"(() => {{ const f = document.querySelector('{sec} .confirm');"
            f" f.elements.reason.value = {reason!r}; f.elements.token.value = {OPERATOR_TOKEN!r}; }})()")

    try:
        await browser.navigate(kill_served.url)
        await browser.wait_for(f"document.querySelector('{sec} .state')?.textContent === 'ACTIVE'")
        # What the operator sees before acting: open orders, fills, the day's chart.
        await browser.wait_for(f"document.querySelectorAll('{sec} .orders tbody tr').length === 1")
        assert await browser.evaluate(f"document.querySelectorAll('{sec} .fills tbody tr').length") == 1
        await browser.wait_for(f"document.querySelectorAll('{sec} .pnl polyline').length === 3")
        assert await browser.evaluate(f"document.querySelector('{sec} .resume').hidden") is True
        assert await browser.evaluate("document.getElementById('conn').dataset.state") == "live"

        # Act 1: Kill… opens the confirmation; nothing is written before Confirm.
        await click(".kill")
        assert await browser.evaluate(f"document.querySelector('{sec} .confirm').hidden") is False
        assert (await read_latch(kill_served.admin, opskit.KEYS)).state is TradingState.ACTIVE
        await fill_form("drill from the browser")
        await click(".confirm-go")
        await browser.wait_for(f"document.querySelector('{sec} .state')?.textContent === 'HALTED'")
        halted = status_json(f"redis://127.0.0.1:{redis_server.port}/0")["accounts"][0]["trading"]
        png = await browser.screenshot()
        (artifacts_dir / "dashboard-halted.png").write_bytes(png)

        # Act 2: Resume… appears only now; confirm it.
        assert await browser.evaluate(f"document.querySelector('{sec} .resume').hidden") is False
        await click(".resume")
        await fill_form("drill over")
        await click(".confirm-go")
        await browser.wait_for(f"document.querySelector('{sec} .state')?.textContent === 'ACTIVE'")
        resumed = status_json(f"redis://127.0.0.1:{redis_server.port}/0")["accounts"][0]["trading"]
    finally:
        await browser.close()

    # Assert: the state the page showed is the one status --json reads back from Redis.
    assert halted["state"] == "HALTED" and halted["reason"] == "drill from the browser"
    assert "dashboard" in halted["by"]
    assert resumed["state"] == "ACTIVE"
    assert png.startswith(b"\x89PNG")


# -- a kill reaches the Redis the page shows, and says whether a bot confirmed it -----


def test_cli_dashboard_when_operator_url_names_another_db_then_refused_exit_2_nothing_written(
    redis_server: RedisServer,
) -> None:
    # Arrange: the page would read db 0 (where the bot's latch is); kills would go to db 1
    admin = redis_server.client()
    admin.sadd("gr:accounts", "paper:ops")
    port = free_port()

    # Act
    done = subprocess.run(
        [sys.executable, "-m", "guardrails", "dashboard", "--redis-url",
         f"redis://127.0.0.1:{redis_server.port}/0", "--port", str(port)],
        env=subprocess_env(
            GUARDRAILS_OPERATOR_REDIS_URL=f"redis://127.0.0.1:{redis_server.port}/1",
            GUARDRAILS_OPERATOR_TOKEN=OPERATOR_TOKEN),
        capture_output=True, text=True, timeout=60,
    )
    dbs = admin.info("keyspace")
    admin.close()

    # Assert
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "GUARDRAILS_OPERATOR_REDIS_URL" in done.stderr and "/1" in done.stderr
    assert "not the Redis the page reads" in done.stderr and "Traceback" not in done.stderr
    assert "dashboard on" not in done.stdout
    assert "db1" not in dbs


async def test_create_app_when_kill_client_on_another_db_then_refused(
    redis_server: RedisServer, redis_client: aioredis.Redis,
) -> None:
    other_db = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/1")
    try:
        with pytest.raises(DashboardError, match="halt nothing the page shows"):
            create_app(redis_client, operator_token=OPERATOR_TOKEN, kill_redis=other_db)
    finally:
        await other_db.aclose()


async def test_kill_when_account_never_seen_then_404_and_nothing_written(
    kill_served: KillServed,
) -> None:
    # Act: a typo of a known account (paper:ops is seeded)
    async with aiohttp.ClientSession() as s, s.post(kill_served.url + "api/kill", json={
            "account": "paper:dem0", "reason": "typo", "token": OPERATOR_TOKEN}) as resp:
        status, body = resp.status, await resp.json()

    # Assert
    typo = AccountKeys(AccountId("paper", "dem0"))
    assert status == 404 and body["ok"] is False and "never seen" in body["error"]
    assert not await kill_served.admin.exists(typo.state)
    assert not await kill_served.admin.sismember("gr:accounts", "paper:dem0")


async def test_kill_when_a_running_instance_acks_then_ok_and_confirmed_by_it(
    kill_served: KillServed,
) -> None:
    # Arrange: an active instance's kill listener, reduced to what it writes once it has
    # read the latch (AccountServices._ack_latch: kill_acks[instance] = "<at_ms>:<state>")
    async def instance() -> None:
        while True:
            latch = await read_latch(kill_served.admin, opskit.KEYS)
            if latch.state is TradingState.HALTED and latch.at_ms is not None:
                await kill_served.admin.hset(opskit.KEYS.kill_acks, "bot-1",
                                             f"{latch.at_ms}:{latch.state.value}")
                return
            await asyncio.sleep(0.02)

    acker = asyncio.create_task(instance())
    try:
        # Act
        async with aiohttp.ClientSession() as s, s.post(kill_served.url + "api/kill", json={
                "account": "paper:ops", "reason": "drill", "token": OPERATOR_TOKEN}) as resp:
            status, body = resp.status, await resp.json()
    finally:
        await acker

    # Assert
    assert status == 200
    assert body["ok"] is True and body["confirmed"] is True and body["confirmed_by"] == ["bot-1"]
    assert body["state"] == "HALTED" and "error" not in body


# -- the kill button cannot be locked out -------------------------------------------


@pytest.mark.parametrize("kill_throttle", [FailureThrottle(per_peer=5, overall=20)])
async def test_kill_when_other_peers_exhausted_the_failure_limit_then_right_token_halts(
    kill_served: KillServed, kill_throttle: FailureThrottle,
) -> None:
    # Arrange: twenty bad tokens from other addresses: the overall failure limit is reached
    for i in range(20):
        kill_throttle.failed(f"10.0.0.{i}")
    assert kill_throttle.retry_after("127.0.0.1") > 0
    async with aiohttp.ClientSession() as s:
        async with s.post(kill_served.url + "api/kill", json={
                "account": "paper:ops", "token": "still-a-wrong-token"}) as resp:
            wrong = resp.status
        # Act
        async with s.post(kill_served.url + "api/kill", json={
                "account": "paper:ops", "reason": "locked out?", "token": OPERATOR_TOKEN}) as resp:
            right = resp.status

    # Assert: a wrong token is throttled, the right one is accepted and written
    assert wrong == 429
    assert right == 202  # written; unconfirmed only because no bot runs here
    latch = await read_latch(kill_served.admin, opskit.KEYS)
    assert (latch.state, latch.reason) == (TradingState.HALTED, "locked out?")


# -- `guardrails run --dashboard`: the page cannot starve the bot's Redis client ----------


async def test_in_process_dashboard_when_many_sse_clients_then_own_small_pool_cap_503_bot_unaffected(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path,
) -> None:
    # Arrange: the bot's own client (as Guard holds it) and a --dashboard in the same process
    from guardrails.config import RedisConfig, load_config
    from guardrails.ops import dashboard
    from guardrails.runtime import services
    from tests.run_harness import write_config

    await opskit.seed(redis_client)
    port = free_port()
    path = write_config(tmp_path / "bot.toml", redis_url=redis_server.url, account="ops")
    path.write_text(path.read_text() + f"dashboard_port = {port}\n")
    cfg = load_config(path)
    bot = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    await bot.ping()
    bot_pool_before = len(bot.connection_pool._available_connections) + len(
        bot.connection_pool._in_use_connections)
    close = await services.start_dashboard(RedisConfig(url=redis_server.url), cfg)
    assert close is not None
    n = dashboard.MAX_SSE_CLIENTS + 8
    url = f"http://127.0.0.1:{port}/api/events"
    try:
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)) as s:
            # Act: n subscribers at once, each reading two status events
            async def subscribe() -> int | list[int]:
                async with s.get(url) as resp:
                    if resp.status != 200:
                        return resp.status
                    stamps: list[int] = []
                    async for raw in resp.content:
                        line = raw.decode().strip()
                        if line.startswith("data: "):
                            stamps.append(json.loads(line[6:])["generated_at_ms"])
                            if len(stamps) == 2:
                                return stamps
                    return stamps

            async with asyncio.timeout(60):
                results = await asyncio.gather(*(subscribe() for _ in range(n)))
                bot_ok = await bot.ping()
                clients = await redis_client.client_list()
    finally:
        await close()
    bot_pool_after = len(bot.connection_pool._available_connections) + len(
        bot.connection_pool._in_use_connections)
    await bot.aclose()

    # Assert: the cap held (the rest got 503), every admitted subscriber was served, the
    # dashboard read on its own few named connections and never on the bot's pool
    streams = [r for r in results if isinstance(r, list)]
    assert sorted(r for r in results if isinstance(r, int)) == [503] * 8
    assert len(streams) == dashboard.MAX_SSE_CLIENTS and all(len(r) == 2 for r in streams)
    ours = [c for c in clients if c.get("name") == services.DASHBOARD_CLIENT_NAME]
    assert 1 <= len(ours) <= dashboard.DASHBOARD_MAX_CONNECTIONS
    assert bot_ok is True and bot_pool_after == bot_pool_before == 1
    # one document per tick for everyone: the 32 streams shared a handful of stamps
    assert len({t for r in streams for t in r}) <= 6
