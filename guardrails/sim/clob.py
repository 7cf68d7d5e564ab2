"""A Polymarket CLOB simulator: the REST API py-clob-client speaks, on the existing
matching engine and record (``guardrails.sim.exchange.SimExchange``).

It is the counterparty the Polymarket venue adapter is tested against, over real HTTP,
driven by the unmodified ``py-clob-client``. As an exchange it:

* authenticates like the CLOB: L1 headers (``POLY_ADDRESS``, ``POLY_SIGNATURE`` — an
  EIP-712 ``ClobAuth`` signature —, ``POLY_TIMESTAMP``, ``POLY_NONCE``) to create or derive
  an API key (deterministic per address and nonce), L2 headers (``POLY_API_KEY``,
  ``POLY_PASSPHRASE``, ``POLY_TIMESTAMP`` and an HMAC-SHA256 ``POLY_SIGNATURE`` of
  timestamp + method + path + body under the key's secret) for everything private;
* verifies every order's EIP-712 signature (py-order-utils' ``Order`` struct under the
  "Polymarket CTF Exchange" domain of the chain's exchange, or its neg-risk exchange) and
  refuses it unless signer = maker = the authenticated address (``invalid signature``);
* refuses a duplicate order hash (the order id *is* the hash), an order whose price is
  off the market's tick, whose fee rate is not the market's, or whose GTD ``expiration``
  is less than ``min_expiry_window_ms`` ahead (the exchange's "at least three minutes in
  the future" rule); a resting GTD order expires ``security_threshold_ms`` before its
  stated expiration (the exchange's one-minute threshold);
* once an account has sent a heartbeat (``POST /v1/heartbeats``), cancels all of its
  resting orders when no further heartbeat arrives within ``heartbeat_timeout_ms``;
* matches on ``SimExchange``: the mark follows the seeded walk, an order crossing it
  fills at the mark, a resting one at its limit when the mark crosses it later; every
  order, cancel and fill is a line of the JSONL record (docs/venues.md).

Its trades carry the market's fee rate; ``POST /admin/answers`` (admin) adds raw trade
rows, midpoint values or cancel answers to its answers — another trader's match, or a
hostile answer.

Settlement: a trade is CONFIRMED as soon as it matches, unless settlement is held
(``hold_settlement``, or ``POST /admin/settlement {"hold": true}``): a trade matched
while held stays MATCHED until ``POST /admin/settlement {"trades": {id: status}}`` moves
it on — to MINED or RETRYING (still unsettled), CONFIRMED, or FAILED. A FAILED trade did
not happen: its fill is taken off the order and the balances, and the order is canceled
(``reason = settlement_failed``; whole fills only, so nothing of it is left to rest).
Each move is a ``settlement`` line of the record, replayed by the daemon.

What it does not model: partial fills, other traders, the chain itself (balances move
at the match and move back on a failure), fees taken from balances, balances limiting
orders (a sell needs no shares here), proxy/safe signature types, rewards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from aiohttp import web
from eth_account import Account
from eth_utils.crypto import keccak
from poly_eip712_structs import make_domain
from py_clob_client.config import get_contract_config
from py_clob_client.signing.eip712 import MSG_TO_SIGN, get_clob_auth_domain
from py_clob_client.signing.model import ClobAuth
from py_order_utils.model.order import Order as ClobOrderStruct
from py_order_utils.utils import normalize_address

from guardrails import logs
from guardrails.config import (
    ConfigError,
    PaperVenueConfig,
    RiskConfig,
)
from guardrails.model import Fill, Order, Side
from guardrails.sim.exchange import SimExchange, SimOrder, SimStateError
from guardrails.sim.server import Faults, Simulator

log = logging.getLogger("guardrails.sim.clob")

UNITS = Decimal(1_000_000)
"""USDC and outcome-token amounts are integers of 1e-6 (both have 6 decimals)."""

END_CURSOR = "LTE="
"""The CLOB's "no more pages" cursor (py-clob-client ``constants.END_CURSOR``)."""

AUTH_WINDOW_S = 300
"""How far an authenticated request's POLY_TIMESTAMP may be from the exchange's clock."""

MIN_EXPIRY_WINDOW_MS = 180_000
"""A GTD order must expire at least this far ahead (the exchange's "three minutes")."""

UNSETTLED = ("MATCHED", "MINED", "RETRYING")
"""Trade statuses of a match whose on-chain settlement is not final yet."""

SETTLEMENT_MOVES = {"MATCHED": ("MINED", "RETRYING", "CONFIRMED", "FAILED"),
                    "MINED": ("RETRYING", "CONFIRMED", "FAILED"),
                    "RETRYING": ("MINED", "CONFIRMED", "FAILED")}
"""trade status -> the statuses it may move to (CONFIRMED and FAILED are final)."""

