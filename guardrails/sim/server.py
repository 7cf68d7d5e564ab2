"""The simulated exchange's HTTP front: the EIP-712 venue API over ``SimExchange``
(``build_app``), the test fault hooks every protocol front shares (``Faults``,
``/admin/*``, served only with ``admin=True``), and ``Simulator``, which serves one
front on a loopback port in this process. The Binance and CLOB fronts
(``sim.binance``, ``sim.clob``) reuse ``Faults`` and ``Simulator``; running any of them
as a process is ``sim.daemon`` (``guardrails venue serve``).

HTTP API (JSON): ``POST /v1/orders`` {order, signature}; ``POST /v1/cancel`` {cancel,
signature}; ``GET /v1/orders/{account}/{coid}``; ``GET /v1/fills/{account}?after=N``;
``GET /v1/marks?symbols=A,B``; ``GET /v1/balances/{account}``; ``GET /v1/time``;
``GET /v1/info`` (pid, market digest, counts).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from aiohttp import web

from guardrails.sim.exchange import SimExchange


@dataclass
class Faults:
    """Test fault hooks, each a count of submits it still applies to."""

    drop_submit_responses: int = 0
    """Apply the submit, then close the connection without answering."""
    fail_submits: int = 0
    """Answer the submit with ``fail_status`` (a 5xx)."""
    fail_status: int = 503
    fail_applies: bool = True
    """With ``fail_submits``: whether the order is applied before the error is sent."""
    delay_submit_responses: int = 0
    """Apply the submit, then wait ``delay_seconds`` before answering (client timeouts)."""
    delay_seconds: float = 0.0

    def update(self, body: Mapping[str, Any]) -> None:
        """Set the hooks named in ``body`` (``POST /admin/faults``), each as its field's type."""
        for f in fields(self):
            if f.name in body:
                kind = {"int": int, "float": float, "bool": bool}[str(f.type)]
                setattr(self, f.name, kind(body[f.name]))

    async def answer(self, request: web.Request,
                     apply: Callable[[], tuple[int, dict[str, Any]]],
                     error: dict[str, Any]) -> web.StreamResponse:
        """Answer a submit whose effect is ``apply()``, through the armed hooks: fail it
        with ``error`` (applied or not), delay the answer, or drop it after applying."""
        if self.fail_submits > 0:
            self.fail_submits -= 1
            if self.fail_applies:
                apply()
            return web.json_response(error, status=self.fail_status)
        status, out = apply()
        if self.delay_submit_responses > 0:
            self.delay_submit_responses -= 1
            await asyncio.sleep(self.delay_seconds)
        if self.drop_submit_responses > 0:
            self.drop_submit_responses -= 1
            if request.transport is not None:
                request.transport.abort()
            # The client sees the connection reset: the order exists, the answer is lost.
            raise ConnectionResetError("fault hook: response dropped after applying")
        return web.json_response(out, status=status)


def mark_handler(exchange: SimExchange) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``POST /admin/mark`` {symbol, price}: put a mark and match (test hook)."""

    async def set_mark(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        try:
            exchange.set_mark(str(body["symbol"]), Decimal(str(body["price"])))
        except (KeyError, ValueError, ArithmeticError) as e:
            return web.json_response({"status": "error", "reason": str(e)}, status=400)
        return web.json_response({"status": "ok"})

    return set_mark


def build_app(exchange: SimExchange, *, admin: bool = False) -> web.Application:
    faults = Faults()
    app = web.Application()

    async def submit(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return await faults.answer(request, lambda: exchange.submit(body),
                                   {"status": "error", "reason": "injected"})

    async def cancel(request: web.Request) -> web.StreamResponse:
        status, out = exchange.cancel(await _body(request))
        return web.json_response(out, status=status)

    async def lookup(request: web.Request) -> web.StreamResponse:
        status, out = exchange.lookup(request.match_info["account"], request.match_info["coid"])
        return web.json_response(out, status=status)

    async def fills(request: web.Request) -> web.StreamResponse:
        try:
            after = max(0, int(request.query.get("after", "0") or "0"))
        except ValueError:
            return web.json_response({"status": "error", "reason": "bad cursor"}, status=400)
        return web.json_response(exchange.fills_after(request.match_info["account"], after))

    async def marks(request: web.Request) -> web.StreamResponse:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        return web.json_response(exchange.marks(symbols))

    async def balances(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.balances(request.match_info["account"]))

    async def now(request: web.Request) -> web.StreamResponse:
        return web.json_response({"now_ms": exchange.now_ms(), "chain_id": exchange.chain_id})

    async def info(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.info())

    async def set_faults(request: web.Request) -> web.StreamResponse:
        faults.update(await _body(request))
        return web.json_response({"status": "ok"})

    app.router.add_post("/v1/orders", submit)
    app.router.add_post("/v1/cancel", cancel)
    app.router.add_get("/v1/orders/{account}/{coid}", lookup)
    app.router.add_get("/v1/fills/{account}", fills)
    app.router.add_get("/v1/marks", marks)
    app.router.add_get("/v1/balances/{account}", balances)
    app.router.add_get("/v1/time", now)
    app.router.add_get("/v1/info", info)
    if admin:
        app.router.add_post("/admin/faults", set_faults)
        app.router.add_post("/admin/mark", mark_handler(exchange))
    return app


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class Simulator:
    """The simulator served in this process (tests; ``url = "embedded"``)."""

    def __init__(self, exchange: SimExchange, *, admin: bool = False,
                 app: Callable[[], web.Application] | None = None) -> None:
        """``app`` serves another protocol over ``exchange`` (``guardrails.sim.binance``);
        by default the EIP-712 HTTP API (``build_app``)."""
        self.exchange = exchange
        self._admin = admin
        self._app = app
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL."""
        # Bind the socket ourselves so the chosen port is known without aiohttp internals.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        runner = web.AppRunner(self.build_app(), access_log=None)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    def build_app(self) -> web.Application:
        """The protocol served: the ``app`` factory given, else the EIP-712 HTTP API (a
        subclass may serve another exchange's API)."""
        if self._app is not None:
            return self._app()
        return build_app(self.exchange, admin=self._admin)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.exchange.close()


