"""The ccxt venue: one account at a real exchange, through ``ccxt.async_support``.

Invariant upheld: *every error is classified, and an unknown outcome is never treated as
a rejection*. A submit is sent once and its result is

* ``Accepted`` — the exchange acknowledged the order (or, for a client order id this
  venue already sent, the exchange's record of it was found: never a second order);
* ``Rejected`` — certain not to execute: refused before sending (off tick/lot as ccxt
  would format it, permit deadline already passed) or an exchange answer that means
  "not accepted": ``InvalidOrder``, ``InsufficientFunds``, ``BadSymbol``, ``BadRequest``,
  ``AuthenticationError``, ``PermissionDenied``, ``InvalidNonce`` (Binance ``-1021``: the
  request arrived outside its ``recvWindow``), ``NotSupported``, ``ArgumentsRequired``;
* ``Unknown`` — anything else: ``NetworkError`` and its kinds (``RequestTimeout``,
  ``ExchangeNotAvailable``, ``DDoSProtection``, rate limits), a 5xx, an ``ExchangeError``
  ccxt could not place, any other exception. The ledger keeps the reservation and
  reconciliation looks the order up by client order id.

Exactness: amounts and prices go to ccxt as decimal strings and ccxt's own
``amount_to_precision`` / ``price_to_precision`` must give back exactly the same decimal —
ccxt silently rounds a price and truncates an amount, so an order it would change is
refused here instead (``off_tick`` / ``off_lot``). ccxt parses numbers as strings
(``exchange.number = str``), so nothing the exchange says passes through a float.

Fees: a trade's fee counts in the fill (``Fill.fee``, quote currency) when it is in the
market's quote currency (Binance: a sell's commission), or in its base currency (Binance:
a buy's commission, charged in the asset received) valued at the trade's own price,
exactly. The ledger's position stays the traded quantity; the wallet holds the quantity
less the base fee. A fee in any other currency (BNB fee payment) cannot be valued
exactly: the fill still applies without it, carrying the fee as ``Fill.fees_uncounted``
(the ledger counts such fills in the trading day's ``fees_uncounted``, which status, the
dashboard and doctor show), and ``venue.ccxt.fee_not_counted`` (WARNING) names the
currency, the amount and the client order id.

Venue-side fences (per exchange; docs/venues.md has the table):

* Binance: every signed order carries ``timestamp`` (the exchange's clock, from the
  measured offset) and ``recvWindow = submit_deadline - now``, so the request dies at
  the exchange if it arrives after the order's submit deadline (never later than the
  lease's). A deadline already passed is refused before sending.
* Elsewhere no submit-time fence is used; the gate's deadline check still applies.
* The dead-man switch, where ccxt's class has ``cancelAllOrdersAfter`` (Kraken, OKX,
  Hyperliquid...; not Binance spot, which has no such endpoint, nor Bybit, whose DCP is
  bound to a websocket session): ``begin_term``
  arms it (on taking the lease, before reconciliation) with ``dead_man_timeout`` (default
  4 lease TTLs, rounded up to the exchange's whole seconds and at least its minimum);
  ``term_service`` re-arms it every quarter of that while active, so if this process
  pauses, dies or is partitioned from the exchange, the exchange cancels every resting
  order of the account at most one timeout after the last refresh. At a graceful end of
  the term (``term_service`` cancelled) it is disarmed, except when the service was ever
  stalled for longer than a lease TTL in this term (a sleep that overran, or no
  successful refresh for that long): a process that was paused may no longer be the
  holder, and the switch is account-wide, so it then leaves the switch to whoever holds
  the lease now. A failed arm in ``begin_term`` raises ``VenueError`` (the runtime
  retries; nothing trades unfenced); a failed refresh is logged and retried.

Lookups are by client order id (Binance ``origClientOrderId``) in each configured
symbol (the order's symbol first when this process sent it); fills come from
``fetch_my_trades`` with ``fromId`` per symbol, the cursor being ``SYMBOLID:next_id``
pairs, kept in Redis (``AccountKeys.venue_cursor``) once the runtime passes it back, so a
new term resumes there; a fill's id is ``<SYMBOLID>-<trade id>``. Credentials come from the environment
or a 0600 JSON file and appear in no log line, repr, exception text or Redis key; with
``url = "embedded"`` and none configured, the account's well-known demo credentials of
the bundled simulator are used.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import os
import re
import stat
import time
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import ccxt.async_support as ccxt_async
import redis.asyncio as aioredis
from ccxt.base import errors as cx
from ccxt.base.decimal_to_precision import TICK_SIZE
from redis.exceptions import RedisError

from guardrails import logs, redacted
from guardrails.config import CcxtVenueConfig, LeaseConfig, RiskConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import Fill, Order, Side
from guardrails.venues.base import (
    Accepted,
    ExchangeAccount,
    FillBatch,
    Rejected,
    SubmitResult,
    Unknown,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
    venue_number,
)

log = logging.getLogger("guardrails.venue.ccxt")

EMBEDDED = "embedded"
RECV_WINDOW_EXCHANGES = frozenset({"binance"})
"""Exchanges whose signed requests carry ``timestamp`` + ``recvWindow`` (the submit fence)."""
TRADES_PAGE = 1000
_FEE_WARNED_MAX = 4096
"""Fill ids remembered so an uncounted fee is logged once per fill, not once per read."""
DEAD_MAN_LEASE_TTLS = 4
"""Default dead-man countdown, in lease TTLs."""
DEAD_MAN_REFRESHES = 4
"""Refreshes per countdown: three can be lost before the exchange cancels."""
DEAD_MAN_LIMITS_S = {"okx": (10, 120), "kraken": (1, 86_400), "hyperliquid": (5, 86_400)}
"""(min, max) countdown seconds an exchange accepts (its API documentation); others (1, 86400)."""
DEAD_MAN_NOT_A_COUNTDOWN = frozenset({"bybit"})
"""ccxt has ``cancelAllOrdersAfter`` but it is not a REST countdown: Bybit's DCP cancels
when a private *websocket* session drops, and this adapter holds none."""

UID_EXCHANGES = frozenset({"binance"})
"""Exchanges whose account id the venue asks for at start (Binance: ``GET /api/v3/account``
answers ``uid``). Elsewhere the account is identified by a digest of its API key."""
_UID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_REJECTING: tuple[type[BaseException], ...] = (
    cx.InvalidOrder, cx.InsufficientFunds, cx.BadSymbol, cx.BadRequest,
    cx.AuthenticationError, cx.PermissionDenied, cx.AccountSuspended, cx.InvalidNonce,
    cx.NotSupported, cx.ArgumentsRequired,
)
"""Answers meaning the exchange did not accept the order (checked after the duplicate case)."""

_STATES = {
    "open": VenueOrderState.OPEN,
    "closed": VenueOrderState.FILLED,
    "canceled": VenueOrderState.CANCELED,
    "cancelled": VenueOrderState.CANCELED,
    "expired": VenueOrderState.EXPIRED,
    "rejected": VenueOrderState.REJECTED,
}


def classify_submit_error(e: BaseException) -> SubmitResult:
    """A ccxt exception from ``create_order`` as a result: the one place they are read.
    ``Unknown`` unless the exception certainly means "not accepted"."""
    if isinstance(e, cx.InvalidNonce):
        # ccxt files it under NetworkError, but it is the exchange's own answer: Binance
        # -1021, the request arrived outside its recvWindow and was not processed.
        return Rejected(f"expired: {_brief(e)}")
    if isinstance(e, cx.NetworkError):  # RequestTimeout, ExchangeNotAvailable...: no verdict
        return Unknown(f"no answer: {type(e).__name__}")
    if isinstance(e, _REJECTING):
        return Rejected(f"{type(e).__name__}: {_brief(e)}")
    return Unknown(f"{type(e).__name__}: {_brief(e)}")


def _brief(e: BaseException) -> str:
    """An exception's message, short and masked: ccxt's carry the exchange's answer and
    the request URL (with its signature), so it is masked before it is cut."""
    return redacted.excerpt(e, 160)


def _dec(value: Any, what: str) -> Decimal:
    try:
        return venue_number(value, what)
    except ValueError as e:
        raise VenueError(f"ccxt venue: {e}") from None


def fee_in_quote(trade: dict[str, Any], *, base: str, quote: str,
                 price: Decimal) -> tuple[Decimal, list[tuple[str, str]]]:
    """(fee in the quote currency, fees it could not value) of a ccxt trade.

    A fee in the quote currency counts as it is; a fee in the base currency (Binance
    charges a buy's commission in the asset received) counts at the trade's own price,
    ``cost x price``, exact. A fee in any other currency (BNB with BNB fee payment on), or
    a non-zero cost with no currency or one that is not a number, cannot be valued
    exactly: it is returned as ``(currency, amount text)`` for the caller to report and
    is not counted; the fill itself still applies. A zero fee is nothing, in any currency;
    a negative one (a rebate) counts as zero, so a fee never lowers the recorded loss.
    ccxt's ``fees`` (one entry per currency) is read when present, else ``fee``."""
    entries = trade.get("fees") or [trade.get("fee") or {}]
    total = Decimal(0)
    uncounted: list[tuple[str, str]] = []
    for entry in entries:
        cost, currency = (entry or {}).get("cost"), (entry or {}).get("currency")
        if cost is None:
            continue
        try:
            amount = _dec(cost, "fee")
        except VenueError:
            uncounted.append((str(currency or "unknown"), str(cost)[:40]))
            continue
        if amount <= 0:
            continue
        if currency == quote:
            total += amount
        elif currency == base:
            total += amount * price
        else:
            uncounted.append((str(currency or "unknown"), format(amount, "f")))
    return total, uncounted


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def api_key_digest(exchange: str, api_key: str) -> str:
    """SHA-256 hex of ``api_key``, domain-separated by purpose and exchange: what stands
    for an account whose exchange reports no uid (the key itself is never stored)."""
    return hashlib.sha256(f"guardrails ccxt api key|{exchange}|{api_key}".encode()).hexdigest()


def _uid(value: Any) -> str | None:
    """An account uid as the exchange answered it, or None for none (missing, 0, empty)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value > 0 else None
    if isinstance(value, str) and _UID_RE.fullmatch(value) and value.strip("0"):
        return value
    return None


class Credentials:
    """An exchange API key and secret (and passphrase); never shown."""

    __slots__ = ("api_key", "password", "secret")

    def __init__(self, api_key: str, secret: str, password: str | None = None) -> None:
        self.api_key, self.secret, self.password = api_key, secret, password
        # Registered with the log scrubber: ccxt's exception texts can quote the request.
        for value in (api_key, secret, password):
            redacted.register(value)

    def __repr__(self) -> str:
        return "Credentials(***)"


def load_credentials(cfg: CcxtVenueConfig, *, source: str = "") -> Credentials | None:
    """The configured credentials: the file if one is named, else the env vars; None
    when neither is set. Raises ``VenueError`` naming the file or variable at fault."""
    where = f" ({source})" if source else ""
    if cfg.credentials_file:
        path = Path(cfg.credentials_file).expanduser()
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise VenueError(f"ccxt venue: credentials file {path}{where} is readable by "
                                 f"others (mode {oct(mode & 0o777)}); chmod 600 it")
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise VenueError(f"ccxt venue: credentials file {path}{where}: "
                             f"{e.strerror or type(e).__name__}") from None
        except ValueError:
            raise VenueError(f"ccxt venue: credentials file {path}{where} is not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("apiKey"), str) \
                or not isinstance(data.get("secret"), str):
            raise VenueError(f"ccxt venue: credentials file {path}{where} must be a JSON object "
                             "with string fields apiKey and secret (and optionally password)")
        password = data.get("password")
        return Credentials(data["apiKey"], data["secret"],
                           password if isinstance(password, str) else None)
    api_key, secret = os.environ.get(cfg.api_key_env), os.environ.get(cfg.secret_env)
    if not api_key and not secret:
        return None
    if not api_key or not secret:
        missing = cfg.api_key_env if not api_key else cfg.secret_env
        raise VenueError(f"ccxt venue: ${missing} is not set (both ${cfg.api_key_env} and "
                         f"${cfg.secret_env} are needed){where}")
    password = os.environ.get(cfg.password_env) if cfg.password_env else None
    return Credentials(api_key, secret, password)


class CcxtVenue:
    """One account at one exchange, through the unmodified ccxt exchange class."""

    def __init__(
        self,
        venue_cfg: CcxtVenueConfig,
        account: AccountId,
        *,
        risk: RiskConfig,
        source: str = "",
        credentials: Credentials | None = None,
        redis: aioredis.Redis | None = None,
        lease: LeaseConfig | None = None,
        template: Any = None,
    ) -> None:
        """``redis`` (the account's Redis) keeps the fills cursor durable
        (``AccountKeys.venue_cursor``); without it ``fills_since(None)`` reads from the
        account's first trade. ``lease`` sizes the dead-man switch (default lease timing
        when not given). ``template``: a caller's ccxt exchange object (``guardrails.ccxt``):
        the venue's own instance copies its class, credentials, URLs (a sandbox switch
        included) and options instead of reading them from the config and environment. It
        is a twin, not the caller's object itself, because the venue reads every number as
        an exact decimal string (``exchange.number = str``), which would change what the
        caller's own calls return."""
        self.name = "ccxt"
        self._template = template
        self._lease = lease or LeaseConfig()
        self._dead_man_armed_at: float | None = None
        """Monotonic time of the last successful arm or refresh of the dead-man switch."""
        self._dead_man_failing = False
        self._redis = redis
        self._cursor_key = AccountKeys(account).venue_cursor
        self._cursor_failing = False
        self._cfg = venue_cfg
        self._account_id = account
        self._risk = risk
        self._source = source
        self._credentials = credentials
        self._ex: Any = None
        self._account: ExchangeAccount | None = None
        self._base = venue_cfg.url or ""
        self._symbol_of: dict[str, str] = {}
        """Client order id -> symbol of the orders this process sent."""
        self._coid_of: dict[tuple[str, str], str] = {}
        """(symbol, exchange order id) -> client order id, learned from answers."""
        self._deadline_of: dict[str, int] = {}
        """Client order id -> submit deadline of the orders handed to ``submit`` here
        (a lookup without ``deadline_ms`` uses it)."""
        self._fenced = venue_cfg.exchange in RECV_WINDOW_EXCHANGES
        self._steps: dict[str, tuple[Decimal, Decimal]] = {}
        """Symbol -> (tick, lot) of the exchange, when ccxt counts precision in ticks."""
        self._cx_of = {inst: venue_cfg.symbols.get(inst, inst) for inst in risk.instruments}
        """Instrument -> the exchange's ccxt symbol (``[venue] symbols``; unmapped: itself)."""
        self._inst_of = {sym: inst for inst, sym in self._cx_of.items()}
        self._lock = asyncio.Lock()
        self._fee_warned: dict[str, None] = {}
        """Fill ids whose uncounted fee was logged (insertion-ordered, bounded)."""

    def __repr__(self) -> str:
        return f"CcxtVenue(exchange={self._cfg.exchange!r}, account={self._account_id})"

    __str__ = __repr__

    @property
    def url(self) -> str:
        """The simulator base URL (after ``start`` with ``url = "embedded"``), else ``""``."""
        return self._base if self._base != EMBEDDED else ""

    def ccxt_symbol(self, instrument: str) -> str:
        """The exchange's ccxt symbol of a configured instrument (``[venue] symbols``)."""
        return self._cx_of.get(instrument, instrument)

    def instrument(self, ccxt_symbol: str) -> str | None:
        """The configured instrument of a ccxt symbol, or None if none maps to it."""
        return self._inst_of.get(ccxt_symbol)

    @property
    def exchange_account(self) -> ExchangeAccount:
        """The exchange account this venue's key trades (after ``start``): its uid where the
        exchange reports one (``UID_EXCHANGES``), else a digest of the API key."""
        if self._account is None:
            raise VenueError("ccxt venue: not started")
        return self._account

    @property
    def dead_man_switch(self) -> bool:
        """Whether this venue arms the exchange's ``cancelAllOrdersAfter`` while active:
        ccxt's class has it (after ``start``) and ``dead_man_switch`` is not turned off."""
        return bool(self._cfg.dead_man_switch and self._ex is not None
                    and self._cfg.exchange not in DEAD_MAN_NOT_A_COUNTDOWN
                    and self._ex.has.get("cancelAllOrdersAfter") is True)

    def dead_man_timeout_ms(self) -> int:
        """The countdown armed: ``dead_man_timeout`` or 4 lease TTLs, in whole seconds (the
        exchanges count seconds), at least the exchange's minimum. Raises ``VenueError``
        above its maximum."""
        lo, hi = DEAD_MAN_LIMITS_S.get(self._cfg.exchange, (1, 86_400))
        wanted = self._cfg.dead_man_timeout or DEAD_MAN_LEASE_TTLS * self._lease.ttl
        seconds = max(-(-wanted // 1000), lo)
        if seconds > hi:
            raise VenueError(f"ccxt venue: dead_man_timeout {seconds}s is above {self._cfg.exchange}"
                             f"'s maximum of {hi}s")
        return int(seconds) * 1000

    @property
    def term_service(self) -> Any:
        """While active (run by the runtime in the term's task group): the dead-man
        switch's refresher, or None when this venue has none to run."""
        return self._dead_man_service if self.dead_man_switch else None

    async def begin_term(self) -> None:
        """On taking the lease, before reconciliation: arm the dead-man switch."""
        if self.dead_man_switch:
            await self._dead_man_arm(self.dead_man_timeout_ms())

    async def _dead_man_arm(self, timeout_ms: int) -> None:
        try:
            await self._exchange().cancel_all_orders_after(timeout_ms)
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: cancelAllOrdersAfter({timeout_ms}) failed: "
                             f"{type(e).__name__}: {_brief(e)}") from None
        if timeout_ms:
            self._dead_man_armed_at = time.monotonic()
            logs.event(log, "venue.ccxt.dead_man_armed", logging.DEBUG, timeout_ms=timeout_ms)

    async def _dead_man_service(self) -> None:
        """Re-arm every quarter countdown; disarm when cancelled (the term ended), unless
        this service was stalled longer than a lease TTL (see the module doc)."""
        timeout_ms = self.dead_man_timeout_ms()
        interval_s = timeout_ms / DEAD_MAN_REFRESHES / 1000
        logs.event(log, "venue.ccxt.dead_man_on", exchange=self._cfg.exchange,
                   timeout_ms=timeout_ms, refresh_ms=int(interval_s * 1000))
        stalled = False
        try:
            while True:
                slept_from = time.monotonic()
                await asyncio.sleep(interval_s)
                if time.monotonic() - slept_from > interval_s + self._lease.ttl / 1000:
                    stalled = True  # paused past a ttl: maybe not the holder any more
                try:
                    await self._dead_man_arm(timeout_ms)
                except VenueError as e:
                    if not self._dead_man_failing:
                        logs.event(log, "venue.ccxt.dead_man_refresh_failed", logging.WARNING,
                                   error=str(e), note="the exchange cancels every resting order "
                                   f"{timeout_ms}ms after the last refresh")
                    self._dead_man_failing = True
                    continue
                if self._dead_man_failing:
                    logs.event(log, "venue.ccxt.dead_man_refresh_recovered")
                self._dead_man_failing = False
        finally:
            await self._dead_man_disarm(interval_s, stalled)

    async def _dead_man_disarm(self, interval_s: float, stalled: bool) -> None:
        armed_at = self._dead_man_armed_at
        stalled = (stalled or armed_at is None
                   or time.monotonic() - armed_at > interval_s + self._lease.ttl / 1000)
        if stalled or self._ex is None:
            logs.event(log, "venue.ccxt.dead_man_left_armed", logging.WARNING,
                       reason="refresher stalled past a lease ttl: this process may no longer "
                       "hold the lease" if stalled else "venue closed")
            return
        try:
            await asyncio.wait_for(self._dead_man_arm(0), self._cfg.request_timeout / 1000)
        except (VenueError, TimeoutError) as e:
            logs.event(log, "venue.ccxt.dead_man_disarm_failed", logging.WARNING,
                       error=f"{type(e).__name__}: {e}",
                       note="the exchange will cancel the resting orders when it runs out")
            return
        self._dead_man_armed_at = None
        logs.event(log, "venue.ccxt.dead_man_off")

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._ex is not None:
                return
            creds: Credentials | None
            if self._template is not None:
                creds = self._template_credentials()
            else:
                creds = self._credentials or load_credentials(self._cfg, source=self._source)
            if self._base == EMBEDDED:
                self._base = await self._start_embedded()
                if creds is None:
                    from guardrails.sim.binance import demo_credentials

                    creds = Credentials(*demo_credentials(str(self._account_id)))
                    logs.event(log, "venue.ccxt.demo_key", account=str(self._account_id),
                               reason=f"url=embedded and ${self._cfg.api_key_env} unset")
            if creds is None:
                raise VenueError(
                    f"ccxt venue: no credentials: set ${self._cfg.api_key_env} and "
                    f"${self._cfg.secret_env}, or [venue] credentials_file"
                    + (f" in {self._source}" if self._source else "")
                )
            ex = self._make_exchange(creds)
            try:
                await self._load(ex)
                self._account = await self._read_account(ex, creds)
            except BaseException:
                await ex.close()
                raise
            self._ex = ex
            if self.dead_man_switch:
                try:
                    self.dead_man_timeout_ms()  # a countdown the exchange refuses: say so now
                except VenueError:
                    self._ex = None
                    await ex.close()
                    raise
            logs.event(log, "venue.ccxt.started", exchange=self._cfg.exchange,
                       dead_man_switch=int(self.dead_man_switch),
                       url=self._base or None, account=str(self._account_id),
                       time_offset_ms=ex.options.get("timeDifference"),
                       recv_window_fence=int(self._fenced))

    async def _read_account(self, ex: Any, creds: Credentials) -> ExchangeAccount:
        """Which exchange account ``creds`` trade: the uid the exchange reports, else the
        key's digest. A failed account request raises ``VenueError`` (nothing starts)."""
        sandbox = self._cfg.sandbox or bool(getattr(self._template, "isSandboxModeEnabled",
                                                    False))
        exchange = self._cfg.exchange + ("-sandbox" if sandbox else "")
        uid = None
        if self._cfg.exchange in UID_EXCHANGES:
            try:
                answer = await ex.private_get_account({"omitZeroBalances": "true"})
            except cx.BaseError as e:
                raise VenueError(f"ccxt venue: cannot read the account (GET account) to learn "
                                 f"its uid: {type(e).__name__}: {_brief(e)}") from None
            uid = _uid(answer.get("uid") if isinstance(answer, dict) else None)
        if uid is not None:
            return ExchangeAccount(exchange, "uid", uid)
        return ExchangeAccount(exchange, "key", api_key_digest(exchange, creds.api_key))

    def _template_credentials(self) -> Credentials:
        t = self._template
        if getattr(t, "id", None) != self._cfg.exchange:
            raise VenueError(f"ccxt venue: the exchange object is {getattr(t, 'id', None)!r}, "
                             f"the config's [venue] exchange is {self._cfg.exchange!r}")
        if not getattr(t, "apiKey", None) or not getattr(t, "secret", None):
            raise VenueError("ccxt venue: the exchange object has no apiKey/secret")
        return Credentials(str(t.apiKey), str(t.secret),
                           str(t.password) if getattr(t, "password", None) else None)

    def _make_exchange(self, creds: Credentials) -> Any:
        if self._template is not None:
            return self._twin(creds)
        cls = getattr(ccxt_async, self._cfg.exchange, None)
        if cls is None or not isinstance(cls, type):
            raise VenueError(f"ccxt venue: {self._cfg.exchange!r} is not a ccxt exchange id"
                             + (f" ({self._source})" if self._source else ""))
        options = self._venue_options()
        options.update(self._cfg.options)
        params: dict[str, Any] = {
            "apiKey": creds.api_key, "secret": creds.secret,
            "enableRateLimit": self._cfg.enable_rate_limit,
            "timeout": self._cfg.request_timeout, "options": options,
        }
        if creds.password is not None:
            params["password"] = creds.password
        return self._finish(cls(params))

    def _venue_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"fetchCurrencies": False, "fetchMargins": False}
        if self._cfg.exchange == "binance":
            # Spot only: the default also loads the futures markets from fapi/dapi hosts.
            options["fetchMarkets"] = {"types": ["spot"]}
            options["defaultType"] = "spot"
            # The order id is all a submit needs (fills come from myTrades): the short answer.
            options["newOrderRespType"] = {"market": "ACK", "limit": "ACK"}
        return options

    def _twin(self, creds: Credentials) -> Any:
        """The venue's own instance of the template's class: its credentials, timeout,
        rate limiting, options (ours over them: spot markets, ACK answers) and URLs."""
        t = self._template
        options = copy.deepcopy({k: v for k, v in t.options.items()
                                 if k not in ("timeDifference", "cachedCurrencies")})
        options.update(self._venue_options())
        options.update(self._cfg.options)
        params: dict[str, Any] = {
            "apiKey": creds.api_key, "secret": creds.secret, "timeout": t.timeout,
            "enableRateLimit": t.enableRateLimit, "options": options,
        }
        if creds.password is not None:
            params["password"] = creds.password
        ex = type(t)(params)
        ex.urls = copy.deepcopy(t.urls)
        return self._finish(ex)

    def _finish(self, ex: Any) -> Any:
        ex.number = str  # ccxt's documented alternative to float: exact decimal strings
        ex.enableLastHttpResponse = False  # nobody reads them; each costs a copy per call
        ex.enableLastResponseHeaders = False
        if self._cfg.sandbox:
            ex.set_sandbox_mode(True)
        if self._base:
            api = self._base.rstrip("/") + "/api/v3"
            ex.urls["api"]["public"] = api
            ex.urls["api"]["private"] = api
        for name, url in self._cfg.urls.items():
            redacted.register_endpoint_url(url)  # ccxt's errors quote the URL they called
            ex.urls["api"][name] = url
        return ex

    async def _start_embedded(self) -> str:
        """Reach the per-user Binance-protocol simulator daemon, starting it if needed."""
        from guardrails.sim import daemon, exchange

        market = self._cfg.simulator or exchange.DEFAULT_MARKET
        spec = daemon.MarketSpec(market, self._risk, 1, protocol="binance")
        try:
            return await asyncio.to_thread(daemon.ensure_running, spec)
        except daemon.SimDaemonError as e:
            raise VenueError(f"ccxt venue: {e}") from None

    async def _load(self, ex: Any) -> None:
        """Markets, the clock offset, and the instruments' units against the exchange's."""
        try:
            await ex.load_markets()
            if self._fenced:
                await ex.load_time_difference()
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: cannot reach {self._cfg.exchange}: "
                             f"{type(e).__name__}: {_brief(e)}") from None
        problems = []
        unknown = sorted(set(self._cfg.symbols) - set(self._risk.instruments))
        if unknown:
            problems.append(f"[venue] symbols maps {', '.join(unknown)}, not in [risk.instruments]")
        if len(self._inst_of) != len(self._cx_of):
            problems.append("[venue] symbols maps two instruments to one ccxt symbol")
        for sym, inst in self._risk.instruments.items():
            market = ex.markets.get(self._cx_of[sym])
            if market is None:
                shown = sym if self._cx_of[sym] == sym else f"{sym} ({self._cx_of[sym]})"
                problems.append(f"{shown} is not a market of {self._cfg.exchange}")
                continue
            tick = _dec(market["precision"]["price"], f"{sym} tick")
            lot = _dec(market["precision"]["amount"], f"{sym} lot")
            if ex.precisionMode == TICK_SIZE:
                self._steps[sym] = (tick, lot)
            if tick != inst.tick:
                problems.append(f"{sym} tick: config {inst.tick}, exchange PRICE_FILTER "
                                f"tickSize {tick.normalize()}")
            if lot != inst.lot:
                problems.append(f"{sym} lot: config {inst.lot}, exchange LOT_SIZE "
                                f"stepSize {lot.normalize()}")
        if problems:
            where = f" in {self._source}" if self._source else ""
            raise VenueError(
                "ccxt venue: refusing to start: the configured instruments" + where
                + " do not match the exchange's filters (the gate's limits must describe "
                "what the exchange accepts): " + "; ".join(problems)
            )

    async def close(self) -> None:
        if self._ex is not None:
            ex, self._ex = self._ex, None
            await ex.close()

    def _exchange(self) -> Any:
        if self._ex is None:
            raise VenueError("ccxt venue: not started")
        return self._ex

    # -- submit / cancel -----------------------------------------------------------------

    def _formatted(self, order: Order) -> tuple[str, str] | Rejected:
        """(amount, price) strings exactly as ccxt will send them, or why not.

        With ccxt counting precision in ticks (Binance) a multiple of the tick / step is
        exactly what ``price_to_precision`` / ``amount_to_precision`` give back, so the
        multiple is checked directly (test_venue_ccxt proves the wire value equal);
        otherwise ccxt's own formatting is run and compared."""
        steps = self._steps.get(order.symbol)
        if steps is not None:
            tick, lot = steps
            if order.qty <= 0 or order.qty % lot != 0:
                return Rejected(f"off_lot: {order.qty} is not a multiple of the step {lot}")
            if order.price <= 0 or order.price % tick != 0:
                return Rejected(f"off_tick: {order.price} is not a multiple of the tick {tick}")
            return format(order.qty, "f"), format(order.price, "f")
        ex = self._exchange()
        try:
            amount = ex.amount_to_precision(self.ccxt_symbol(order.symbol), str(order.qty))
            price = ex.price_to_precision(self.ccxt_symbol(order.symbol), str(order.price))
        except cx.BaseError as e:
            return Rejected(f"{type(e).__name__}: {_brief(e)}")
        if Decimal(amount) != order.qty:
            return Rejected(f"off_lot: ccxt would send {amount} for {order.qty}")
        if Decimal(price) != order.price:
            return Rejected(f"off_tick: ccxt would send {price} for {order.price}")
        return amount, price

    def fence_params(self, deadline_ms: int, now_ms: int) -> dict[str, int] | None:
        """Binance: ``timestamp`` on the exchange's clock and a ``recvWindow`` that ends at
        ``deadline_ms`` (converted by the same offset); None when it has already passed."""
        offset = int(self._exchange().options.get("timeDifference") or 0)
        window = min(deadline_ms - now_ms, self._cfg.max_recv_window)
        if window < 1:
            return None
        return {"timestamp": now_ms - offset, "recvWindow": window}

    async def submit(self, order: Order) -> SubmitResult:
        ex = self._exchange()
        if order.symbol not in self._risk.instruments or self.ccxt_symbol(order.symbol) \
                not in ex.markets:
            return Rejected(f"unknown_symbol: {order.symbol}")
        formatted = self._formatted(order)
        if isinstance(formatted, Rejected):
            return formatted
        amount, price = formatted
        coid = order.client_order_id
        self._deadline_of[coid] = order.submit_deadline_ms
        if coid in self._symbol_of:
            # A re-send by this process: Binance only refuses ids of *open* orders, so a
            # finished one would trade again. Ask first; send only if it never arrived.
            try:
                found = await self._fetch(coid, order.symbol)
            except cx.BaseError as e:
                return Unknown(f"re-send not checked: {type(e).__name__}")
            if found is not None:
                return Accepted(str(found["id"]))
        params: dict[str, Any] = {"newClientOrderId": coid}
        if self._fenced:
            fence = self.fence_params(order.submit_deadline_ms, _now_ms())
            if fence is None:
                return Rejected("expired: permit deadline passed before sending")
            params.update(fence)
        self._symbol_of[coid] = order.symbol
        try:
            if self._cfg.exchange == "binance":
                venue_order_id = await self._binance_order(order, amount, price, params)
            else:
                placed = await ex.create_order(self.ccxt_symbol(order.symbol), "limit",
                                               order.side.value, amount, price, params)
                venue_order_id = str(placed["id"])
        except cx.InvalidOrder as e:
            result = await self._duplicate_or(e, order)
        except Exception as e:  # classified: an unknown outcome is never a rejection
            result = classify_submit_error(e)
        else:
            self._coid_of[(order.symbol, venue_order_id)] = coid
            result = Accepted(venue_order_id)
        logs.event(log, "venue.ccxt.submit", coid=coid, result=type(result).__name__.lower(),
                   detail=getattr(result, "reason", None))
        return result

    async def _binance_order(self, order: Order, amount: str, price: str,
                             params: dict[str, Any]) -> str:
        """``POST /api/v3/order`` through ccxt's own endpoint method (its signing, transport
        and error mapping), with the request its ``create_order`` builds for a spot GTC
        limit order (test_venue_ccxt checks the two agree) and the order id of the short
        ``ACK`` answer. The unified layer around it — re-formatting strings already checked
        exact, parsing the answer into a unified order nobody reads — was a fifth of a
        submit's time (bench/ccxtvenue.py). A malformed answer raises ``KeyError``: the
        caller classifies it as unknown, never as a rejection."""
        placed = await self._exchange().privatePostOrder(
            self.binance_request(order, amount, price, params))
        return str(placed["orderId"])

    def binance_request(self, order: Order, amount: str, price: str,
                        params: dict[str, Any]) -> dict[str, Any]:
        """The parameters of a Binance spot GTC limit order, as ccxt's ``create_order``
        builds them (before signing)."""
        return {
            "symbol": self._exchange().market_id(self.ccxt_symbol(order.symbol)),
            "side": order.side.value.upper(),
            "newOrderRespType": "ACK", "type": "LIMIT", "quantity": amount, "price": price,
            "timeInForce": "GTC", **params,
        }

    async def _duplicate_or(self, e: cx.InvalidOrder, order: Order) -> SubmitResult:
        """``-2010 Duplicate order sent.``: the order exists; return it, never a rejection."""
        if "Duplicate order" not in str(e):
            return classify_submit_error(e)
        try:
            found = await self._fetch(order.client_order_id, order.symbol)
        except cx.BaseError as e2:
            return Unknown(f"duplicate, lookup failed: {type(e2).__name__}")
        return Accepted(str(found["id"])) if found is not None else Unknown("duplicate not found")

    async def cancel(self, client_order_id: str) -> SubmitResult:
        try:
            found = await self._find(client_order_id)
        except cx.BaseError as e:
            return Unknown(f"lookup before cancel failed: {type(e).__name__}")
        if found is None:
            # The exchange keeps no tombstone: a late arrival is stopped by its recvWindow,
            # not by this cancel, so it is not a promise that the order never executes.
            return Rejected("not_found")
        symbol, raw = found
        if _STATES.get(str(raw.get("status"))) is not VenueOrderState.OPEN:
            return Accepted(str(raw["id"]))
        try:
            await self._exchange().cancel_order(None, self.ccxt_symbol(symbol),
                                                {"origClientOrderId": client_order_id})
        except cx.OrderNotFound:
            # Finished meanwhile (a fill raced the cancel): final either way, or unknown.
            try:
                raw2 = await self._fetch(client_order_id, symbol)
            except cx.BaseError as e:
                return Unknown(f"cancel raced, lookup failed: {type(e).__name__}")
            if raw2 is not None and _STATES.get(str(raw2.get("status"))) not in (
                    None, VenueOrderState.OPEN):
                return Accepted(str(raw2["id"]))
            return Unknown("cancel refused and the order is not final")
        except Exception as e:
            return Unknown(f"no answer: {type(e).__name__}")
        return Accepted(str(raw["id"]))

    # -- lookups -------------------------------------------------------------------------

    async def _fetch(self, coid: str, symbol: str) -> dict[str, Any] | None:
        """The exchange's order of ``coid`` in ``symbol``, or None if it has none."""
        try:
            raw: dict[str, Any] = await self._exchange().fetch_order(
                None, self.ccxt_symbol(symbol), {"origClientOrderId": coid})
        except cx.OrderNotFound:
            return None
        self._coid_of[(symbol, str(raw["id"]))] = coid
        return raw

    async def _find(self, coid: str) -> tuple[str, dict[str, Any]] | None:
        """(symbol, order) of ``coid``, trying its known symbol first, then every other."""
        first = self._symbol_of.get(coid)
        symbols = ([first] if first else []) + [s for s in self._risk.instruments if s != first]
        for symbol in symbols:
            raw = await self._fetch(coid, symbol)
            if raw is not None:
                self._symbol_of[coid] = symbol
                return symbol, raw
        return None

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        ex = self._exchange()
        if deadline_ms is None:
            deadline_ms = self._deadline_of.get(client_order_id)
        try:
            found = await self._find(client_order_id)
            if found is None:
                can_arrive = True
                if deadline_ms is not None and self._fenced:
                    # Binance refuses once its clock passes timestamp + recvWindow, which is
                    # the deadline moved by the same offset (fence_params): ask its clock.
                    offset = int(ex.options.get("timeDifference") or 0)
                    can_arrive = int(await ex.fetch_time()) <= deadline_ms - offset
                elif deadline_ms is not None:
                    # No exchange-side fence: only the sender's own deadline check stops a
                    # late order, so it could arrive as long as that check would let it go.
                    can_arrive = _now_ms() <= deadline_ms
                return VenueOrderStatus(client_order_id, VenueOrderState.NOT_FOUND,
                                        can_still_arrive=can_arrive)
            symbol, raw = found
            state = _STATES.get(str(raw.get("status")))
            if state is None:
                raise VenueError(f"ccxt venue: lookup: unknown order status {raw.get('status')!r}")
            filled = _dec(raw.get("filled") or "0", "filled")
            fills: tuple[Fill, ...] = ()
            if filled > 0:
                trades = await ex.fetch_my_trades(self.ccxt_symbol(symbol), None, None,
                                                  {"orderId": raw["id"]})
                # Only this order's trades, whatever the exchange sent: a fill attributed
                # to the wrong order would move the wrong reservation.
                fills = tuple(self._fill(t, client_order_id) for t in trades
                              if str(t.get("order")) == str(raw["id"]))
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: lookup failed: {type(e).__name__}") from None
        return VenueOrderStatus(client_order_id, state, filled_qty=filled, fills=fills,
                                detail=str(raw.get("status")))

    def _fill(self, trade: dict[str, Any], coid: str) -> Fill:
        market = self._exchange().market(trade["symbol"])
        fill_id = f"{market['id']}-{trade['id']}"
        price = _dec(trade["price"], "trade price")
        fee, uncounted = fee_in_quote(trade, base=str(market["base"]),
                                      quote=str(market["quote"]), price=price)
        if uncounted and fill_id not in self._fee_warned:
            # Logged once per fill in this process: a lookup and the fill pump read the
            # same trade, and every read would otherwise repeat the line.
            if len(self._fee_warned) >= _FEE_WARNED_MAX:
                self._fee_warned.pop(next(iter(self._fee_warned)))
            self._fee_warned[fill_id] = None
            for currency, amount in uncounted:
                logs.event(log, "venue.ccxt.fee_not_counted", logging.WARNING,
                           coid=coid, fill_id=fill_id, symbol=str(trade["symbol"]),
                           currency=currency, amount=amount,
                           action="the fill goes to the ledger without this fee: realized PnL and the "
                                  "daily loss budget undercount it (turn BNB fee payment off, or "
                                  "account for these fees by hand)")
        return Fill(
            fill_id=fill_id, client_order_id=coid,
            symbol=self._inst_of.get(str(trade["symbol"]), str(trade["symbol"])),
            side=Side(str(trade["side"])),
            qty=_dec(trade["amount"], "trade amount"), price=price,
            ts_ms=int(trade["timestamp"]), fee=fee, fees_uncounted=tuple(uncounted),
        )

    async def _coid(self, symbol: str, order_id: str) -> str:
        """The client order id of an exchange order id (trades name only the order id):
        learned from this process's answers, else from the symbol's recent orders in one
        request (a takeover meets many at once), else from the order itself."""
        key = (symbol, order_id)
        if key not in self._coid_of and self._exchange().has.get("fetchOrders"):
            for raw in await self._exchange().fetch_orders(self.ccxt_symbol(symbol), None,
                                                           TRADES_PAGE):
                if raw.get("clientOrderId"):
                    self._coid_of[(symbol, str(raw["id"]))] = str(raw["clientOrderId"])
        if key not in self._coid_of:
            raw = await self._exchange().fetch_order(order_id, self.ccxt_symbol(symbol))
            self._coid_of[key] = str(raw.get("clientOrderId") or "")
        return self._coid_of[key]

    async def _durable_cursor(self, cursor: str | None) -> str | None:
        """A cursor passed back is acknowledged (the caller applied every fill before it):
        store it. ``None`` (a new term's pump) resumes from the stored one. Redis failures
        cost only re-reading fills (each applies once), so they are logged, not raised."""
        if self._redis is None:
            return cursor
        stored: str | None
        try:
            if cursor is not None:
                await self._redis.set(self._cursor_key, cursor)
                stored = cursor
            else:
                raw = await self._redis.get(self._cursor_key)
                stored = raw.decode() if isinstance(raw, bytes) else raw
        except (RedisError, OSError) as e:
            if not self._cursor_failing:
                logs.event(log, "venue.ccxt.cursor_unavailable", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="reading from the cursor given")
            self._cursor_failing = True
            return cursor
        self._cursor_failing = False
        return stored

    async def fills_since(self, cursor: str | None) -> FillBatch:
        ex = self._exchange()
        positions = _parse_cursor(await self._durable_cursor(cursor))
        out: list[Fill] = []
        try:
            for symbol in sorted(self._risk.instruments):
                market_id = ex.market(self.ccxt_symbol(symbol))["id"]
                next_id = positions.get(market_id, 0)
                while True:
                    trades = await ex.fetch_my_trades(self.ccxt_symbol(symbol), None, TRADES_PAGE,
                                                      {"fromId": next_id})
                    for t in trades:
                        coid = await self._coid(symbol, str(t["order"]))
                        out.append(self._fill(t, coid))
                        next_id = max(next_id, int(t["id"]) + 1)
                    if len(trades) < TRADES_PAGE:
                        break
                positions[market_id] = next_id
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: fills failed: {type(e).__name__}") from None
        except (KeyError, ValueError, TypeError) as e:
            raise VenueError(f"ccxt venue: fills: malformed answer ({type(e).__name__})") from None
        return FillBatch(fills=tuple(out), cursor=_format_cursor(positions))

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        ex = self._exchange()
        wanted = [s for s in symbols if self.ccxt_symbol(s) in ex.markets]
        if not wanted:
            return {}
        asked = [self.ccxt_symbol(s) for s in wanted]
        try:
            if ex.has.get("fetchBidsAsks"):
                books = await ex.fetch_bids_asks(asked)
            else:
                books = await ex.fetch_tickers(asked)
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: marks failed: {type(e).__name__}") from None
        out: dict[str, Decimal] = {}
        for sym in wanted:
            book = books.get(self.ccxt_symbol(sym))
            if not book or book.get("bid") is None or book.get("ask") is None:
                continue
            tick = self._risk.instruments[sym].tick if sym in self._risk.instruments else None
            mid = (_dec(book["bid"], "bid") + _dec(book["ask"], "ask")) / 2
            if tick is not None:
                mid = (mid / tick).quantize(Decimal(1), rounding=ROUND_HALF_EVEN) * tick
            out[sym] = mid
        return out

    async def balances(self) -> dict[str, Decimal]:
        ex = self._exchange()
        try:
            raw = await ex.fetch_balance()
        except cx.BaseError as e:
            raise VenueError(f"ccxt venue: balances failed: {type(e).__name__}") from None
        totals = {str(k): _dec(v, f"balance {k}") for k, v in (raw.get("total") or {}).items()
                  if v is not None}
        out = dict(totals)
        for sym in self._risk.instruments:
            market = ex.markets.get(self.ccxt_symbol(sym))
            if market is not None and market["base"] in totals:
                out[sym] = totals[market["base"]]
        return out


def _parse_cursor(cursor: str | None) -> dict[str, int]:
    """``SYMBOLID:next_id,...`` -> {symbol id: next trade id}; None or "" -> from the start."""
    out: dict[str, int] = {}
    for part in (cursor or "").split(","):
        if not part:
            continue
        sym, sep, n = part.rpartition(":")
        if not sep or not n.isdigit():
            raise VenueError(f"ccxt venue: malformed fills cursor {cursor[:80]!r}"
                             if cursor else "ccxt venue: malformed fills cursor")
        out[sym] = int(n)
    return out


def _format_cursor(positions: dict[str, int]) -> str:
    return ",".join(f"{sym}:{n}" for sym, n in sorted(positions.items()))
