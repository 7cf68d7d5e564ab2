"""``guardrails dashboard``: a live web view of every account, over read-only Redis.

Invariant served: *risk is shared, not per process* — the page shows each account's
combined positions, budget, lease holder, instances, trading state and recent denials
exactly as ``status --json`` reports them (the same ``status.status_document``), so
what the operator sees is what the gate enforces.

Serving (aiohttp, 127.0.0.1 by default):

- ``GET /`` — the page (``guardrails/ops/web/``: static HTML/JS/CSS, no build step, no CDN);
- ``GET /api/status`` — the status document (``docs/status.schema.json``) plus
  ``kill_enabled``;
- ``GET /api/events`` — server-sent events: one ``status`` event per refresh interval;
  the document is built once per interval and shared by every subscriber (``StatusFeed``),
  and at most ``MAX_SSE_CLIENTS`` subscribe at once (beyond, 503);
- ``GET /metrics`` — Prometheus text format;
- ``POST /api/kill`` — only when an operator token is configured
  (``$GUARDRAILS_OPERATOR_TOKEN``, at least ``MIN_OPERATOR_TOKEN_LEN`` characters, else
  the dashboard refuses to start) *and* an operator Redis client is given:
  ``{"account", "reason", "reduce_only", "token"}``; goes through ``killswitch`` on its
  own operator connection (``$GUARDRAILS_OPERATOR_REDIS_URL``, password
  ``$GUARDRAILS_OPERATOR_REDIS_PASSWORD[_FILE]``), never the read-only one. That URL must
  name the Redis the page reads (``connect.same_target``), else the dashboard refuses to
  start: a kill written elsewhere would halt nothing the page shows. As ``guardrails kill``
  does, an account never seen on that Redis is refused (nothing written), and the answer
  says whether a running instance confirmed the latch within ``confirm_timeout_s`` and
  whether every connected replica acknowledged it (``replicated``, ``replicas``,
  ``replicas_acked``: the WAIT of ``killswitch``): ``ok`` is true only when both hold;
  written but unconfirmed or unreplicated is 202 with ``written: true`` and an ``error``
  saying NOT CONFIRMED / NOT REPLICATED (``guardrails kill`` exits 3 on the same).

What a browser elsewhere cannot do (cross-site request forgery, DNS rebinding):

- every request's ``Host`` must be the dashboard's own address (the bound host and port;
  ``localhost``/``127.0.0.1``/``[::1]`` when bound to loopback) or an allow-listed name
  (``--allow-host``): a page on ``evil.example`` rebound to 127.0.0.1 gets 421;
- a kill must be ``Content-Type: application/json`` (a form cannot send that cross-site
  without a CORS preflight, which is never granted) — else 415; an ``Origin`` or
  ``Sec-Fetch-Site`` header naming another site is refused (403);
- the token is compared first, in constant time, and a correct one is always accepted:
  no one who can reach the page can lock the operator out. Only failures are throttled
  (``FailureThrottle``, per peer and overall): over the limit a wrong token gets 429.
  This does not slow guessing (a guess is still compared); what stops guessing is the
  token's length (``MIN_OPERATOR_TOKEN_LEN``) — use a random one.

The reading client issues read-only commands only, so the dashboard can run as a Redis
ACL user limited to ``+@read`` on the account keys (the tested roles are in
docs/operations.md). ``create_app`` / ``serve`` let ``guardrails run --dashboard`` serve
the same page (without a kill button: it has no operator connection) on a client of its
own with a small pool (``DASHBOARD_MAX_CONNECTIONS``), never the bot's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import psutil
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from guardrails import logs, redacted
from guardrails.config import Config, ConfigError
from guardrails.infra import connect
from guardrails.keys import AccountId, AccountKeys, InvalidAccountId
from guardrails.killswitch import KillSwitch, KillSwitchError
from guardrails.model import TradingState
from guardrails.ops.common import load_target, operator_identity
from guardrails.ops.kill import CONFIRM_TIMEOUT_S, confirmations, ever_seen
from guardrails.ops.status import status_document
from guardrails.registry import known_accounts

OPERATOR_TOKEN_ENV = "GUARDRAILS_OPERATOR_TOKEN"
"""When set (non-empty), the page shows a kill button and ``POST /api/kill`` accepts it."""
OPERATOR_REDIS_URL_ENV = "GUARDRAILS_OPERATOR_REDIS_URL"
"""The Redis URL of the kill connection (an operator ACL user); default: the read URL."""
OPERATOR_PASSWORD_ENV = "GUARDRAILS_OPERATOR_REDIS_PASSWORD"
OPERATOR_PASSWORD_FILE_ENV = "GUARDRAILS_OPERATOR_REDIS_PASSWORD_FILE"

MIN_OPERATOR_TOKEN_LEN = 16
"""An operator token shorter than this is refused at start (``openssl rand -hex 16``
gives 32 characters)."""

MAX_SSE_CLIENTS = 32
"""Concurrent ``/api/events`` subscribers at most; one more is refused with 503."""
DASHBOARD_MAX_CONNECTIONS = 4
"""The pool size of a dashboard's own read client (reads are single-flight: see
``StatusFeed``); ``guardrails run --dashboard`` gives it such a client, never the bot's."""

