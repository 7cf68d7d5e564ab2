"""``guardrails dashboard``: a live web view of every account, over read-only Redis.

Invariant served: *risk is shared, not per process* — the page shows each account's
combined positions, budget, lease holder, instances, trading state and recent denials
exactly as ``status --json`` reports them (the same ``status.status_document``), so
what the operator sees is what the gate enforces.

Serving (aiohttp, 127.0.0.1 by default):

- ``GET /`` — the page (``guardrails/web/``: static HTML/JS/CSS, no build step, no CDN);
- ``GET /api/status`` — the status document (``docs/status.schema.json``) plus
  ``kill_enabled``;
- ``GET /api/events`` — server-sent events: one ``status`` event per refresh interval;
- ``GET /metrics`` — Prometheus text format;
- ``POST /api/kill`` — only when an operator token is configured
  (``$GUARDRAILS_OPERATOR_TOKEN``): ``{"account", "reason", "reduce_only", "token"}``;
  goes through ``killswitch`` on a separate client (the reading client stays read-only).

The reading client issues read-only commands only, so the dashboard can run as a Redis
ACL user limited to ``+@read`` on the account keys. ``create_app`` / ``serve`` let
``guardrails run --dashboard`` serve the same page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from guardrails import redisconn
from guardrails.config import Config
from guardrails.keys import AccountId, InvalidAccountId
from guardrails.model import TradingState

OPERATOR_TOKEN_ENV = "GUARDRAILS_OPERATOR_TOKEN"
"""When set (non-empty), the page shows a kill button and ``POST /api/kill`` accepts it."""


class _Settings:
    """What one dashboard app reads and how (kept on the app, not in module globals)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        accounts: Sequence[AccountId],
        config: Config | None,
        operator_token: str | None,
        kill_redis: aioredis.Redis | None,
        interval_s: float,
    ) -> None:
        self.redis = redis
        self.accounts = list(accounts)
        self.config = config
        self.operator_token = operator_token or None
        self.kill_redis = kill_redis
        self.interval_s = interval_s

    @property
    def kill_enabled(self) -> bool:
        """A kill needs both the operator token and a client allowed to write the latch."""
        return self.operator_token is not None and self.kill_redis is not None


SETTINGS: web.AppKey[_Settings] = web.AppKey("dashboard_settings", _Settings)


def create_app(
    redis: aioredis.Redis,
    *,
    accounts: Sequence[AccountId] = (),
    config: Config | None = None,
    operator_token: str | None = None,
    kill_redis: aioredis.Redis | None = None,
    interval_s: float = 1.0,
) -> web.Application:
    """The dashboard app. ``redis`` is used for reads only (decode_responses=True).

    ``accounts`` are always shown; every account in ``keys.ACCOUNTS_INDEX`` is added.
    ``operator_token`` (default ``$GUARDRAILS_OPERATOR_TOKEN``) enables the kill button;
    kills are written through ``kill_redis`` (a client with write access); without it
    the kill button stays hidden, so ``redis`` is never used for a write.
    """
    if operator_token is None:
        operator_token = os.environ.get(OPERATOR_TOKEN_ENV) or None
    app = web.Application()
    app[SETTINGS] = _Settings(redis, accounts, config, operator_token, kill_redis, interval_s)
    web_dir = resources.files("guardrails").joinpath("web")
    app.router.add_get("/", _index)
    app.router.add_get("/api/status", _api_status)
    app.router.add_get("/api/events", _api_events)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/api/kill", _api_kill)
    app.router.add_static("/static/", path=str(web_dir), show_index=False)
    return app


