"""A simulator that speaks Binance's spot REST API (``guardrails venue serve --protocol binance``).

It is what the ccxt venue is tested against: the unmodified ccxt ``binance`` class, its
URLs pointed here, sends exactly the requests it would send to Binance and parses the
answers with its own code. It is a front end over the shared matching engine and record
(``guardrails.sim.exchange.SimExchange``), so marks, matching, fills, balances and
the JSONL record the chaos checker reads are the same as the HTTP simulator's.

The subset served (everything the ccxt venue calls; paths under ``/api/v3``):

* public: ``GET time``, ``GET exchangeInfo`` (``PRICE_FILTER`` = the instrument's tick,
  ``LOT_SIZE`` = its lot), ``GET ticker/bookTicker`` (bid = mark - tick, ask = mark + tick),
  ``GET ticker/24hr``, ``GET ping``;
* signed (``X-MBX-APIKEY`` + HMAC-SHA256 ``signature`` over the query string and form
  body): ``POST order`` (``LIMIT`` only; ``newOrderRespType`` ``ACK``/``RESULT``/``FULL``),
  ``GET order`` and ``DELETE order`` (by
  ``origClientOrderId`` or ``orderId``), ``GET openOrders``, ``GET allOrders``,
  ``GET myTrades`` (``orderId``, ``fromId``, ``limit``), ``GET account``.

Binance's own rules, with its error codes and messages (HTTP 400 unless noted):

* ``-2015`` (401) unknown API key; ``-1022`` bad signature;
* ``-1021`` a request that arrives after ``timestamp + recvWindow`` by the server's clock,
  or stamped 1000 ms or more ahead of it (``recvWindow`` defaults to 5000, at most
  60000: ``-1131``). This is the venue-side fence: an order admitted under a lease carries
  a window that ends at its submit deadline, so a paused sender's late order dies here.
  It is recorded as an order ``rejected`` with reason ``expired`` (``binance_code``
  -1021), nothing is stored, and a later send of the same id is decided afresh;
* ``-1121`` unknown symbol; ``-1013`` ``Filter failure: PRICE_FILTER`` / ``LOT_SIZE`` for a
  price or quantity off the tick or lot; ``-1102`` a mandatory parameter missing;
* ``-2010`` ``Duplicate order sent.`` for a ``newClientOrderId`` the account already used.
  (Binance documents uniqueness among *open* orders; this simulator refuses any reuse,
  which is stricter. The ccxt venue never relies on either: see its ``submit``.);
* ``-2013`` ``Order does not exist.`` (query), ``-2011`` ``Unknown order sent.`` (cancel of
  an unknown or no longer open order — Binance keeps no tombstone for an id it never saw).

Commission (``Commission``; none by default) is charged as Binance charges it: in the
asset received — the base asset on a BUY, the quote asset on a SELL — or, with BNB fee
payment on (``bnb_price`` set), in BNB; each trade's ``commission`` / ``commissionAsset``
in ``GET myTrades`` and in the order response's ``fills``, rounded up to 8 places, and
taken out of ``GET account``'s balances (the wallet holds a buy's quantity less its
commission).

Not simulated: partial fills, maker/taker tiers and BNB discounts, funding (balances
start at zero and may go negative), rate-limit bans, user-data streams, any endpoint not
listed. Test fault hooks
(``/admin/*``, only with ``admin=True``) drop, fail, delay or *hold* (before processing:
the request arrives late) the next order requests, and set a mark.

Credentials: ``keys`` maps API keys to their HMAC secrets (``--keys-file``: a JSON object,
never argv). With ``accept_demo_keys`` (the per-user daemon behind ``url = "embedded"``) the
well-known demo credentials of any account (``demo_credentials``) are accepted too. Each key
is its own account, named in the record by a digest of the key (``account_label``), never
the key — unless its entry is an object ``{"secret": ..., "account": "<name>"}``: every key
naming one ``account`` trades that one account (its orders, fills and balances; the record
names it ``<name>``), as an exchange account with several API keys does. ``GET account``
answers the account's ``uid`` the way Binance does (an integer, the same for every key of
the account: ``sim_uid``); ``"uid": null`` in any entry of an account leaves it out of the
answer (an exchange that reports none).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_UP, Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from guardrails.model import Fill, Order, Side
from guardrails.sim.exchange import SimExchange, SimOrder
from guardrails.sim.server import Faults, mark_handler

log = logging.getLogger("guardrails.simulator.binance")

API = "/api/v3"
DEFAULT_RECV_WINDOW_MS = 5_000
MAX_RECV_WINDOW_MS = 60_000
AHEAD_LIMIT_MS = 1_000
"""A request stamped this far (or more) ahead of the server's clock is refused."""
DEMO_KEY_PREFIX = "grdemo"