_STATUS = {"open": "LIVE", "filled": "MATCHED", "canceled": "CANCELED",
           "rejected": "INVALID", "expired": "EXPIRED"}
"""SimExchange order states as the CLOB's order status strings."""


def order_hash(order: Mapping[str, Any], chain_id: int, neg_risk: bool) -> str:
    """The EIP-712 hash (the CLOB's order id) of a posted order's fields."""
    struct = ClobOrderStruct(
        salt=int(order["salt"]), maker=normalize_address(str(order["maker"])),
        signer=normalize_address(str(order["signer"])),
        taker=normalize_address(str(order["taker"])), tokenId=int(order["tokenId"]),
        makerAmount=int(order["makerAmount"]), takerAmount=int(order["takerAmount"]),
        expiration=int(order["expiration"]), nonce=int(order["nonce"]),
        feeRateBps=int(order["feeRateBps"]),
        side=0 if order["side"] in ("BUY", 0) else 1,
        signatureType=int(order["signatureType"]),
    )
    exchange = get_contract_config(chain_id, neg_risk).exchange
    domain = make_domain(name="Polymarket CTF Exchange", version="1", chainId=str(chain_id),
                         verifyingContract=normalize_address(exchange))
    return "0x" + keccak(struct.signable_bytes(domain=domain)).hex()


def _recover(digest_hex: str, signature: str) -> str:
    return str(Account._recover_hash(bytes.fromhex(digest_hex.removeprefix("0x")),
                                     signature=signature)).lower()