async def serve(
    app: web.Application, host: str = "127.0.0.1", port: int = 8765
) -> tuple[web.AppRunner, str]:
    """Start serving ``app``; returns the runner (``await runner.cleanup()`` stops it) and
    the page's URL (the real port when ``port`` is 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, f"http://{host}:{bound}/"


# -- data -----------------------------------------------------------------------------


async def _accounts(s: _Settings) -> list[AccountId]:
    from guardrails.killswitch import known_accounts

    found = {str(a): a for a in s.accounts}
    for a in await known_accounts(s.redis):
        found.setdefault(str(a), a)
    return [found[k] for k in sorted(found)]


async def document(s: _Settings) -> dict[str, Any]:
    """The status document of every shown account, plus what the page needs."""
    from guardrails.status import status_document

    doc = await status_document(s.redis, await _accounts(s), config=s.config)
    doc["kill_enabled"] = s.kill_enabled
    return doc


# -- handlers -------------------------------------------------------------------------


async def _index(request: web.Request) -> web.Response:
    page = resources.files("guardrails").joinpath("web/index.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def _api_status(request: web.Request) -> web.Response:
    try:
        doc = await document(request.app[SETTINGS])
    except RedisError as e:
        return web.json_response({"error": f"redis: {e}"}, status=503)
    return web.json_response(doc, dumps=lambda o: json.dumps(o, sort_keys=True))


async def _api_events(request: web.Request) -> web.StreamResponse:
    s = request.app[SETTINGS]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    try:
        while True:
            try:
                payload = json.dumps(await document(s), sort_keys=True)
                await resp.write(f"event: status\ndata: {payload}\n\n".encode())
            except RedisError as e:
                err = json.dumps({"error": f"redis: {e}"})
                await resp.write(f"event: failure\ndata: {err}\n\n".encode())
            await asyncio.sleep(s.interval_s)
    except ConnectionResetError:
        return resp  # the browser went away
    # A cancellation (the server stopping) propagates: swallowing it is how a task
    # outlives its cancel (the step-down bug the chaos run found in the runtime).
    return resp


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(doc: dict[str, Any]) -> str:
    """The Prometheus text exposition of a status document."""
    series: dict[str, tuple[str, str, list[str]]] = {}

    def add(name: str, kind: str, help_: str, labels: dict[str, object], value: object) -> None:
        if value is None:
            return
        entry = series.setdefault(name, (kind, help_, []))
        lab = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        entry[2].append(f"{name}{{{lab}}} {value}")

    for a in doc["accounts"]:
        acc = {"account": a["account"]}
        for p in a.get("positions") or []:
            lab = dict(acc, symbol=p["symbol"])
            add("guardrails_position_qty", "gauge", "Combined position per symbol.", lab, p["qty"])
            add("guardrails_position_unrealized", "gauge", "Unrealized PnL at the mark.", lab,
                p["unrealized"])
        b = a.get("budget")
        if b:
            add("guardrails_budget_used", "gauge", "Daily loss budget used (money).", acc,
                b["used"])
            add("guardrails_budget_limit", "gauge", "Daily loss limit (money).", acc, b["limit"])
            add("guardrails_budget_used_ratio", "gauge", "Budget used / limit.", acc,
                b.get("used_fraction"))
        lease = a.get("lease") or {}
        add("guardrails_lease_token", "gauge", "Fencing token of the lease holder.", acc,
            lease.get("token"))
        add("guardrails_lease_ttl_ms", "gauge", "Remaining lease TTL (ms).", acc,
            lease.get("ttl_ms"))
        add("guardrails_fence", "gauge", "Fencing counter.", acc, lease.get("fence"))
        t = a.get("trading")
        if t:
            for st in TradingState:
                add("guardrails_trading_state", "gauge", "1 for the account's trading state.",
                    dict(acc, state=st.value), 1 if t["state"] == st.value else 0)
        roles: dict[str, int] = {}
        for i in a.get("instances") or []:
            roles[str(i.get("role"))] = roles.get(str(i.get("role")), 0) + 1
        for role in sorted(set(roles) | {"active", "standby"}):
            add("guardrails_instances", "gauge", "Registered instances by role.",
                dict(acc, role=role), roles.get(role, 0))
        c = a.get("counts")
        if c:
            add("guardrails_admitted_total", "counter", "Orders admitted by the gate.", acc,
                c["admitted"])
            for reason, n in c["denied"].items():
                add("guardrails_denied_total", "counter", "Orders denied by the gate, by reason.",
                    dict(acc, reason=reason), n)
    lines: list[str] = []
    add_up = ("gauge", "1 when Redis was read for this scrape.", ["guardrails_up 1"])
    for name, (kind, help_, samples) in [("guardrails_up", add_up), *sorted(series.items())]:
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"


async def _metrics(request: web.Request) -> web.Response:
    try:
        text = render_metrics(await document(request.app[SETTINGS]))
    except RedisError:
        text = "# HELP guardrails_up 1 when Redis was read for this scrape.\n" \
               "# TYPE guardrails_up gauge\nguardrails_up 0\n"
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def _api_kill(request: web.Request) -> web.Response:
    from guardrails.keys import AccountKeys
    from guardrails.killswitch import KillSwitch, KillSwitchError, operator_identity

    s = request.app[SETTINGS]
    if s.operator_token is None or s.kill_redis is None:  # i.e. not s.kill_enabled
        raise web.HTTPNotFound(text="kill is disabled: no operator token configured")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"ok": False, "error": "body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"ok": False, "error": "body must be an object"}, status=400)
    given = str(body.get("token") or request.headers.get("X-Operator-Token", ""))
    if not hmac.compare_digest(given.encode(), s.operator_token.encode()):
        return web.json_response({"ok": False, "error": "bad operator token"}, status=403)
    try:
        account = AccountId.parse(str(body.get("account", "")))
    except InvalidAccountId as e:
        return web.json_response({"ok": False, "error": str(e)}, status=400)
    reason = str(body.get("reason") or "dashboard kill")
    state = TradingState.REDUCING if body.get("reduce_only") else TradingState.HALTED
    peer = request.remote or "?"
    try:
        change = await KillSwitch(s.kill_redis, AccountKeys(account)).set_state(
            state, reason=reason, by=f"{operator_identity()} (dashboard from {peer})"
        )
    except KillSwitchError as e:
        return web.json_response({"ok": False, "error": str(e)}, status=502)
    return web.json_response({
        "ok": True, "account": str(account), "prev_state": change.prev_state.value,
        "state": change.state.value, "at_ms": change.at_ms, "by": change.by,
    })


# -- CLI ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _clients(url: str, want_kill: bool) -> AsyncIterator[tuple[aioredis.Redis, Any]]:
    read = await redisconn.connect(url)
    kill = await redisconn.connect(url) if want_kill else None
    try:
        yield read, kill
    finally:
        await read.aclose()
        if kill is not None:
            await kill.aclose()


async def _dashboard(args: argparse.Namespace) -> int:
    from guardrails.status import load_target

    url, cfg = load_target(args)
    token = os.environ.get(OPERATOR_TOKEN_ENV) or None
    async with _clients(url, token is not None) as (read, kill):
        try:
            await read.ping()
        except RedisError as e:
            print(f"guardrails dashboard: Redis at {redisconn.describe(url)}: {e}",
                  file=sys.stderr)
            return 2
        accounts = [cfg.account_id] if cfg is not None else []
        app = create_app(read, accounts=accounts, config=cfg, operator_token=token,
                         kill_redis=kill)
        runner, page = await serve(app, args.host, args.port)
        print(f"dashboard on {page} (kill button {'enabled' if token else 'disabled'})",
              flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    return asyncio.run(_dashboard(args))
