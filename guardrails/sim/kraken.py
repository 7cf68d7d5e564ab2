"""A simulator of the part of Kraken's spot REST API that the dead-man switch needs.

Why Kraken: ccxt's ``binance`` class has no ``cancelAllOrdersAfter`` (Binance spot has no
such endpoint; its futures ``countdownCancelAll`` is per symbol and not in ccxt's unified
API), so the ccxt venue's dead-man switch is proven against an exchange whose ccxt class
really implements it: ``kraken`` (``POST /0/private/CancelAllOrdersAfter``). The
unmodified ccxt ``kraken`` class, its URLs pointed here, signs and sends exactly what it
sends to Kraken and parses the answers with its own code.

The subset served (Kraken's paths and answer envelope ``{"error": [...], "result": ...}``):

* public: ``GET /0/public/Time``, ``GET /0/public/Assets``, ``GET /0/public/AssetPairs`` (``pair_decimals`` /
  ``lot_decimals`` from each instrument's tick and lot, which must be powers of ten);
* private (``API-Key`` + ``API-Sign`` = base64 HMAC-SHA512 over ``path + SHA256(nonce +
  body)`` with the base64-decoded secret; ``nonce`` strictly increasing per key, else
  ``EAPI:Invalid nonce``): ``AddOrder`` (``limit`` only, ``cl_ord_id`` optional),
  ``OpenOrders``, ``CancelOrder`` (``txid`` or ``cl_ord_id``), ``CancelAllOrdersAfter``.

``CancelAllOrdersAfter`` is Kraken's dead-man switch: ``timeout`` seconds (0 disables,
at most 86400) arms or re-arms one countdown per API key; when it runs out every open
order of the account is cancelled and the countdown stops until armed again. The answer
is ``{"currentTime", "triggerTime"}`` (RFC 3339; ``"0"`` when disabled). Each arm, disarm
and trigger is a ``dead_man`` line in the record (``action``, ``timeout_s``,
``trigger_ms``, ``canceled``).

Matching, the record and balances are the shared engine's
(``guardrails.sim.exchange.SimExchange``). Not simulated: any other endpoint (trade
history, balances, tickers), partial fills, fees, rate limits, the ``deadline`` order
parameter, websockets.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from guardrails.model import Order, Side
from guardrails.sim.binance import account_label, assets, fmt8, symbol_id
from guardrails.sim.exchange import SimExchange, SimOrder

MAX_TIMEOUT_S = 86_400
FAR_FUTURE_MS = 2**62
"""Kraken has no per-request window here: an order is never refused as late."""


class KrakenError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _decimals(step: Decimal, what: str) -> int:
    exp = step.normalize().as_tuple().exponent
    if step.normalize() != Decimal(1).scaleb(int(exp)):
        raise ValueError(f"the Kraken simulator needs power-of-ten {what}s, got {step}")
    return max(0, -int(exp))


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KrakenSim:
    """Kraken's request rules and dead-man switch over one ``SimExchange``."""

    def __init__(self, exchange: SimExchange, keys: Mapping[str, str]) -> None:
        """``keys`` maps API keys to their (base64) secrets."""
        self.exchange = exchange
        self._keys = dict(keys)
        self._nonces: dict[str, int] = {}
        self._by_id = {symbol_id(s): s for s in exchange.instruments}
        self._txid: dict[tuple[str, str], str] = {}
        """(account, client order id) -> Kraken txid."""
        self._coid: dict[str, tuple[str, str]] = {}
        self.timers: dict[str, tuple[int, asyncio.TimerHandle]] = {}
        """Account -> (trigger time ms, the scheduled trigger) of an armed switch."""
        self.triggered: dict[str, int] = {}
        """Account -> how many times its switch fired."""

    def __repr__(self) -> str:
        return f"KrakenSim(keys={len(self._keys)})"

    # -- authentication -----------------------------------------------------------------

    def authenticate(self, path: str, api_key: str | None, api_sign: str | None,
                     raw_body: str, params: Mapping[str, str]) -> str:
        secret = self._keys.get(api_key or "")
        if secret is None:
            raise KrakenError("EAPI:Invalid key")
        nonce = params.get("nonce", "")
        if not nonce.isdigit():
            raise KrakenError("EAPI:Invalid nonce")
        try:
            key = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise KrakenError("EAPI:Invalid key") from None
        digest = hashlib.sha256((nonce + raw_body).encode()).digest()
        expected = base64.b64encode(
            hmac.new(key, path.encode() + digest, hashlib.sha512).digest()).decode()
        if not api_sign or not hmac.compare_digest(expected, api_sign):
            raise KrakenError("EAPI:Invalid signature")
        assert api_key is not None
        if int(nonce) <= self._nonces.get(api_key, 0):
            raise KrakenError("EAPI:Invalid nonce")
        self._nonces[api_key] = int(nonce)
        return account_label(api_key)

    # -- public -------------------------------------------------------------------------

    def asset_pairs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sym, inst in self.exchange.instruments.items():
            base, quote = assets(sym)
            pid = symbol_id(sym)
            out[pid] = {
                "altname": pid, "wsname": f"{base}/{quote}", "aclass_base": "currency",
                "base": base, "aclass_quote": "currency", "quote": quote, "lot": "unit",
                "cost_decimals": 5, "pair_decimals": _decimals(inst.tick, "tick"),
                "lot_decimals": _decimals(inst.lot, "lot"), "lot_multiplier": 1,
                "leverage_buy": [], "leverage_sell": [], "fees": [[0, 0.26]],
                "fees_maker": [[0, 0.16]], "fee_volume_currency": "ZUSD", "margin_call": 80,
                "margin_stop": 40, "ordermin": format(inst.lot, "f"),
                "costmin": "0.5", "tick_size": format(inst.tick, "f"), "status": "online",
            }
        return out

    def assets(self) -> dict[str, Any]:
        """``Assets``: each base with its instrument's lot decimals (ccxt takes the larger
        of the asset's and the pair's amount precision), each quote with its tick's."""
        out: dict[str, Any] = {}
        for sym, inst in self.exchange.instruments.items():
            base, quote = assets(sym)
            for code, step, what in ((base, inst.lot, "lot"), (quote, inst.tick, "tick")):
                out.setdefault(code, {"aclass": "currency", "altname": code,
                                      "decimals": _decimals(step, what),
                                      "display_decimals": _decimals(step, what),
                                      "collateral_value": 1, "status": "enabled"})
        return out

    # -- private ------------------------------------------------------------------------

    def _order_json(self, so: SimOrder) -> dict[str, Any]:
        o = so.order
        filled = sum((f.qty for f in so.fills), Decimal(0))
        cost = sum((f.qty * f.price for f in so.fills), Decimal(0))
        pid = symbol_id(o.symbol)
        status = {"open": "open", "filled": "closed", "canceled": "canceled"}.get(so.state,
                                                                                    "canceled")
        return {
            "refid": None, "userref": 0, "cl_ord_id": o.client_order_id, "status": status,
            "opentm": so.arrival_ms / 1000, "starttm": 0, "expiretm": 0,
            "descr": {"pair": pid, "type": o.side.value, "ordertype": "limit",
                      "price": format(o.price, "f"), "price2": "0", "leverage": "none",
                      "order": f"{o.side.value} {fmt8(o.qty)} {pid} @ limit {o.price}",
                      "close": ""},
            "vol": fmt8(o.qty), "vol_exec": fmt8(filled), "cost": format(cost, "f"),
            "fee": "0.00000", "price": format(o.price, "f"), "stopprice": "0.00000",
            "limitprice": "0.00000", "misc": "", "oflags": "fciq",
        }

    def add_order(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        symbol = self._by_id.get(params.get("pair", "").upper())
        if symbol is None:
            raise KrakenError("EQuery:Unknown asset pair")
        if params.get("ordertype") != "limit":
            raise KrakenError("EGeneral:Invalid arguments:ordertype")
        side = params.get("type")
        if side not in ("buy", "sell"):
            raise KrakenError("EGeneral:Invalid arguments:type")
        try:
            qty, price = Decimal(params.get("volume", "")), Decimal(params.get("price", ""))
        except InvalidOperation:
            raise KrakenError("EGeneral:Invalid arguments") from None
        inst = self.exchange.instruments[symbol]
        if inst.ticks(price) is None:
            raise KrakenError("EOrder:Invalid price:Invalid price argument")
        if inst.lots(qty) is None:
            raise KrakenError("EGeneral:Invalid arguments:volume")
        coid = params.get("cl_ord_id") or ("kr" + secrets.token_hex(12))
        if (account, coid) in self._txid:
            raise KrakenError("EOrder:Duplicate cl_ord_id")
        order = Order(client_order_id=coid, symbol=symbol, side=Side(side), qty=qty,
                      price=price, token=0, submit_deadline_ms=FAR_FUTURE_MS)
        status, out = self.exchange.place(order, account, self.exchange.now_ms())
        so = self.exchange.order(account, coid)
        if status != 200 or so is None:
            raise KrakenError(f"EOrder:Invalid order:{out.get('reason', 'rejected')}")
        txid = "O" + secrets.token_hex(3).upper() + "-" + secrets.token_hex(3).upper()[:5] \
            + "-" + secrets.token_hex(3).upper()
        self._txid[(account, coid)] = txid
        self._coid[txid] = (account, coid)
        return {"descr": {"order": f"{side} {fmt8(qty)} {symbol_id(symbol)} @ limit {price}"},
                "txid": [txid]}

    def open_orders(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        want = params.get("cl_ord_id")
        return {"open": {
            self._txid[(account, so.order.client_order_id)]: self._order_json(so)
            for so in self.exchange.orders_of(account)
            if so.state == "open" and (account, so.order.client_order_id) in self._txid
            and (want is None or so.order.client_order_id == want)
        }}

    def cancel_order(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        coid = params.get("cl_ord_id")
        if coid is None:
            owner, coid = self._coid.get(params.get("txid", ""), ("", ""))
            if owner != account:
                raise KrakenError("EOrder:Unknown order")
        so = self.exchange.order(account, coid)
        if so is None or so.state != "open":
            raise KrakenError("EOrder:Unknown order")
        self.exchange.cancel_order(account, coid, self.exchange.now_ms())
        return {"count": 1}

    def cancel_all_after(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        raw = params.get("timeout", "")
        if not raw.isdigit() or int(raw) > MAX_TIMEOUT_S:
            raise KrakenError("EGeneral:Invalid arguments:timeout")
        timeout_s = int(raw)
        now = self.exchange.now_ms()
        old = self.timers.pop(account, None)
        if old is not None:
            old[1].cancel()
        if timeout_s == 0:
            self.exchange._write({"type": "dead_man", "account": account, "action": "disarm",
                                  "arrival_ms": now})
            return {"currentTime": _rfc3339(now), "triggerTime": "0"}
        trigger = now + timeout_s * 1000
        handle = asyncio.get_running_loop().call_later(timeout_s, self._fire, account)
        self.timers[account] = (trigger, handle)
        self.exchange._write({"type": "dead_man", "account": account, "action": "arm",
                              "timeout_s": timeout_s, "trigger_ms": trigger, "arrival_ms": now})
        return {"currentTime": _rfc3339(now), "triggerTime": _rfc3339(trigger)}

    def _fire(self, account: str) -> None:
        """The countdown ran out: cancel every open order of the account, stop the timer."""
        self.timers.pop(account, None)
        now = self.exchange.now_ms()
        canceled = 0
        for so in self.exchange.orders_of(account):
            if so.state == "open":
                self.exchange.cancel_order(account, so.order.client_order_id, now)
                canceled += 1
        self.triggered[account] = self.triggered.get(account, 0) + 1
        self.exchange._write({"type": "dead_man", "account": account, "action": "trigger",
                              "canceled": canceled, "arrival_ms": now})

    def close(self) -> None:
        for _, handle in self.timers.values():
            handle.cancel()
        self.timers.clear()


def build_kraken_app(sim: KrakenSim) -> web.Application:
    """The aiohttp application serving Kraken's paths over ``sim``."""
    app = web.Application()

    def envelope(fn: Callable[[], Any]) -> web.Response:
        try:
            return web.json_response({"error": [], "result": fn()})
        except KrakenError as e:
            return web.json_response({"error": [e.error]})

    def public(fn: Callable[[], Any]) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return envelope(fn)
        return handler

    def private(fn: Callable[[str, Mapping[str, str]], Any]) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw_body = await request.text()
            params = dict(parse_qsl(raw_body, keep_blank_values=True))

            def call() -> Any:
                account = sim.authenticate(request.path, request.headers.get("API-Key"),
                                           request.headers.get("API-Sign"), raw_body, params)
                return fn(account, params)
            return envelope(call)
        return handler

    def server_time() -> dict[str, Any]:
        now = sim.exchange.now_ms()
        return {"unixtime": now // 1000, "rfc1123": time.strftime(
            "%a, %d %b %y %H:%M:%S +0000", time.gmtime(now / 1000))}

    r = app.router
    r.add_get("/0/public/Time", public(server_time))
    r.add_get("/0/public/Assets", public(sim.assets))
    r.add_get("/0/public/AssetPairs", public(sim.asset_pairs))
    r.add_post("/0/private/AddOrder", private(sim.add_order))
    r.add_post("/0/private/OpenOrders", private(sim.open_orders))
    r.add_post("/0/private/CancelOrder", private(sim.cancel_order))
    r.add_post("/0/private/CancelAllOrdersAfter", private(sim.cancel_all_after))
    app.on_cleanup.append(lambda _app: _close(sim))
    return app


async def _close(sim: KrakenSim) -> None:
    sim.close()