class ClobError(Exception):
    """A request the exchange refuses: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ClobExchange(SimExchange):
    """SimExchange behind the CLOB's API. Orders are keyed by (address, order hash)."""

    def __init__(
        self,
        market_cfg: PaperVenueConfig,
        risk: RiskConfig,
        tokens: Mapping[str, str],
        *,
        chain_id: int = 137,
        neg_risk: bool = False,
        fee_rate_bps: int = 0,
        collateral: Decimal = Decimal(10_000),
        heartbeat_timeout_ms: int = 10_000,
        min_expiry_window_ms: int = MIN_EXPIRY_WINDOW_MS,
        security_threshold_ms: int = 60_000,
        record_path: Path | None = None,
        resume: bool = False,
        market_digest: str = "",
        secret: bytes = b"guardrails clob simulator",
        hold_settlement: bool = False,
    ) -> None:
        # Set before the base replays a record (resume): _replay needs them.
        self.hold_settlement = hold_settlement
        """Trades matched while set stay MATCHED until ``settle`` moves them."""
        self._settlement: dict[str, str] = {}
        """fill (trade) id -> its status, for trades matched while settlement was held
        (absent: CONFIRMED)."""
        self.tokens = dict(tokens)
        """symbol -> token id."""
        self.symbols = {t: s for s, t in self.tokens.items()}
        super().__init__(market_cfg, risk, chain_id=chain_id, record_path=record_path,
                         resume=resume, market_digest=market_digest)
        self.neg_risk = neg_risk
        self.fee_rate_bps = fee_rate_bps
        self.collateral = collateral
        self.heartbeat_timeout_ms = heartbeat_timeout_ms
        self.min_expiry_window_ms = min_expiry_window_ms
        self.security_threshold_ms = security_threshold_ms
        self.condition_id = "0x" + hashlib.sha256(
            "|".join(sorted(self.tokens.values())).encode()).hexdigest()
        self._secret = secret
        self._creds: dict[str, tuple[str, str, str]] = {}
        """api key -> (address, secret, passphrase)."""
        self._created: set[tuple[str, int]] = set()
        self._expires_at: dict[tuple[str, str], int] = {}
        """(address, hash) -> ms at which the resting GTD order expires."""
        self._heartbeats: dict[str, int] = {}
        """address -> ms of its last heartbeat (present once heartbeats started)."""
        self._liquidity: dict[str, str] = {}
        self.heartbeat_cancels = 0
        self.injected_trades: list[Any] = []
        """Raw rows ``/data/trades`` also answers, as given (``POST /admin/answers``):
        other traders' matches, or hostile answers the adapter must refuse."""
        self.injected_mids: dict[str, Any] = {}
        """token -> the raw value ``/midpoints`` answers for it instead of the mark."""
        self.injected_cancel: list[Any] = []
        """Raw answers ``DELETE /order`` gives instead of its own, once each, in order
        (the cancel is not applied)."""
        missing = sorted(set(self._instruments) - set(self.tokens))
        if missing:
            raise ConfigError(f"clob simulator: no token id for: {', '.join(missing)}")

    # -- auth ---------------------------------------------------------------------------

    def _check_time(self, headers: Mapping[str, str]) -> None:
        try:
            ts = int(headers["POLY_TIMESTAMP"])
        except (KeyError, ValueError):
            raise ClobError(401, "Unauthorized/Invalid api key") from None
        if abs(ts - self.now_ms() // 1000) > AUTH_WINDOW_S:
            raise ClobError(401, "Unauthorized: POLY_TIMESTAMP out of window")

    def l1_address(self, headers: Mapping[str, str]) -> tuple[str, int]:
        """The address that signed the L1 ``ClobAuth`` message in ``headers``, and its nonce."""
        self._check_time(headers)
        try:
            address = normalize_address(headers["POLY_ADDRESS"])
            nonce = int(headers.get("POLY_NONCE", "0"))
            msg = ClobAuth(address=address, timestamp=headers["POLY_TIMESTAMP"], nonce=nonce,
                           message=MSG_TO_SIGN)
            digest = keccak(msg.signable_bytes(get_clob_auth_domain(self.chain_id))).hex()
            signer = _recover(digest, headers["POLY_SIGNATURE"])
        except Exception:
            raise ClobError(401, "Invalid L1 Request headers") from None
        if signer != address.lower():
            raise ClobError(401, "Invalid L1 Request headers")
        return signer, nonce

    def creds_for(self, address: str, nonce: int) -> dict[str, str]:
        """The API key of (address, nonce): derived, so create and derive agree."""
        seed = hmac.new(self._secret, f"{address}|{nonce}".encode(), hashlib.sha256).digest()
        api_key = str(uuid.UUID(bytes=seed[:16]))
        secret = base64.urlsafe_b64encode(hashlib.sha256(b"s" + seed).digest()).decode()
        passphrase = hashlib.sha256(b"p" + seed).hexdigest()
        self._creds[api_key] = (address, secret, passphrase)
        return {"apiKey": api_key, "secret": secret, "passphrase": passphrase}

    def create_api_key(self, headers: Mapping[str, str]) -> dict[str, str]:
        address, nonce = self.l1_address(headers)
        if (address, nonce) in self._created:
            raise ClobError(400, "Could not create api key")  # the client then derives it
        self._created.add((address, nonce))
        return self.creds_for(address, nonce)

    def derive_api_key(self, headers: Mapping[str, str]) -> dict[str, str]:
        address, nonce = self.l1_address(headers)
        if (address, nonce) not in self._created:
            raise ClobError(400, "Could not derive api key!")
        return self.creds_for(address, nonce)

    def l2_address(self, headers: Mapping[str, str], method: str, path: str, body: str) -> str:
        """The address of a valid L2-authenticated request, else ``ClobError(401)``."""
        self._check_time(headers)
        entry = self._creds.get(headers.get("POLY_API_KEY", ""))
        if entry is None:
            raise ClobError(401, "Unauthorized/Invalid api key")
        address, secret, passphrase = entry
        if headers.get("POLY_PASSPHRASE") != passphrase or \
                str(headers.get("POLY_ADDRESS", "")).lower() != address:
            raise ClobError(401, "Unauthorized/Invalid api key")
        message = headers["POLY_TIMESTAMP"] + method + path + body
        mac = hmac.new(base64.urlsafe_b64decode(secret), message.encode(), hashlib.sha256)
        expected = base64.urlsafe_b64encode(mac.digest()).decode()
        if not hmac.compare_digest(expected, headers.get("POLY_SIGNATURE", "")):
            raise ClobError(401, "Unauthorized/Invalid api key")
        return address

    def api_key_of(self, headers: Mapping[str, str]) -> str:
        return str(headers.get("POLY_API_KEY", ""))

    # -- clock: expiry and the heartbeat dead-man switch -----------------------------------

    def advance(self) -> None:
        super().advance()
        now = self.now_ms()
        for key, at in list(self._expires_at.items()):
            so = self._open.get(key)
            if so is None:
                self._expires_at.pop(key, None)
            elif now >= at:
                self._end(so, "expired", "expired", now)
        for address, last in list(self._heartbeats.items()):
            if now - last > self.heartbeat_timeout_ms:
                # Heartbeats stopped: every resting order of the account is canceled, and
                # the account must start heartbeating again to be protected again.
                del self._heartbeats[address]
                n = 0
                for (acct, _), so in list(self._open.items()):
                    if acct == address:
                        self._end(so, "canceled", "heartbeat_timeout", now)
                        n += 1
                self.heartbeat_cancels += n
                logs.event(log, "clob.heartbeat_timeout", account=address, canceled=n,
                           silent_ms=now - last)

    def _replay(self, row: Mapping[str, Any], market_digest: str, path: Path) -> None:
        if row.get("type") == "settlement":
            account, fill_id = str(row["account"]), str(row["fill_id"])
            fill = next((f for _, acct, f in self._fills
                         if acct == account and f.fill_id == fill_id), None)
            if fill is None:
                raise SimStateError(f"{path}: settlement of an unknown trade {fill_id}")
            self._apply_settlement(account, fill, str(row["status"]))
            return
        # An expiry or heartbeat cancel is a "cancel" line with its own result. (After a
        # restart, resting GTD orders are not expired again: the daemon is a demo.)
        if row.get("type") == "cancel" and row.get("result") == "expired":
            so = self._orders.get((str(row["account"]), str(row["coid"])))
            if so is not None:
                so.state, so.reason = "expired", "expired"
                self._open.pop((so.account, so.order.client_order_id), None)
            return
        super()._replay(row, market_digest, path)

    def _end(self, so: SimOrder, state: str, reason: str, now: int) -> None:
        so.state, so.reason = state, reason
        self._open.pop((so.account, so.order.client_order_id), None)
        self._expires_at.pop((so.account, so.order.client_order_id), None)
        self._write({"type": "cancel", "coid": so.order.client_order_id, "account": so.account,
                     "arrival_ms": now, "result": state, "state": state, "reason": reason})

    def heartbeat(self, address: str, heartbeat_id: object) -> dict[str, Any]:
        self.advance()
        now = self.now_ms()
        self._heartbeats[address] = now
        self._write({"type": "heartbeat", "account": address, "arrival_ms": now,
                     "heartbeat_id": heartbeat_id})
        return {"status": "ok", "heartbeat_id": f"hb-{address[-8:]}-{now}"}

    def _fill(self, so: SimOrder, ticks: int, liquidity: str) -> None:
        super()._fill(so, ticks, liquidity)
        if so.fills:
            fill_id = so.fills[-1].fill_id
            self._liquidity[fill_id] = liquidity
            if self.hold_settlement:
                self._settlement[fill_id] = "MATCHED"
                self._write({"type": "settlement", "fill_id": fill_id, "account": so.account,
                             "coid": so.order.client_order_id, "status": "MATCHED"})

    # -- settlement (held: tests move each trade on) ----------------------------------------

    def trade_status(self, fill_id: str) -> str:
        return self._settlement.get(fill_id, "CONFIRMED")

    def unsettled(self) -> dict[str, str]:
        """trade id -> status of every trade whose settlement is not final."""
        return {t: s for t, s in self._settlement.items() if s in UNSETTLED}

    def settle(self, moves: Mapping[str, str]) -> None:
        """Move each held trade (id -> status, ``SETTLEMENT_MOVES``); FAILED undoes its
        fill and cancels its order. ``ClobError(400)``, and nothing moved, if a trade is
        not held or a move is not allowed (CONFIRMED and FAILED are final)."""
        checked = [(*self._held_trade(fill_id, status), status)
                   for fill_id, status in moves.items()]
        for acct, fill, status in checked:
            self._write({"type": "settlement", "fill_id": fill.fill_id, "account": acct,
                         "coid": fill.client_order_id, "status": status})
            self._apply_settlement(acct, fill, status)

    def _held_trade(self, fill_id: str, status: str) -> tuple[str, Fill]:
        current = self._settlement.get(fill_id)
        if current is None:
            raise ClobError(400, f"trade {fill_id} is not under held settlement")
        if status not in SETTLEMENT_MOVES.get(current, ()):
            raise ClobError(400, f"trade {fill_id} is {current}: cannot move to {status}")
        found = next(((acct, f) for _, acct, f in self._fills if f.fill_id == fill_id), None)
        if found is None:
            raise ClobError(400, f"trade {fill_id} not found")
        return found

    def _apply_settlement(self, account: str, fill: Fill, status: str) -> None:
        self._settlement[fill.fill_id] = status
        so = self._orders.get((account, fill.client_order_id))
        if status != "FAILED" or so is None or fill not in so.fills:
            return
        # The trade did not happen: the order's matched size returns and the balances move
        # back. With whole fills nothing of the order is left, so it ends canceled.
        o, inst = so.order, self._instruments[so.order.symbol]
        ticks = inst.ticks(fill.price) or 0
        pos, cash = (account, o.symbol), (account, "cash")
        self._balances[pos] = self._balances.get(pos, 0) - o.side.sign * so.lots
        self._balances[cash] = self._balances.get(cash, 0) + o.side.sign * so.lots * ticks * inst.k
        so.fills.remove(fill)
        so.state, so.reason = "canceled", "settlement_failed"

    # -- orders -------------------------------------------------------------------------

    def post_order(self, address: str, api_key: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /order``: verify, then place on the engine. Raises ``ClobError``."""
        self.advance()
        now = self.now_ms()
        raw = body.get("order")
        if not isinstance(raw, dict):
            raise ClobError(400, "Invalid order payload")
        if body.get("owner") != api_key:
            raise ClobError(400, "the order owner has to be the owner of the API KEY")
        try:
            digest = order_hash(raw, self.chain_id, self.neg_risk)
            signer = _recover(digest, str(raw["signature"]))
            maker, claimed = str(raw["maker"]).lower(), str(raw["signer"]).lower()
            token = str(raw["tokenId"])
            maker_amt, taker_amt = int(raw["makerAmount"]), int(raw["takerAmount"])
            expiration, fee = int(raw["expiration"]), int(raw["feeRateBps"])
            side = Side.BUY if raw["side"] == "BUY" else Side.SELL
        except Exception as e:
            self._write({"type": "order", "coid": "", "account": address, "arrival_ms": now,
                         "result": "rejected", "reason": f"bad_request: {type(e).__name__}"})
            raise ClobError(400, "Invalid order payload") from None
        if signer != claimed or claimed != maker or maker != address or \
                int(raw.get("signatureType", 0)) != 0:
            self._write({"type": "order", "coid": digest, "account": address, "arrival_ms": now,
                         "result": "rejected", "reason": "bad_signature"})
            raise ClobError(400, f"invalid signature for order {digest}")
        symbol = self.symbols.get(token)
        order_type = str(body.get("orderType", "GTC"))
        reason, size, price = "", Decimal(0), Decimal(0)
        if symbol is None:
            reason = "unknown_token"
        elif maker_amt <= 0 or taker_amt <= 0:
            reason = "bad_amounts"
        else:
            shares, usdc = (taker_amt, maker_amt) if side is Side.BUY else (maker_amt, taker_amt)
            size, price = Decimal(shares) / UNITS, Decimal(usdc) / Decimal(shares)
            if fee != self.fee_rate_bps:
                reason = f"invalid fee rate ({fee}), fee rate for the market must be {self.fee_rate_bps}"
            elif order_type == "GTD" and expiration * 1000 < now + self.min_expiry_window_ms:
                reason = "expired"  # "invalid expiration": less than the minimum window ahead
            elif order_type == "GTC" and expiration != 0:
                reason = "GTC orders must not expire"
            elif order_type not in ("GTC", "GTD"):
                reason = f"order type {order_type} is not simulated"
        deadline = (expiration * 1000 - self.min_expiry_window_ms) if order_type == "GTD" \
            else 2**62
        order = Order(client_order_id=digest, symbol=symbol or token, side=side, qty=size,
                      price=price, token=0, submit_deadline_ms=deadline)
        key = (address, digest)
        if key in self._orders:
            original = self._orders[key]
            self._write(self._order_entry(order, address, now, "duplicate", original.state,
                                          original.venue_order_id))
            raise ClobError(400, f"order {digest} is invalid. Duplicated.")
        if reason:
            self._reject(order, address, now, reason, 400)
            raise ClobError(400, f"order {digest} is invalid: {reason}")
        _, out = self.place(order, address, now)
        if out.get("status") != "accepted":
            raise ClobError(400, f"order {digest} is invalid: {out.get('reason', '')}")
        so = self._orders[key]
        if so.state == "open" and order_type == "GTD":
            self._expires_at[key] = expiration * 1000 - self.security_threshold_ms
        return {"success": True, "errorMsg": "", "orderID": digest,
                "status": "matched" if so.state == "filled" else "live",
                "transactionsHashes": [], "takingAmount": "", "makingAmount": ""}

    def cancel(self, address: str, ids: list[str]) -> dict[str, Any]:  # type: ignore[override]
        """Cancel the given order hashes of ``address``: ``{canceled, not_canceled}``."""
        self.advance()
        now = self.now_ms()
        canceled: list[str] = []
        not_canceled: dict[str, str] = {}
        for oid in ids:
            so = self._orders.get((address, oid))
            if so is None:
                not_canceled[oid] = "order not found"
            elif so.state != "open":
                not_canceled[oid] = f"order already {_STATUS[so.state].lower()}"
            else:
                self._end(so, "canceled", "canceled", now)
                canceled.append(oid)
        return {"canceled": canceled, "not_canceled": not_canceled}

    def open_ids(self, address: str, token: str = "") -> list[str]:
        return [so.order.client_order_id for (acct, _), so in self._open.items()
                if acct == address and (not token or self.tokens.get(so.order.symbol) == token)]

    def order_json(self, so: SimOrder) -> dict[str, Any]:
        o = so.order
        matched = sum((f.qty for f in so.fills), Decimal(0))
        return {
            "id": o.client_order_id, "status": _STATUS.get(so.state, so.state.upper()),
            "owner": "", "maker_address": so.account, "market": self.condition_id,
            "asset_id": self.tokens.get(o.symbol, o.symbol), "side": o.side.value.upper(),
            "original_size": str(o.qty), "size_matched": str(matched), "price": str(o.price),
            "outcome": o.symbol, "expiration": str(self._expiry_s(so)), "order_type": "GTD",
            "associate_trades": [f.fill_id for f in so.fills],
            "created_at": so.arrival_ms // 1000, "reason": so.reason,
        }

    def _expiry_s(self, so: SimOrder) -> int:
        d = so.order.submit_deadline_ms
        return 0 if d >= 2**62 else (d + self.min_expiry_window_ms) // 1000

    def get_order(self, address: str, oid: str) -> dict[str, Any] | None:
        self.advance()
        so = self._orders.get((address, oid))
        return None if so is None else self.order_json(so)

    def trades(self, address: str, query: Mapping[str, str]) -> list[dict[str, Any]]:
        self.advance()
        after = int(query.get("after") or 0)
        before = int(query.get("before") or 0)
        asset = query.get("asset_id", "")
        market = query.get("market", "")
        out: list[Any] = []
        if market and market != self.condition_id:
            return out
        fee = str(self.fee_rate_bps)  # every order carries the market's rate (post_order)
        for _, acct, f in self._fills:
            ts = f.ts_ms // 1000
            token = self.tokens.get(f.symbol, f.symbol)
            if acct != address or (after and ts <= after) or (before and ts >= before) or \
                    (asset and token != asset) or (query.get("id") and query["id"] != f.fill_id):
                continue
            liquidity = self._liquidity.get(f.fill_id, "taker")
            trade = {
                "id": f.fill_id, "market": self.condition_id, "asset_id": token,
                "side": f.side.value.upper(), "size": str(f.qty), "fee_rate_bps": fee,
                "price": str(f.price), "status": self.trade_status(f.fill_id),
                "match_time": str(ts),
                "last_update": str(ts), "outcome": f.symbol, "owner": "", "maker_address": acct,
                "transaction_hash": "0x" + hashlib.sha256(f.fill_id.encode()).hexdigest(),
                "bucket_index": 0, "trader_side": liquidity.upper(),
                "taker_order_id": f.client_order_id if liquidity == "taker" else "",
                "maker_orders": [] if liquidity == "taker" else [{
                    "order_id": f.client_order_id, "maker_address": acct, "owner": "",
                    "matched_amount": str(f.qty), "price": str(f.price), "fee_rate_bps": fee,
                    "asset_id": token, "outcome": f.symbol, "side": f.side.value.upper(),
                }],
            }
            out.append(trade)
        for row in self.injected_trades:
            # Filtered as the exchange filters a trade: by its own asset and match time.
            fields = row if isinstance(row, dict) else {}
            if asset and fields.get("asset_id") != asset:
                continue
            with contextlib.suppress(TypeError, ValueError):
                if after and int(fields.get("match_time", 0)) <= after:
                    continue
            out.append(row)
        return out

    # -- market data --------------------------------------------------------------------

    def token_symbol(self, token: str) -> str:
        symbol = self.symbols.get(token)
        if symbol is None:
            raise ClobError(404, "market not found")
        return symbol

    def mid(self, token: str) -> Decimal:
        self.advance()
        symbol = self.token_symbol(token)
        return self._instruments[symbol].price(self._marks[symbol])

    def tick(self, token: str) -> Decimal:
        return self._instruments[self.token_symbol(token)].tick

    def book(self, token: str) -> dict[str, Any]:
        mid = self.mid(token)
        return {
            "market": self.condition_id, "asset_id": token, "timestamp": str(self.now_ms()),
            "hash": "", "bids": [{"price": str(mid), "size": "1000000"}],
            "asks": [{"price": str(mid), "size": "1000000"}],
            "min_order_size": "1", "tick_size": str(self.tick(token)), "neg_risk": self.neg_risk,
        }

    def market(self) -> dict[str, Any]:
        return {
            "condition_id": self.condition_id, "active": True, "closed": False,
            "accepting_orders": True, "neg_risk": self.neg_risk,
            "minimum_tick_size": str(min(i.tick for i in self._instruments.values())),
            "tokens": [{"token_id": t, "outcome": s, "price": str(self.mid(t))}
                       for s, t in self.tokens.items()],
        }

    def balance(self, address: str, asset_type: str, token: str) -> dict[str, Any]:
        self.advance()
        if asset_type == "COLLATERAL":
            unit = next(iter(self._instruments.values()))
            cash = self.collateral + unit.money(self._balances.get((address, "cash"), 0))
            amount = cash
        else:
            symbol = self.token_symbol(token)
            amount = self._instruments[symbol].qty(self._balances.get((address, symbol), 0))
        return {"balance": str(int(amount * UNITS)), "allowances": {}}


# -- HTTP --------------------------------------------------------------------------------


def build_clob_app(exchange: ClobExchange, *, admin: bool = False,
                   tick_s: float = 0.2) -> web.Application:
    """The CLOB's REST API (the paths of py-clob-client's ``endpoints.py``) on ``exchange``."""
    faults = Faults()
    app = web.Application()

    def err(e: ClobError) -> web.Response:
        return web.json_response({"error": str(e)}, status=e.status)

    def headers_of(request: web.Request) -> dict[str, str]:
        return {k.upper(): v for k, v in request.headers.items()}

    async def l2(request: web.Request) -> tuple[str, str]:
        body = await request.text()
        address = exchange.l2_address(headers_of(request), request.method, request.path, body)
        return address, body

    def guarded(handler: Any) -> Any:
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                out: web.StreamResponse = await handler(request)
                return out
            except ClobError as e:
                return err(e)
        return run

    async def ok(request: web.Request) -> web.StreamResponse:
        return web.json_response("OK")

    async def server_time(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.now_ms() // 1000)

    async def create_key(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.create_api_key(headers_of(request)))

    async def derive_key(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.derive_api_key(headers_of(request)))

    def token_q(request: web.Request) -> str:
        token = request.query.get("token_id", "")
        exchange.token_symbol(token)
        return token

    async def tick_size(request: web.Request) -> web.StreamResponse:
        return web.json_response({"minimum_tick_size": float(exchange.tick(token_q(request)))})

    async def neg_risk(request: web.Request) -> web.StreamResponse:
        token_q(request)
        return web.json_response({"neg_risk": exchange.neg_risk})

    async def fee_rate(request: web.Request) -> web.StreamResponse:
        token_q(request)
        return web.json_response({"base_fee": exchange.fee_rate_bps})

    async def midpoint(request: web.Request) -> web.StreamResponse:
        return web.json_response({"mid": str(exchange.mid(token_q(request)))})

    async def midpoints(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({
            str(p["token_id"]): exchange.injected_mids.get(str(p["token_id"]))
            or str(exchange.mid(str(p["token_id"]))) for p in body})

    async def price(request: web.Request) -> web.StreamResponse:
        return web.json_response({"price": str(exchange.mid(token_q(request)))})

    async def book(request: web.Request) -> web.StreamResponse:
        return web.json_response(exchange.book(token_q(request)))

    async def markets(request: web.Request) -> web.StreamResponse:
        return web.json_response({"data": [exchange.market()], "next_cursor": END_CURSOR,
                                  "limit": 1, "count": 1})

    async def market(request: web.Request) -> web.StreamResponse:
        if request.match_info["condition_id"] != exchange.condition_id:
            raise ClobError(404, "market not found")
        return web.json_response(exchange.market())

    async def post_order(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        try:
            body = json.loads(raw)
        except ValueError:
            raise ClobError(400, "Invalid order payload") from None
        if faults.fail_submits > 0:
            faults.fail_submits -= 1
            with contextlib.suppress(ClobError):
                if faults.fail_applies:
                    exchange.post_order(address, exchange.api_key_of(headers_of(request)), body)
            return web.json_response({"error": "injected"}, status=faults.fail_status)
        out = exchange.post_order(address, exchange.api_key_of(headers_of(request)), body)
        if faults.drop_submit_responses > 0:
            faults.drop_submit_responses -= 1
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("fault hook: response dropped after applying")
        return web.json_response(out)

    async def post_orders(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        results = []
        for body in json.loads(raw):
            try:
                results.append(exchange.post_order(
                    address, exchange.api_key_of(headers_of(request)), body))
            except ClobError as e:
                results.append({"success": False, "errorMsg": str(e), "orderID": ""})
        return web.json_response(results)

    async def cancel(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        if exchange.injected_cancel:
            return web.json_response(exchange.injected_cancel.pop(0))
        return web.json_response(exchange.cancel(address, [str(json.loads(raw)["orderID"])]))

    async def cancel_orders(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        return web.json_response(exchange.cancel(address, [str(i) for i in json.loads(raw)]))

    async def cancel_all(request: web.Request) -> web.StreamResponse:
        address, _ = await l2(request)
        return web.json_response(exchange.cancel(address, exchange.open_ids(address)))

    async def cancel_market(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        token = str(json.loads(raw or "{}").get("asset_id", ""))
        return web.json_response(exchange.cancel(address, exchange.open_ids(address, token)))

    async def get_order(request: web.Request) -> web.StreamResponse:
        address, _ = await l2(request)
        found = exchange.get_order(address, request.match_info["order_id"])
        if found is None:
            raise ClobError(404, "order not found")
        return web.json_response(found)

    async def orders(request: web.Request) -> web.StreamResponse:
        address, _ = await l2(request)
        token = request.query.get("asset_id", "")
        oid = request.query.get("id", "")
        rows = [exchange.order_json(exchange._open[(address, i)])
                for i in exchange.open_ids(address, token) if not oid or oid == i]
        return web.json_response({"data": rows, "next_cursor": END_CURSOR, "limit": len(rows),
                                  "count": len(rows)})

    async def trades(request: web.Request) -> web.StreamResponse:
        address, _ = await l2(request)
        rows = exchange.trades(address, request.query)
        return web.json_response({"data": rows, "next_cursor": END_CURSOR, "limit": len(rows),
                                  "count": len(rows)})

    async def balance(request: web.Request) -> web.StreamResponse:
        address, _ = await l2(request)
        return web.json_response(exchange.balance(
            address, request.query.get("asset_type", "COLLATERAL"),
            request.query.get("token_id", "")))

    async def balance_update(request: web.Request) -> web.StreamResponse:
        await l2(request)
        return web.json_response({})

    async def heartbeat(request: web.Request) -> web.StreamResponse:
        address, raw = await l2(request)
        body = json.loads(raw or "{}")
        return web.json_response(exchange.heartbeat(address, body.get("heartbeat_id")))

    async def set_faults(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for name in ("drop_submit_responses", "fail_submits", "fail_status"):
            if name in body:
                setattr(faults, name, int(body[name]))
        if "fail_applies" in body:
            faults.fail_applies = bool(body["fail_applies"])
        return web.json_response({"status": "ok"})

    async def set_mark(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            exchange.set_mark(str(body["symbol"]), Decimal(str(body["price"])))
        except (KeyError, ValueError, InvalidOperation) as e:
            return web.json_response({"status": "error", "reason": str(e)}, status=400)
        return web.json_response({"status": "ok"})

    async def set_answers(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if "trades" in body:
            exchange.injected_trades = list(body["trades"])
        if "mids" in body:
            exchange.injected_mids = dict(body["mids"])
        if "cancel" in body:
            exchange.injected_cancel = list(body["cancel"])
        return web.json_response({"status": "ok"})

    async def set_settlement(request: web.Request) -> web.StreamResponse:
        # {"hold": bool} holds (or stops holding) the settlement of trades matched from now
        # on; {"trades": {trade id: status}} moves held trades on. Answers the unsettled ones.
        body = await request.json()
        moves = body.get("trades", {})
        if not isinstance(moves, dict):
            raise ClobError(400, "trades must be an object of trade id -> status")
        exchange.settle({str(t): str(status) for t, status in moves.items()})
        if "hold" in body:
            exchange.hold_settlement = bool(body["hold"])
        return web.json_response({"status": "ok", "hold": exchange.hold_settlement,
                                  "unsettled": exchange.unsettled()})

    async def info(request: web.Request) -> web.StreamResponse:
        return web.json_response({**exchange.info(), "heartbeat_cancels":
                                  exchange.heartbeat_cancels})

    async def ticker(app: web.Application) -> AsyncIterator[None]:
        # The dead-man switch and GTD expiry must act while nobody is asking.
        async def tick() -> None:
            while True:
                await asyncio.sleep(tick_s)
                exchange.advance()

        task = asyncio.create_task(tick())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(ticker)
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/", ok), ("GET", "/time", server_time),
        ("POST", "/auth/api-key", create_key), ("GET", "/auth/derive-api-key", derive_key),
        ("GET", "/tick-size", tick_size), ("GET", "/neg-risk", neg_risk),
        ("GET", "/fee-rate", fee_rate), ("GET", "/midpoint", midpoint),
        ("POST", "/midpoints", midpoints), ("GET", "/price", price), ("GET", "/book", book),
        ("GET", "/markets", markets), ("GET", "/markets/{condition_id}", market),
        ("POST", "/order", post_order), ("POST", "/orders", post_orders),
        ("DELETE", "/order", cancel), ("DELETE", "/orders", cancel_orders),
        ("DELETE", "/cancel-all", cancel_all), ("DELETE", "/cancel-market-orders", cancel_market),
        ("GET", "/data/order/{order_id}", get_order), ("GET", "/data/orders", orders),
        ("GET", "/data/trades", trades), ("GET", "/balance-allowance", balance),
        ("GET", "/balance-allowance/update", balance_update),
        ("POST", "/v1/heartbeats", heartbeat), ("GET", "/v1/info", info),
    ]
    if admin:
        routes += [("POST", "/admin/faults", set_faults), ("POST", "/admin/mark", set_mark),
                   ("POST", "/admin/answers", set_answers),
                   ("POST", "/admin/settlement", set_settlement)]
    for method, path, handler in routes:
        app.router.add_route(method, path, guarded(handler))
    return app


class ClobSimulator(Simulator):
    """The CLOB simulator served in this process (tests)."""

    exchange: ClobExchange

    def __init__(self, exchange: ClobExchange, *, admin: bool = False) -> None:
        super().__init__(exchange, admin=admin)

    def build_app(self) -> web.Application:
        return build_clob_app(self.exchange, admin=self._admin)