log = logging.getLogger("guardrails.dashboard")


class DashboardError(ValueError):
    """The dashboard cannot start as configured (the message says what and where)."""


class FailureThrottle:
    """Failed operator tokens per peer and overall, in a sliding window.

    ``retry_after(peer)`` is 0 while the peer may try; over ``per_peer`` failures from
    one peer, or ``overall`` from everyone, within ``window_s``, it is the seconds until
    the oldest counted failure leaves the window. The clock is injected (monotonic).
    """

    def __init__(self, per_peer: int = 5, overall: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if per_peer < 1 or overall < per_peer or window_s <= 0:
            raise ValueError("FailureThrottle: need 1 <= per_peer <= overall and window_s > 0")
        self.per_peer = per_peer
        self.overall = overall
        self.window_s = window_s
        self.clock = clock
        self._peers: dict[str, deque[float]] = {}
        self._all: deque[float] = deque()

    def _trim(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.window_s:
            q.popleft()

    def retry_after(self, peer: str) -> float:
        now = self.clock()
        self._trim(self._all, now)
        mine = self._peers.get(peer)
        if mine is not None:
            self._trim(mine, now)
            if not mine:
                del self._peers[peer]
        waits = []
        if mine is not None and len(mine) >= self.per_peer:
            waits.append(mine[0] + self.window_s - now)
        if len(self._all) >= self.overall:
            waits.append(self._all[0] + self.window_s - now)
        return max(waits, default=0.0)

    MAX_PEERS = 10_000
    """Peers remembered at most; beyond, those whose failures left the window are forgotten."""

    def failed(self, peer: str) -> None:
        now = self.clock()
        if len(self._peers) >= self.MAX_PEERS:
            for p, q in list(self._peers.items()):
                self._trim(q, now)
                if not q:
                    del self._peers[p]
        self._peers.setdefault(peer, deque()).append(now)
        self._all.append(now)


def check_operator_token(token: str, where: str = OPERATOR_TOKEN_ENV) -> None:
    """Refuse a token shorter than ``MIN_OPERATOR_TOKEN_LEN`` (``DashboardError``)."""
    if len(token) < MIN_OPERATOR_TOKEN_LEN:
        raise DashboardError(
            f"{where}: the operator token is {len(token)} characters; at least "
            f"{MIN_OPERATOR_TOKEN_LEN} are required (e.g. `openssl rand -hex 16`)"
        )


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
        allow_hosts: Sequence[str],
        throttle: FailureThrottle,
        confirm_timeout_s: float,
        max_sse_clients: int,
    ) -> None:
        self.redis = redis
        self.accounts = list(accounts)
        self.config = config
        self.operator_token = operator_token or None
        self.kill_redis = kill_redis
        self.interval_s = interval_s
        self.allow_hosts = [h.strip().lower() for h in allow_hosts if h.strip()]
        """Extra names the ``Host`` header may carry (``name`` or ``name:port``)."""
        self.hosts: set[str] = set()
        """Accepted ``host:port`` values; filled by ``serve`` once the port is bound."""
        self.throttle = throttle
        self.confirm_timeout_s = confirm_timeout_s
        self.max_sse_clients = max_sse_clients
        self.sse_clients = 0
        self.feed = StatusFeed(self)

    @property
    def kill_enabled(self) -> bool:
        """A kill needs both the operator token and a client allowed to write the latch."""
        return self.operator_token is not None and self.kill_redis is not None


SETTINGS: web.AppKey[_Settings] = web.AppKey("dashboard_settings", _Settings)


class StatusFeed:
    """The one status document of an app, rebuilt at most once per refresh interval.

    Every reader (each ``/api/events`` subscriber, ``/api/status``, ``/metrics``) takes
    ``latest()``: a document younger than the interval is shared as is; an older one is
    rebuilt by the first reader while the others wait for it (single flight). So the
    Redis work per interval is one document however many clients are connected, and a
    failed read (``RedisError``) is shared the same way rather than retried per client.
    """

    def __init__(self, settings: _Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self._s = settings
        self._clock = clock
        self._lock = asyncio.Lock()
        self._at: float | None = None
        self._doc: dict[str, Any] | None = None
        self._error: RedisError | None = None
        self.builds = 0
        """Documents built so far (what a test counts)."""

    def _fresh(self) -> bool:
        return self._at is not None and self._clock() - self._at < self._s.interval_s

    async def latest(self) -> dict[str, Any]:
        """The current document; raises the ``RedisError`` its last build met."""
        if not self._fresh():
            async with self._lock:
                if not self._fresh():  # another reader may have rebuilt it meanwhile
                    try:
                        self._doc, self._error = await document(self._s), None
                    except RedisError as e:
                        self._doc, self._error = None, e
                    self.builds += 1
                    self._at = self._clock()
        if self._error is not None:
            raise self._error
        assert self._doc is not None
        return self._doc

    def invalidate(self) -> None:
        """Forget the document (after a kill: the next reader sees the new latch)."""
        self._at = None


def client_target(redis: object) -> str | None:
    """The ``redis://host:port/db`` (or ``unix://path?db=N``) a plain client's pool
    connects to, for ``connect.same_target``; None for a client whose target is not a
    fixed address (Sentinel, Cluster), which the CLI compares by URL instead."""
    pool = getattr(redis, "connection_pool", None)
    if pool is None or type(pool).__name__ not in ("ConnectionPool", "BlockingConnectionPool"):
        return None
    kw = pool.connection_kwargs
    db = int(kw.get("db") or 0)
    if kw.get("path"):
        return f"unix://{kw['path']}?db={db}"
    host = str(kw.get("host") or "localhost")
    shown = f"[{host}]" if ":" in host else host
    return f"redis://{shown}:{int(kw.get('port') or connect.DEFAULT_PORT)}/{db}"


def create_app(
    redis: aioredis.Redis,
    *,
    accounts: Sequence[AccountId] = (),
    config: Config | None = None,
    operator_token: str | None = None,
    kill_redis: aioredis.Redis | None = None,
    interval_s: float = 1.0,
    allow_hosts: Sequence[str] = (),
    throttle: FailureThrottle | None = None,
    confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
    max_sse_clients: int = MAX_SSE_CLIENTS,
) -> web.Application:
    """The dashboard app. ``redis`` is used for reads only (decode_responses=True).

    ``accounts`` are always shown; every account in ``keys.ACCOUNTS_INDEX`` is added.
    ``operator_token`` (default ``$GUARDRAILS_OPERATOR_TOKEN``) enables the kill button;
    kills are written through ``kill_redis`` (the operator's own client); without it
    the kill button stays hidden, so ``redis`` is never used for a write. A token that
    would enable kill but is shorter than ``MIN_OPERATOR_TOKEN_LEN`` raises
    ``DashboardError``. ``allow_hosts`` adds names the ``Host`` header may carry (behind
    a reverse proxy); the app answers only requests addressed to it (see ``serve``).
    ``confirm_timeout_s`` bounds a kill's wait for running instances to confirm;
    ``max_sse_clients`` caps concurrent ``/api/events`` subscribers. ``kill_redis`` on a
    different server or database than ``redis`` raises ``DashboardError``.
    """
    if max_sse_clients < 1 or confirm_timeout_s < 0:
        raise DashboardError("need max_sse_clients >= 1 and confirm_timeout_s >= 0")
    if kill_redis is not None:
        read_at, kill_at = client_target(redis), client_target(kill_redis)
        if read_at is not None and kill_at is not None and not connect.same_target(read_at,
                                                                                   kill_at):
            raise DashboardError(
                f"the kill client writes to {kill_at} but the page reads {read_at}: a kill "
                "would halt nothing the page shows")
    if operator_token is None:
        operator_token = os.environ.get(OPERATOR_TOKEN_ENV) or None
    if operator_token and kill_redis is not None:
        check_operator_token(operator_token)
    redacted.register(operator_token)
    app = web.Application(middlewares=[_only_our_host])
    app[SETTINGS] = _Settings(redis, accounts, config, operator_token, kill_redis, interval_s,
                              allow_hosts, throttle or FailureThrottle(), confirm_timeout_s,
                              max_sse_clients)
    web_dir = resources.files("guardrails.ops").joinpath("web")
    app.router.add_get("/", _index)
    app.router.add_get("/api/status", _api_status)
    app.router.add_get("/api/events", _api_events)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/api/kill", _api_kill)
    app.router.add_post("/api/resume", _api_resume)
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
    app[SETTINGS].hosts = own_hosts(host, bound, app[SETTINGS].allow_hosts)
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound}/"


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _host_port(name: str, port: int) -> str:
    name = name.strip().lower().rstrip(".")
    if name.startswith("["):  # [::1] or [::1]:8765
        addr, _, rest = name[1:].partition("]")
        return f"[{addr}]:{rest[1:] if rest.startswith(':') else port}"
    if name.count(":") > 1:  # a bare IPv6 address
        return f"[{name}]:{port}"
    host, colon, p = name.partition(":")
    return f"{host}:{p}" if colon else f"{host}:{port}"


def _interface_addresses() -> set[str]:
    """Every address of this host's interfaces (what a scraper may put in ``Host``)."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values()
            for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)}


def own_hosts(bound_host: str, port: int, allow: Sequence[str] = ()) -> set[str]:
    """The ``host:port`` values a request's ``Host`` may carry: the bound address, the
    loopback names when bound to loopback, this machine's names when bound to every
    interface, and ``allow`` (``name`` means ``name:<port>``)."""
    names = {bound_host}
    if bound_host in _LOOPBACK:
        names |= _LOOPBACK
    elif bound_host in ("", "0.0.0.0", "::"):
        names |= _LOOPBACK | {socket.gethostname(), socket.getfqdn()} | _interface_addresses()
    out = {_host_port(n, port) for n in names if n}
    return out | {_host_port(n, port) for n in allow}


def _request_host(request: web.Request) -> str:
    raw = request.headers.get("Host", "")
    return _host_port(raw, 80) if raw else ""


@web.middleware
async def _only_our_host(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer only requests addressed to this dashboard (no DNS rebinding)."""
    s = request.app[SETTINGS]
    if _request_host(request) not in s.hosts:
        logs.event(log, "dashboard.refused", logging.WARNING, reason="foreign_host",
                   host=request.headers.get("Host", "")[:200], peer=request.remote or "?")
        return web.json_response(
            {"ok": False, "error": "this dashboard does not answer for that Host "
             "(add it with --allow-host)"}, status=421)
    return await handler(request)


def _foreign_origin(request: web.Request) -> str | None:
    """Why a state-changing request comes from another site, or None if it does not."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site: {site}"
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser (curl, scripts): the token and JSON rules still apply
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return f"Origin: {origin[:100]}"
    default = 443 if scheme == "https" else 80
    if _host_port(rest, default) not in request.app[SETTINGS].hosts:
        return f"Origin: {origin[:100]}"
    return None


# -- data -----------------------------------------------------------------------------


async def _accounts(s: _Settings) -> list[AccountId]:
    found = {str(a): a for a in s.accounts}
    for a in await known_accounts(s.redis):
        if str(a) not in found and await _ever_ran(s.redis, a):
            found[str(a)] = a
    return [found[k] for k in sorted(found)]


async def _ever_ran(redis: aioredis.Redis, account: AccountId) -> bool:
    """An indexed account is shown only if something ever ran for it: stored limits, a
    lease, or registered instances. A kill typed for a typo'd account id (a phantom) is
    in the index but has none of these, so it never appears on the page or in /metrics."""
    k = AccountKeys(account)
    return bool(await redis.exists(k.limits, k.lease, k.instances))


async def document(s: _Settings) -> dict[str, Any]:
    """The status document of every shown account, plus what the page needs."""
    doc = await status_document(s.redis, await _accounts(s), config=s.config)
    doc["kill_enabled"] = s.kill_enabled
    # What only the page shows, beside the status document (which stays docs/status.schema.json).
    extras: dict[str, Any] = {}
    for a in doc["accounts"]:
        keys = AccountKeys(AccountId.parse(a["account"]))
        day = (a.get("budget") or {}).get("trading_day")
        extras[a["account"]] = {
            "pnl_history": await _pnl_history(s.redis, keys, day) if day else [],
            "recent_fills": await _recent_fills(s.redis, keys),
        }
    doc["dashboard"] = {"accounts": extras}
    return doc


PNL_POINTS = 720
"""At most this many samples of the day are sent to the page (evenly thinned)."""


async def _pnl_history(redis: aioredis.Redis, keys: AccountKeys, day: str) -> list[dict[str, Any]]:
    """The day's P&L samples (``keys.pnl_history``), thinned to ``PNL_POINTS``; a malformed
    sample is skipped, never fatal (this is a picture, not a check)."""
    raw = await redis.lrange(keys.pnl_history(day), 0, -1)
    step = max(1, len(raw) // PNL_POINTS)
    out: list[dict[str, Any]] = []
    for item in raw[::step] + ([raw[-1]] if raw and (len(raw) - 1) % step else []):
        try:
            sample = json.loads(item)
        except (ValueError, TypeError):
            continue
        if isinstance(sample, dict) and isinstance(sample.get("t"), int):
            out.append({k: sample.get(k) for k in ("t", "realized_pnl", "unrealized_loss", "used",
                                                   "limit")})
    return out


async def _recent_fills(redis: aioredis.Redis, keys: AccountKeys, n: int = 20) -> list[dict[str, Any]]:
    """The account's last ``n`` fills from its journal (newest first), as journaled: lots
    and money in the account's integer units."""
    out: list[dict[str, Any]] = []
    for entry_id, f in await redis.xrevrange(keys.journal, count=500) or []:
        if not f or _s(f.get(b"ev", f.get("ev"))) != "fill":
            continue
        row = {k: _s(f.get(k.encode(), f.get(k))) for k in ("fill_id", "coid", "symbol", "side",
                                                             "lots", "value", "ts_ms")}
        row["id"] = _s(entry_id)
        out.append(row)
        if len(out) >= n:
            break
    return out


def _s(v: object) -> str | None:
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else str(v)


# -- handlers -------------------------------------------------------------------------


async def _index(request: web.Request) -> web.Response:
    page = resources.files("guardrails.ops").joinpath("web/index.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def _api_status(request: web.Request) -> web.Response:
    try:
        doc = await request.app[SETTINGS].feed.latest()
    except RedisError as e:
        return web.json_response({"error": f"redis: {redacted.mask_text(str(e))}"}, status=503)
    return web.json_response(doc, dumps=lambda o: json.dumps(o, sort_keys=True))


async def _api_events(request: web.Request) -> web.StreamResponse:
    s = request.app[SETTINGS]
    if s.sse_clients >= s.max_sse_clients:
        logs.event(log, "dashboard.refused", logging.WARNING, reason="too_many_subscribers",
                   limit=s.max_sse_clients, peer=request.remote or "?")
        return web.json_response(
            {"ok": False, "error": f"too many live subscribers (at most {s.max_sse_clients}); "
             "retry later"}, status=503, headers={"Retry-After": "5"})
    s.sse_clients += 1
    try:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        while True:
            try:
                payload = json.dumps(await s.feed.latest(), sort_keys=True)
                await resp.write(f"event: status\ndata: {payload}\n\n".encode())
            except RedisError as e:
                err = json.dumps({"error": f"redis: {redacted.mask_text(str(e))}"})
                await resp.write(f"event: failure\ndata: {err}\n\n".encode())
            await asyncio.sleep(s.interval_s)
    except ConnectionResetError:
        return resp  # the browser went away
    finally:
        s.sse_clients -= 1
    # A cancellation (the server stopping) propagates: swallowing it is how a task
    # outlives its cancel (the step-down bug the chaos run found in the runtime).


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
            add("guardrails_fees_uncounted", "gauge",
                "Fills of the trading day applied without their fee (not in budget used).", acc,
                b.get("fees_uncounted"))
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
        text = render_metrics(await request.app[SETTINGS].feed.latest())
    except RedisError:
        text = "# HELP guardrails_up 1 when Redis was read for this scrape.\n" \
               "# TYPE guardrails_up gauge\nguardrails_up 0\n"
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def _api_kill(request: web.Request) -> web.Response:
    s = request.app[SETTINGS]
    if s.operator_token is None or s.kill_redis is None:  # i.e. not s.kill_enabled
        raise web.HTTPNotFound(text="kill is disabled: no operator token configured")
    peer = request.remote or "?"

    def refuse(status: int, reason: str, error: str, **headers: str) -> web.Response:
        logs.event(log, "dashboard.kill_refused", logging.WARNING, reason=reason, peer=peer)
        return web.json_response({"ok": False, "error": error}, status=status, headers=headers)

    foreign = _foreign_origin(request)
    if foreign is not None:
        return refuse(403, "foreign_origin", f"cross-site request refused ({foreign})")
    if request.content_type != "application/json":
        return refuse(415, "content_type", "a kill must be sent as Content-Type: "
                      f"application/json (got {request.content_type[:100]!r})")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"ok": False, "error": "body must be JSON"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"ok": False, "error": "body must be an object"}, status=400)
    given = str(body.get("token") or request.headers.get("X-Operator-Token", ""))
    # The right token first, in constant time, and always accepted: failures from anyone
    # else (every local user is the same loopback peer) must never lock the operator out.
    if not hmac.compare_digest(given.encode(), s.operator_token.encode()):
        wait = s.throttle.retry_after(peer)
        if wait > 0:
            return refuse(429, "throttled", f"too many bad operator tokens; retry in {wait:.0f}s",
                          **{"Retry-After": str(max(1, round(wait)))})
        s.throttle.failed(peer)
        return refuse(403, "bad_token", "bad operator token")
    try:
        account = AccountId.parse(str(body.get("account", "")))
    except InvalidAccountId as e:
        return web.json_response({"ok": False, "error": str(e)}, status=400)
    try:
        seen = await ever_seen(s.kill_redis, account)
    except RedisError as e:
        return web.json_response({"ok": False, "written": False, "error":
                                  f"redis: {redacted.mask_text(str(e))}; nothing was written"},
                                 status=502)
    if not seen:
        return refuse(404, "unknown_account", f"{account} was never seen on this Redis (not in "
                      "the account index, no stored limits) — a typo? Nothing was written")
    resume = request.path.endswith("/resume")
    reason = str(body.get("reason") or ("dashboard resume" if resume else "dashboard kill"))
    state = (TradingState.ACTIVE if resume
             else TradingState.REDUCING if body.get("reduce_only") else TradingState.HALTED)
    keys = AccountKeys(account)
    try:
        change = await KillSwitch(s.kill_redis, keys).set_state(
            state, reason=reason, by=operator_identity(f"dashboard from {peer}")
        )
    except KillSwitchError as e:
        return web.json_response({"ok": False, "written": False, "error": str(e)}, status=502)
    s.feed.invalidate()
    answer: dict[str, Any] = {
        "account": str(account), "prev_state": change.prev_state.value,
        "state": change.state.value, "at_ms": change.at_ms, "by": change.by, "written": True,
    }
    try:
        acked = await confirmations(s.kill_redis, keys, change, s.confirm_timeout_s)
    except RedisError as e:
        acked, why = [], f"confirmations could not be read ({redacted.mask_text(str(e))})"
    else:
        why = f"no running instance confirmed it within {s.confirm_timeout_s:g}s"
    answer.update(confirmed=bool(acked), confirmed_by=acked,
                  replicated=change.replicated, replicas=change.replicas,
                  replicas_acked=change.acked, ok=bool(acked) and change.replicated)
    if change.replication_problem:
        answer["replication_problem"] = change.replication_problem
    logs.event(log, "dashboard.kill", account=str(account), state=change.state.value,
               peer=peer, confirmed=len(acked), replicated=change.replicated)
    problems = []
    if not change.replicated:
        # as `guardrails kill` exits 3: a latch only the master holds is lost if it fails
        # over now, and the promoted replica reads the old state
        lag = change.replication_problem or f"{change.acked}/{change.replicas} replicas acknowledged it"
        problems.append(f"NOT REPLICATED: the latch of {account} is written on the master, but "
                        f"not on every connected replica ({lag}): a failover now would lose it. "
                        "Check the replicas (INFO replication) and kill again")
    if not acked:
        problems.append(f"NOT CONFIRMED: the latch of {account} is written ({change.prev_state.value}"
                        f" -> {change.state.value}), but {why}: no bot of that account "
                        "listens on this Redis")
    if problems:
        answer["error"] = "; ".join(problems)
        return web.json_response(answer, status=202)
    return web.json_response(answer)