_STATUS = {"open": "NEW", "filled": "FILLED", "canceled": "CANCELED", "rejected": "REJECTED",
           "expired": "EXPIRED"}


def demo_credentials(account: str) -> tuple[str, str]:
    """The well-known (api key, secret) of ``account`` on the demo exchange: derived from
    the account id, so every instance of one account is one exchange account. It holds no
    funds and guards nothing; it exists so ``make run`` needs no credentials."""
    digest = hashlib.sha256(f"guardrails demo binance account|{account}".encode()).hexdigest()
    api_key = f"{DEMO_KEY_PREFIX}{digest[:40]}"
    return api_key, _demo_secret(api_key)


def _demo_secret(api_key: str) -> str:
    return hashlib.sha256(f"guardrails demo binance secret|{api_key}".encode()).hexdigest()


def account_label(api_key: str) -> str:
    """The record's name for the account of ``api_key`` (a digest: keys are never written)."""
    return "k" + hashlib.sha256(api_key.encode()).hexdigest()[:20]


def sim_uid(account: str) -> int:
    """The ``uid`` ``GET account`` answers for the account named ``account`` in the record
    (a positive integer, as Binance's; derived, so it is stable across restarts)."""
    digest = hashlib.sha256(f"guardrails sim binance uid|{account}".encode()).hexdigest()
    return int(digest[:8], 16) + 1


_ACCOUNT_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class SimKey:
    """One API key of the simulator: its secret, the account it trades (the record's name
    for it) and whether that account's ``GET account`` answer carries a ``uid``."""

    secret: str
    account: str
    has_uid: bool = True

    def __repr__(self) -> str:
        return f"SimKey(account={self.account!r}, has_uid={self.has_uid})"


def parse_keys(data: Mapping[str, Any], where: str = "keys") -> dict[str, SimKey]:
    """API key -> ``SimKey`` from ``{key: secret}`` or ``{key: {"secret", "account"?,
    "uid"?: null}}`` entries (module doc). ``ValueError`` naming ``where`` otherwise."""
    out: dict[str, SimKey] = {}
    for api_key, entry in data.items():
        if isinstance(entry, str):
            out[api_key] = SimKey(entry, account_label(api_key))
            continue
        if not isinstance(entry, Mapping) or not isinstance(entry.get("secret"), str) \
                or not set(entry) <= {"secret", "account", "uid"} \
                or entry.get("uid") is not None:
            raise ValueError(f"{where}: an entry must be a secret string or an object "
                             '{"secret": str, "account": name, "uid": null} (account and '
                             "uid optional)")
        name = entry.get("account")
        if name is not None and not (isinstance(name, str) and _ACCOUNT_NAME_RE.fullmatch(name)):
            raise ValueError(f"{where}: account names are 1-64 of A-Z a-z 0-9 _ . -")
        out[api_key] = SimKey(entry["secret"], name or account_label(api_key),
                              has_uid="uid" not in entry)
    return out


def symbol_id(symbol: str) -> str:
    """Binance's id of an instrument: ``BTC/USDT`` (or ``BTC-USDT``) -> ``BTCUSDT``."""
    return symbol.replace("/", "").replace("-", "").upper()


def assets(symbol: str) -> tuple[str, str]:
    """(base, quote) asset codes of an instrument written ``BASE/QUOTE`` or ``BASE-QUOTE``."""
    sep = "/" if "/" in symbol else "-"
    base, _, quote = symbol.partition(sep)
    if not base or not quote:
        raise ValueError(f"instrument {symbol!r}: write it BASE/QUOTE (e.g. BTC/USDT)")
    return base.upper(), quote.upper()


def fmt8(d: Decimal) -> str:
    """A decimal as Binance writes it: eight places (more only if the value needs them)."""
    exp = d.as_tuple().exponent
    if isinstance(exp, int) and exp < -8:
        return format(d, "f")
    return format(d.quantize(Decimal("1e-8")), "f")