async def _api_resume(request: web.Request) -> web.Response:
    """``POST /api/resume``: the kill endpoint's checks (operator token, JSON, same origin,
    throttle), then the latch back to ACTIVE."""
    return await _api_kill(request)


# -- CLI ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _clients(url: str, want_kill: bool) -> AsyncIterator[tuple[aioredis.Redis, Any]]:
    """The read client, and (with a token) the operator's own kill client:
    ``$GUARDRAILS_OPERATOR_REDIS_URL`` (default ``url``) with its own password."""
    read = await connect.connect(url)
    kill = None
    if want_kill:
        op_url = os.environ.get(OPERATOR_REDIS_URL_ENV) or url
        op_password = connect.password_from_env(OPERATOR_PASSWORD_ENV,
                                                  OPERATOR_PASSWORD_FILE_ENV)
        kill = await connect.connect(op_url, password=op_password)
    try:
        yield read, kill
    finally:
        await read.aclose()
        if kill is not None:
            await kill.aclose()


async def _dashboard(args: argparse.Namespace) -> int:
    url, cfg = load_target(args)
    token = os.environ.get(OPERATOR_TOKEN_ENV) or None
    try:
        if token is not None:
            check_operator_token(token)
    except DashboardError as e:
        print(f"guardrails dashboard: refused: {e}", file=sys.stderr)
        return 2
    op_url = os.environ.get(OPERATOR_REDIS_URL_ENV) or url
    if token is not None and not connect.same_target(op_url, url):
        print(f"guardrails dashboard: refused: ${OPERATOR_REDIS_URL_ENV} "
              f"({connect.describe(op_url)}) is not the Redis the page reads "
              f"({connect.describe(url)}): a kill would be written where no bot shown here "
              "reads it. Point both at the same server and database", file=sys.stderr)
        return 2
    async with contextlib.AsyncExitStack() as stack:
        try:
            read, kill = await stack.enter_async_context(_clients(url, token is not None))
        except (ConfigError, ValueError) as e:
            print(f"guardrails dashboard: {redacted.mask_text(str(e))}", file=sys.stderr)
            return 2
        for name, client, where in (("Redis", read, url), ("operator Redis", kill, op_url)):
            if client is None:
                continue
            try:
                await client.ping()
            except RedisError as e:
                print(f"guardrails dashboard: {name} at {connect.describe(where)}: "
                      f"{redacted.mask_text(str(e))}", file=sys.stderr)
                return 2
        accounts = [cfg.account_id] if cfg is not None else []
        app = create_app(read, accounts=accounts, config=cfg, operator_token=token,
                         kill_redis=kill, allow_hosts=args.allow_host or ())
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