@dataclass(frozen=True)
class Commission:
    """What the simulated exchange charges per trade: ``rate`` of the trade (0.001 is
    Binance's standard spot rate), in the asset received — or, with ``bnb_price`` (the
    quote price of BNB) set, the same value in BNB, as with Binance's "use BNB for fees"."""

    rate: Decimal = Decimal(0)
    bnb_price: Decimal | None = None

    def of(self, f: Fill) -> tuple[Decimal, str]:
        """(commission, commissionAsset) of fill ``f``, rounded up to 8 places."""
        base, quote = assets(f.symbol)
        if self.bnb_price is not None:
            amount, asset = f.qty * f.price * self.rate / self.bnb_price, "BNB"
        elif f.side is Side.BUY:
            amount, asset = f.qty * self.rate, base
        else:
            amount, asset = f.qty * f.price * self.rate, quote
        return amount.quantize(Decimal("1e-8"), rounding=ROUND_UP), asset


class BinanceError(Exception):
    """An answer in Binance's error shape: ``{"code": code, "msg": msg}``."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status

    def response(self) -> web.Response:
        return web.json_response({"code": self.code, "msg": self.msg}, status=self.status)


def _missing(name: str) -> BinanceError:
    return BinanceError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


@dataclass
class BinanceFaults(Faults):
    """The HTTP simulator's fault hooks, plus holding a request before it is processed."""

    hold_submits: int = 0
    """Wait ``hold_seconds`` *before* processing the next order requests: they arrive late."""
    hold_seconds: float = 0.0


def make_exchange(market_cfg: Any, risk: Any, **kw: Any) -> SimExchange:
    """The matching engine as this front end needs it: fill ids ``<SYMBOLID>-<trade id>``,
    the same id the ccxt venue derives from a Binance trade (symbol + per-symbol id)."""
    ex = SimExchange(market_cfg, risk, fill_prefix=symbol_id, **kw)
    quotes = {assets(s)[1] for s in ex.instruments}
    if len(quotes) != 1:
        raise ValueError(f"the Binance simulator needs one quote asset for every instrument, "
                         f"got {sorted(quotes)}")
    return ex


class BinanceSim:
    """Binance's request rules over one ``SimExchange``."""

    def __init__(self, exchange: SimExchange, keys: Mapping[str, Any] | None = None, *,
                 accept_demo_keys: bool = False, commission: Commission | None = None) -> None:
        """``keys``: API key -> secret or ``SimKey`` (or a ``parse_keys`` entry)."""
        self.exchange = exchange
        self.commission = commission or Commission()
        self._keys = {k: v if isinstance(v, SimKey) else parse_keys({k: v})[k]
                      for k, v in (keys or {}).items()}
        self._no_uid = {k.account for k in self._keys.values() if not k.has_uid}
        self._accept_demo = accept_demo_keys
        self._by_id = {symbol_id(s): s for s in exchange.instruments}
        self._quote = assets(next(iter(exchange.instruments)))[1]

    def __repr__(self) -> str:
        return f"BinanceSim(keys={len(self._keys)}, demo={self._accept_demo})"

    # -- authentication -----------------------------------------------------------------

    def _key(self, api_key: str) -> SimKey | None:
        if api_key in self._keys:
            return self._keys[api_key]
        if self._accept_demo and api_key.startswith(DEMO_KEY_PREFIX):
            return SimKey(_demo_secret(api_key), account_label(api_key))
        return None

    def authenticate(self, api_key: str | None, raw_query: str, raw_body: str,
                     params: Mapping[str, str]) -> str:
        """The account label of a correctly signed, timely request; else ``BinanceError``."""
        key = self._key(api_key or "")
        if key is None:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        secret = key.secret
        signature = params.get("signature", "")
        payload = "&".join(p for p in (_without_signature(raw_query), _without_signature(raw_body))
                           if p)
        expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not signature or not hmac.compare_digest(expected, signature.lower()):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        self.check_window(params)
        return key.account

    def check_window(self, params: Mapping[str, str]) -> tuple[int, int]:
        """(timestamp, recvWindow) of a request that is inside its window now."""
        timestamp = _int(params, "timestamp")
        window = _int(params, "recvWindow", DEFAULT_RECV_WINDOW_MS)
        if window > MAX_RECV_WINDOW_MS or window <= 0:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        now = self.exchange.now_ms()
        if timestamp >= now + AHEAD_LIMIT_MS:
            raise BinanceError(-1021, "Timestamp for this request was 1000ms ahead of the "
                                      "server's time.")
        if now - timestamp > window:
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return timestamp, window

    # -- helpers ------------------------------------------------------------------------

    def _symbol(self, params: Mapping[str, str], *, required: bool = True) -> str | None:
        raw = params.get("symbol")
        if not raw:
            if required:
                raise _missing("symbol")
            return None
        sym = self._by_id.get(raw.upper())
        if sym is None:
            raise BinanceError(-1121, "Invalid symbol.")
        return sym

    def _order_json(self, so: SimOrder) -> dict[str, Any]:
        o = so.order
        filled = sum((f.qty for f in so.fills), Decimal(0))
        quote = sum((f.qty * f.price for f in so.fills), Decimal(0))
        return {
            "symbol": symbol_id(o.symbol), "orderId": _order_number(so), "orderListId": -1,
            "clientOrderId": o.client_order_id, "price": fmt8(o.price),
            "origQty": fmt8(o.qty), "executedQty": fmt8(filled),
            "cummulativeQuoteQty": fmt8(quote), "status": _STATUS.get(so.state, "REJECTED"),
            "timeInForce": "GTC", "type": "LIMIT", "side": o.side.value.upper(),
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": so.arrival_ms,
            "updateTime": so.fills[-1].ts_ms if so.fills else so.arrival_ms,
            "isWorking": True, "workingTime": so.arrival_ms,
            "origQuoteOrderQty": "0.00000000", "selfTradePreventionMode": "NONE",
        }

    def _commission_json(self, f: Fill) -> dict[str, str]:
        amount, asset = self.commission.of(f)
        return {"commission": fmt8(amount), "commissionAsset": asset}

    def _trade_json(self, so: SimOrder, f: Fill) -> dict[str, Any]:
        return {
            "symbol": symbol_id(f.symbol), "id": trade_number(f.fill_id),
            "orderId": _order_number(so), "orderListId": -1, "price": fmt8(f.price),
            "qty": fmt8(f.qty), "quoteQty": fmt8(f.qty * f.price), **self._commission_json(f),
            "time": f.ts_ms, "isBuyer": f.side is Side.BUY, "isMaker": False,
            "isBestMatch": True,
        }

    def _find(self, account: str, params: Mapping[str, str], symbol: str) -> SimOrder | None:
        coid = params.get("origClientOrderId")
        if coid:
            so = self.exchange.order(account, coid)
        elif params.get("orderId"):
            number = _int(params, "orderId")
            so = next((o for o in self.exchange.orders_of(account)
                       if _order_number(o) == number), None)
        else:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, "
                                      "but both were empty/null!")
        if so is None or so.order.symbol != symbol or not so.venue_order_id:
            return None
        return so

    # -- endpoints ----------------------------------------------------------------------

    def exchange_info(self) -> dict[str, Any]:
        symbols = []
        for sym, inst in self.exchange.instruments.items():
            base, quote = assets(sym)
            symbols.append({
                "symbol": symbol_id(sym), "status": "TRADING", "baseAsset": base,
                "baseAssetPrecision": 8, "quoteAsset": quote, "quotePrecision": 8,
                "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
                "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER"], "icebergAllowed": False,
                "ocoAllowed": False, "otoAllowed": False, "quoteOrderQtyMarketAllowed": False,
                "allowTrailingStop": False, "cancelReplaceAllowed": False,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": fmt8(inst.tick),
                     "maxPrice": "1000000000.00000000", "tickSize": fmt8(inst.tick)},
                    {"filterType": "LOT_SIZE", "minQty": fmt8(inst.lot),
                     "maxQty": "9000000000.00000000", "stepSize": fmt8(inst.lot)},
                ],
                "permissions": [], "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "NONE",
                "allowedSelfTradePreventionModes": ["NONE"],
            })
        return {
            "timezone": "UTC", "serverTime": self.exchange.now_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                 "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                 "limit": 100},
            ],
            "exchangeFilters": [], "symbols": symbols,
        }

    def _symbols_param(self, params: Mapping[str, str]) -> list[str]:
        if params.get("symbols"):
            try:
                ids = json.loads(params["symbols"])
            except ValueError:
                raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.") \
                    from None
            if not isinstance(ids, list):
                raise BinanceError(-1100, "Illegal characters found in parameter 'symbols'.")
            out = []
            for i in ids:
                sym = self._by_id.get(str(i).upper())
                if sym is None:
                    raise BinanceError(-1121, "Invalid symbol.")
                out.append(sym)
            return out
        one = self._symbol(params, required=False)
        return [one] if one else list(self.exchange.instruments)

    def book_ticker(self, params: Mapping[str, str]) -> Any:
        rows = []
        for sym in self._symbols_param(params):
            tick = self.exchange.instruments[sym].tick
            mark = self.exchange.mark(sym)
            rows.append({"symbol": symbol_id(sym), "bidPrice": fmt8(max(mark - tick, tick)),
                         "bidQty": "1.00000000", "askPrice": fmt8(mark + tick),
                         "askQty": "1.00000000"})
        return rows[0] if params.get("symbol") else rows

    def ticker_24hr(self, params: Mapping[str, str]) -> Any:
        now = self.exchange.now_ms()
        rows = []
        for book in (self.book_ticker({**params, "symbol": ""}) if not params.get("symbol")
                     else [self.book_ticker(params)]):
            mark = fmt8(self.exchange.mark(self._by_id[book["symbol"]]))
            rows.append({**book, "priceChange": "0.00000000", "priceChangePercent": "0.000",
                         "weightedAvgPrice": mark, "prevClosePrice": mark, "lastPrice": mark,
                         "lastQty": "0.00000000", "openPrice": mark, "highPrice": mark,
                         "lowPrice": mark, "volume": "0.00000000", "quoteVolume": "0.00000000",
                         "openTime": now - 86_400_000, "closeTime": now, "firstId": -1,
                         "lastId": -1, "count": 0})
        return rows[0] if params.get("symbol") else rows

    def parse_order(self, params: Mapping[str, str]) -> Order:
        """The order a ``POST order`` asks for (its window already checked)."""
        symbol = self._symbol(params)
        assert symbol is not None
        side = params.get("side", "").upper()
        if side not in ("BUY", "SELL"):
            raise _missing("side")
        kind = params.get("type", "").upper()
        if kind != "LIMIT":
            raise BinanceError(-1116, "Invalid orderType.")
        if params.get("timeInForce", "GTC").upper() != "GTC":
            raise BinanceError(-1115, "Invalid timeInForce.")
        qty, price = _decimal(params, "quantity"), _decimal(params, "price")
        timestamp = _int(params, "timestamp")
        window = _int(params, "recvWindow", DEFAULT_RECV_WINDOW_MS)
        coid = params.get("newClientOrderId") or ("sim" + secrets.token_hex(10))
        return Order(client_order_id=coid, symbol=symbol, side=Side(side.lower()), qty=qty,
                     price=price, token=0, submit_deadline_ms=timestamp + window)

    def new_order(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        order = self.parse_order(params)
        inst = self.exchange.instruments[order.symbol]
        if inst.ticks(order.price) is None:
            self.exchange.refuse(order, account, "off_tick", binance_code=-1013)
            raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        if inst.lots(order.qty) is None:
            self.exchange.refuse(order, account, "off_lot", binance_code=-1013)
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        status, out = self.exchange.place(order, account, self.exchange.now_ms())
        if out.get("duplicate"):
            raise BinanceError(-2010, "Duplicate order sent.")
        so = self.exchange.order(account, order.client_order_id)
        if status != 200 or so is None:
            raise BinanceError(-2010, f"Order rejected: {out.get('reason', 'rejected')}")
        kind = params.get("newOrderRespType", "FULL").upper()
        if kind == "ACK":
            return {"symbol": symbol_id(so.order.symbol), "orderId": _order_number(so),
                    "orderListId": -1, "clientOrderId": so.order.client_order_id,
                    "transactTime": so.arrival_ms}
        body = self._order_json(so)
        body["transactTime"] = so.arrival_ms
        if kind == "RESULT":
            return body
        body["fills"] = [
            {"price": fmt8(f.price), "qty": fmt8(f.qty), **self._commission_json(f),
             "tradeId": trade_number(f.fill_id)}
            for f in so.fills
        ]
        return body

    def query_order(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        symbol = self._symbol(params)
        assert symbol is not None
        so = self._find(account, params, symbol)
        if so is None:
            raise BinanceError(-2013, "Order does not exist.")
        return self._order_json(so)

    def cancel_order(self, account: str, params: Mapping[str, str]) -> dict[str, Any]:
        symbol = self._symbol(params)
        assert symbol is not None
        so = self._find(account, params, symbol)
        if so is None or so.state != "open":
            raise BinanceError(-2011, "Unknown order sent.")
        self.exchange.cancel_order(account, so.order.client_order_id, self.exchange.now_ms())
        body = self._order_json(so)
        body["origClientOrderId"] = so.order.client_order_id
        body["clientOrderId"] = params.get("newClientOrderId") or ("cxl" + secrets.token_hex(8))
        body["transactTime"] = self.exchange.now_ms()
        return body

    def open_orders(self, account: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(params, required=False)
        return [self._order_json(so) for so in self.exchange.orders_of(account)
                if so.state == "open" and (symbol is None or so.order.symbol == symbol)]

    def all_orders(self, account: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        limit = min(max(_int(params, "limit", 500), 1), 1000)
        rows = [self._order_json(so) for so in self.exchange.orders_of(account)
                if so.order.symbol == symbol and so.venue_order_id]
        return rows[-limit:]

    def my_trades(self, account: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        limit = min(max(_int(params, "limit", 500), 1), 1000)
        from_id = _int(params, "fromId", -1)
        order_id = _int(params, "orderId", -1)
        rows = [self._trade_json(so, f) for so, f in self.exchange.fills_of(account)
                if f.symbol == symbol and order_id in (-1, _order_number(so))]
        if from_id >= 0:
            return [r for r in rows if r["id"] >= from_id][:limit]
        return rows[-limit:]

    def account(self, account: str) -> dict[str, Any]:
        held = self.exchange.balances(account)["balances"]
        totals: dict[str, Decimal] = {}
        for name, value in held.items():
            asset = self._quote if name == "cash" else assets(name)[0]
            totals[asset] = totals.get(asset, Decimal(0)) + Decimal(value)
        for _, f in self.exchange.fills_of(account):
            amount, asset = self.commission.of(f)
            if amount:
                totals[asset] = totals.get(asset, Decimal(0)) - amount
        answer: dict[str, Any] = {
            "makerCommission": int(self.commission.rate * 10_000),
            "takerCommission": int(self.commission.rate * 10_000), "buyerCommission": 0,
            "sellerCommission": 0, "canTrade": True, "canWithdraw": False, "canDeposit": False,
            "brokered": False, "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": self.exchange.now_ms(), "accountType": "SPOT",
            "balances": [{"asset": a, "free": fmt8(v), "locked": "0.00000000"}
                         for a, v in sorted(totals.items())],
            "permissions": ["SPOT"],
        }
        if account not in self._no_uid:
            answer["uid"] = sim_uid(account)
        return answer


def trade_number(fill_id: str) -> int:
    """Binance's numeric trade id of an engine fill id ``<SYMBOLID>-<n>``."""
    return int(fill_id.rpartition("-")[2])


def _order_number(so: SimOrder) -> int:
    return int(so.venue_order_id.rpartition("-")[2] or 0)


def _without_signature(raw: str) -> str:
    return "&".join(p for p in raw.split("&") if p and not p.startswith("signature="))


def _int(params: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        if default is None:
            raise _missing(name)
        return default
    try:
        return int(raw)
    except ValueError:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^[0-9]{1,20}$'.") from None


_PLAIN_DECIMAL = re.compile(r"[0-9]{1,20}(\.[0-9]{1,20})?")  # fullmatch: no trailing newline


def _decimal(params: Mapping[str, str], name: str) -> Decimal:
    raw = params.get(name)
    if not raw:
        raise _missing(name)
    if not _PLAIN_DECIMAL.fullmatch(raw):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal "
                                  "range is '^([0-9]{1,20})(\\.[0-9]{1,20})?$'.")
    try:
        d = Decimal(raw)
    except InvalidOperation:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.") from None
    if not d.is_finite() or d <= 0:
        raise BinanceError(-1013, f"Invalid {name}.")
    return d


# -- HTTP ----------------------------------------------------------------------------------


def build_binance_app(sim: BinanceSim, *, admin: bool = False) -> web.Application:
    """The aiohttp application: Binance's paths, plus ``/v1/info`` (daemon health) and,
    with ``admin``, the fault hooks."""
    faults = BinanceFaults()
    ex = sim.exchange
    app = web.Application()

    async def params_of(request: web.Request) -> tuple[str, str, dict[str, str]]:
        raw_query = request.raw_path.partition("?")[2]
        raw_body = await request.text() if request.can_read_body else ""
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        params.update(parse_qsl(raw_body, keep_blank_values=True))
        return raw_query, raw_body, params

    def public(fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            _, _, params = await params_of(request)
            try:
                return web.json_response(fn(params))
            except BinanceError as e:
                return e.response()
        return handler

    def signed(fn: Any) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            raw_query, raw_body, params = await params_of(request)
            try:
                account = sim.authenticate(request.headers.get("X-MBX-APIKEY"), raw_query,
                                           raw_body, params)
                return web.json_response(fn(account, params))
            except BinanceError as e:
                return e.response()
        return handler

    async def new_order(request: web.Request) -> web.StreamResponse:
        raw_query, raw_body, params = await params_of(request)
        if faults.hold_submits > 0:
            faults.hold_submits -= 1
            await asyncio.sleep(faults.hold_seconds)  # in flight: it arrives late
        account = ""
        try:
            account = sim.authenticate(request.headers.get("X-MBX-APIKEY"), raw_query,
                                       raw_body, params)
        except BinanceError as e:
            _record_refusal(sim, account or _label_of(request), params, e)
            return e.response()

        def apply() -> tuple[int, dict[str, Any]]:
            try:
                return 200, sim.new_order(account, params)
            except BinanceError as e:
                return e.status, {"code": e.code, "msg": e.msg}

        return await faults.answer(request, apply, {
            "code": -1001, "msg": "Internal error; unable to process your request. Please "
                                  "try again."})

    async def info(request: web.Request) -> web.StreamResponse:
        return web.json_response({**ex.info(), "protocol": "binance"})

    async def now(request: web.Request) -> web.StreamResponse:
        return web.json_response({"now_ms": ex.now_ms()})

    async def set_faults(request: web.Request) -> web.StreamResponse:
        faults.update(await request.json())
        return web.json_response({"status": "ok"})

    r = app.router
    r.add_get(API + "/ping", public(lambda p: {}))
    r.add_get(API + "/time", public(lambda p: {"serverTime": ex.now_ms()}))
    r.add_get(API + "/exchangeInfo", public(lambda p: sim.exchange_info()))
    r.add_get(API + "/ticker/bookTicker", public(sim.book_ticker))
    r.add_get(API + "/ticker/24hr", public(sim.ticker_24hr))
    r.add_post(API + "/order", new_order)
    r.add_get(API + "/order", signed(sim.query_order))
    r.add_delete(API + "/order", signed(sim.cancel_order))
    r.add_get(API + "/openOrders", signed(sim.open_orders))
    r.add_get(API + "/allOrders", signed(sim.all_orders))
    r.add_get(API + "/myTrades", signed(sim.my_trades))
    r.add_get(API + "/account", signed(lambda account, p: sim.account(account)))
    r.add_get("/v1/info", info)
    r.add_get("/v1/time", now)
    if admin:
        r.add_post("/admin/faults", set_faults)
        r.add_post("/admin/mark", mark_handler(ex))
    return app


def _label_of(request: web.Request) -> str:
    key = request.headers.get("X-MBX-APIKEY")
    return account_label(key) if key else ""


def _record_refusal(sim: BinanceSim, account: str, params: Mapping[str, str],
                    e: BinanceError) -> None:
    """An order request refused at the door goes into the record: a late one (``-1021``)
    as an order ``rejected`` / ``expired`` with its window, anything else unparsed."""
    if e.code == -1021:
        try:
            order = sim.parse_order(params)
        except BinanceError:
            order = None
        if order is not None:
            sim.exchange.refuse(order, account, "expired", binance_code=e.code,
                                timestamp=_int(params, "timestamp"),
                                recv_window=_int(params, "recvWindow", DEFAULT_RECV_WINDOW_MS))
            return
    sim.exchange.refuse_request(params.get("newClientOrderId", ""), account,
                                f"binance {e.code}: {e.msg}")


def load_keys(path: str) -> dict[str, SimKey]:
    """``--keys-file``: a JSON object of API key -> secret or key entry (``parse_keys``;
    kept out of argv and logs)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"--keys-file {path}: {e.strerror or type(e).__name__}") from None
    except ValueError:
        raise ValueError(f"--keys-file {path}: not JSON") from None
    if not isinstance(data, dict):
        raise ValueError(f"--keys-file {path}: expected a JSON object of api key -> secret strings")
    return parse_keys(data, f"--keys-file {path}")
