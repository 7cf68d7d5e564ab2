"""``guarded``: an existing ccxt bot under the harness, by wrapping its exchange object.

::

    exchange = ccxt.async_support.binance({"apiKey": ..., "secret": ...})
    async with guarded(exchange, config="config/mybot.toml") as exchange:
        await exchange.create_order("BTC/USDT", "limit", "buy", 0.001, 60000)

Invariants upheld: *one writer per account* and *fail closed, and say why*. ``guarded``
enters a ``Guard`` (host lock, the exchange account's claim for this account id — another
account id over the same exchange account raises ``GuardError`` —, registry, lease loop,
kill listener: docs/embedding.md)
whose venue is the ccxt venue built on this exchange (``CcxtVenue(template=exchange)``:
its own instance of the same class with the same credentials, URLs and options, because
the venue reads numbers as exact decimal strings, which would change what the caller's
own calls return). The object it gives back behaves as the exchange, except:

* ``create_order(symbol, "limit", side, amount, price, params)`` goes through the gate
  (lease, limits, reservation; idempotent on ``params["clientOrderId"]``, a fresh id
  otherwise), then the venue, then the ledger, and returns a ccxt order structure from the
  ledger's record (``id`` and ``clientOrderId`` are the client order id the exchange got;
  ``info["venue_order_id"]`` is the exchange's id). Refused before the gate with
  ``OrderDenied`` (``BAD_ORDER``): any type but ``limit`` (market, stop... are not
  modelled), no price, any ``params`` other than ``clientOrderId``; ``UNKNOWN_SYMBOL``: a
  symbol not in the config's ``[risk.instruments]``.
* A gate denial raises ``OrderDenied`` (a ``ccxt.InvalidOrder``: existing ``except
  ccxt.InvalidOrder`` keeps working) carrying the ``DenyReason``; an exchange rejection
  raises ``ccxt.InvalidOrder``.
* ``create_limit_order``, ``create_limit_buy_order``, ``create_limit_sell_order`` and
  the ``create_market_*`` trio are ``create_order`` with their fixed arguments: gated
  alike (market orders refused alike). camelCase names are their snake_case twins.
* When this instance is not active — standby, lease lost, the term ended before the order
  was sent (the call is cancelled), the gate not reachable — gated calls (``create_order``,
  ``cancel_order``) raise ``NotActive`` (a ``ccxt.ExchangeNotAvailable``, so a bot that
  retries on ``ccxt.NetworkError`` idles on the standby and trades once it takes over).
  ``NotActive`` always means the order was not sent: once it has left the process, the
  term ending does not cancel the send — the exchange's answer is awaited and returned —
  and a sent order whose outcome cannot be learned raises ``OrderMayBeLive`` (a
  ``ccxt.ExchangeError``, not a ``NetworkError``) carrying its ``client_order_id``.
* ``cancel_order``, ``fetch_order`` and ``fetch_open_orders`` read the ledger's view (the
  account's orders, whichever process sent them); ``fetch_order`` of an id the ledger
  does not know raises ``ccxt.OrderNotFound``.
* Data attributes (``markets``, ``id``, ``has``, ``options``...) and the methods on the
  passthrough list (``passes_through``: ``fetch_*``, ``watch_*``, ``load_markets``,
  ``market()``, ``*_to_precision``, time and parse helpers, ``close``) are the caller's
  object, unchanged. Every other method — ``edit_order``, ``create_orders``, stop and
  other order types, ``cancel_all_orders``, websocket ``*_ws`` order calls, implicit API
  methods (``privatePostOrder``, ``sapi*``, ``fapi*``...), raw ``fetch``/``request`` —
  raises ``NotGated`` (a ``ccxt.NotSupported``) when called, before anything is sent.

Invariant upheld here: *every order passes the gate* — nothing the wrapper hands out can
place, change or cancel an order except through the gate (an allowlist: a method a newer
ccxt adds is refused until it is listed).

When the guard stops — SIGTERM/SIGINT (``handle_signals``), ``ex.guard.stop()``, or its
background failed — the body of ``async with guarded(...)`` is cancelled, as SIGTERM ends a
plain bot (a loop that retries ``NotActive`` would otherwise spin on); the block then
exits cleanly after releasing the lease (a background failure is raised from it).

Symbols: the caller speaks ccxt symbols (``BTC/USDT``), the gate and ledger the config's
instruments. ``[venue] symbols`` maps an instrument to its ccxt symbol (``"BTC-USD" =
"BTC/USDT"``); an instrument not listed is its own ccxt symbol (``[risk.instruments.
"BTC/USDT"]``). The venue validates the mapping at start — every instrument's symbol must
be a market of the exchange with the exchange's tick and lot, no two instruments may map
to one symbol — or nothing starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import ccxt.async_support as ccxt_async
import redis.asyncio as aioredis

from guardrails import logs
from guardrails.config import CcxtVenueConfig, Config, load_config
from guardrails.ledger import Ledger, OrderRecord
from guardrails.model import (
    Decision,
    Denied,
    DenyReason,
    Intent,
    OrderState,
    Side,
    client_order_id_for,
)
from guardrails.runtime.context import Context, ContextUnavailable
from guardrails.runtime.guard import Guard, GuardStopped, TermEnded
from guardrails.runtime.services import INFRA_ERRORS
from guardrails.runtime.term import Term
from guardrails.venues.base import Venue
from guardrails.venues.ccxt import CcxtVenue

__all__ = ["GuardedExchange", "NotActive", "NotGated", "OrderDenied", "OrderMayBeLive",
           "guarded", "passes_through"]

T = TypeVar("T")
log = logging.getLogger("guardrails.ccxt")

_NOT_ACTIVE_REASONS = frozenset({
    DenyReason.NOT_ACTIVE, DenyReason.STALE_TOKEN, DenyReason.LEASE_EXPIRED,
    DenyReason.REDIS_UNAVAILABLE,
})
"""Denials that say nothing about the order, only that this instance may not trade now."""

_STATUS = {
    OrderState.PENDING_SUBMIT: "open", OrderState.SUBMITTED: "open", OrderState.UNKNOWN: "open",
    OrderState.PARTIALLY_FILLED: "open", OrderState.FILLED: "closed",
    OrderState.CANCELED: "canceled", OrderState.REJECTED: "rejected",
    OrderState.EXPIRED: "expired",
}
CONTEXT_NAME = "ccxt"
"""The strategy name the guarded calls carry in the order log."""


class OrderDenied(ccxt_async.InvalidOrder):  # type: ignore[misc]
    """The gate (or the guarded wrapper, for what it does not model) refused the order:
    nothing was reserved or sent. ``reason`` is the ``DenyReason``, ``detail`` its words."""

    def __init__(self, reason: DenyReason, detail: str = "") -> None:
        super().__init__(f"guardrails denied the order: {reason.value}"
                         + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class NotActive(ccxt_async.ExchangeNotAvailable):  # type: ignore[misc]
    """This instance may not trade now (standby, lease lost, term ended, gate unreachable):
    the order was not sent to the exchange (it may have been reserved, if the gate's reply
    was lost: such a reservation expires, unsent, at reconciliation). A ``NetworkError``,
    so a bot may retry it. Never raised once the order has left the process: that is
    ``OrderMayBeLive``. ``reason`` is the ``DenyReason`` when the gate gave one."""

    def __init__(self, message: str, reason: DenyReason | None = None) -> None:
        super().__init__(f"guardrails: {message}")
        self.reason = reason


class OrderMayBeLive(ccxt_async.ExchangeError):  # type: ignore[misc]
    """The gate admitted the order and it was sent to the exchange, but its outcome could
    not be learned: it may be live. Deliberately *not* a ``NetworkError`` — a bot that
    retries network errors under a fresh id would place a second order. The ledger keeps
    the reservation and reconciliation settles the order by ``client_order_id``;
    ``fetch_order(client_order_id)`` reads what is known, and re-sending with
    ``params={"clientOrderId": <the same intent id>}`` is the same order, never a second."""

    def __init__(self, client_order_id: str, message: str) -> None:
        super().__init__(f"guardrails: order {client_order_id} may be live: {message}")
        self.client_order_id = client_order_id


class NotGated(ccxt_async.NotSupported):  # type: ignore[misc]
    """A method of the exchange the guarded wrapper does not route through the gate and
    does not pass through (it can place, change or cancel orders, or sends raw requests):
    refused when called, before anything is sent. ``method`` is the name called."""

    def __init__(self, exchange_id: str, method: str, why: str) -> None:
        super().__init__(f"guardrails: {exchange_id}.{method} is refused on a guarded "
                         f"exchange: {why}")
        self.method = method


PASSTHROUGH_PREFIXES = ("fetch_", "watch_", "un_watch_", "parse_", "safe_")
"""Method families that read (REST and websocket reads, subscriptions) or are pure helpers:
passed through to the caller's object (``fetch_order``/``fetch_open_orders`` are the
wrapper's own: the ledger's view)."""
PASSTHROUGH_SUFFIXES = ("_to_precision",)
PASSTHROUGH_NAMES = frozenset({
    "load_markets", "load_time_difference", "load_accounts", "market", "market_id",
    "market_ids", "market_symbols", "currency", "currency_id", "describe",
    "check_required_credentials", "milliseconds", "seconds", "microseconds", "iso8601",
    "parse8601", "ymd", "ymdhms", "yymmdd", "yyyymmdd", "nonce", "uuid", "sleep", "sum",
    "omit", "extend", "deep_extend", "index_by", "group_by", "sort_by", "filter_by", "close",
})
"""Single methods that cannot place, change or cancel an order (``close`` closes the
caller's own object; the venue trades through its own twin)."""
NOT_PASSED = frozenset({"watch_multiple", "safe_deterministic_call"})
"""Names in a passthrough family that send what they are told or call a method by name."""
NOT_PASSED_PREFIXES = ("fetch_paginated_call_",)

_ORDERISH = re.compile(r"order|close_position|close_all_positions")


def passes_through(snake: str) -> bool:
    """True if the exchange's method ``snake`` (snake_case) may be called on the caller's
    object unchanged: it cannot place, change or cancel an order. An allowlist — a method
    not named here is refused, so a method a newer ccxt adds is refused until listed."""
    if snake in NOT_PASSED or snake.startswith(NOT_PASSED_PREFIXES):
        return False
    return (snake in PASSTHROUGH_NAMES or snake.startswith(PASSTHROUGH_PREFIXES)
            or snake.endswith(PASSTHROUGH_SUFFIXES))


def _snake(name: str) -> str:
    """ccxt's snake_case name of a method (``fetchOHLCV`` -> ``fetch_ohlcv``)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _refusal(exchange_id: str, name: str, snake: str) -> Callable[..., Any]:
    """A stand-in for a method that is not passed through: calling it raises ``NotGated``."""
    if _ORDERISH.search(snake):
        why = ("it can place, change or cancel orders outside the gate; place limit orders "
               "with create_order(symbol, 'limit', side, amount, price) (or "
               "create_limit_order / create_limit_buy_order / create_limit_sell_order) and "
               "cancel one with cancel_order(id)")
    else:
        why = ("it is not on the passthrough list (reads pass: fetch_*, watch_*, "
               "load_markets, markets, *_to_precision, ...; implicit API methods and raw "
               "requests do not: docs/embedding.md)")

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise NotGated(exchange_id, name, why)

    refused.__name__ = refused.__qualname__ = name
    return refused


def guarded(
    exchange: Any, *, config: str | os.PathLike[str] | Config, redis_url: str | None = None,
    standby: bool = False, instance_id: str | None = None, handle_signals: bool = True,
) -> _Guarded:
    """``async with guarded(exchange, config=...) as ex``: see the module doc. ``config``
    is a path or a loaded ``Config`` with ``[venue] kind = "ccxt"``, ``exchange`` equal to
    the object's id, and no ``url`` (the object's URLs are used). The other arguments are
    ``Guard``'s. Closing the block stops the guard (lease released); it does not close the
    caller's exchange object."""
    return _Guarded(exchange, config=config, redis_url=redis_url, standby=standby,
                    instance_id=instance_id, handle_signals=handle_signals)


class _Guarded:
    def __init__(self, exchange: Any, *, config: str | os.PathLike[str] | Config,
                 redis_url: str | None, standby: bool, instance_id: str | None,
                 handle_signals: bool) -> None:
        cfg = config if isinstance(config, Config) else load_config(Path(config), redis_url)
        venue = cfg.venue
        if not isinstance(venue, CcxtVenueConfig):
            raise ValueError(f"{cfg.source}: guarded() needs [venue] kind = \"ccxt\" "
                             f"(got {venue.kind!r})")
        if venue.exchange != getattr(exchange, "id", None):
            raise ValueError(f"{cfg.source}: [venue] exchange is {venue.exchange!r} but the "
                             f"exchange object is {getattr(exchange, 'id', None)!r}")
        if venue.url is not None:
            raise ValueError(f"{cfg.source}: [venue] url must be unset with guarded(): the "
                             "exchange object's own URLs are used")
        self._exchange = exchange
        self._guard = Guard(cfg, standby=standby, instance_id=instance_id,
                            handle_signals=handle_signals, venue=self._venue)
        self._wrapped: GuardedExchange | None = None
        self._built: CcxtVenue | None = None
        self._owner: asyncio.Task[Any]
        self._cancelled = False

    def _venue(self, cfg: Config, redis: aioredis.Redis) -> Venue:
        assert isinstance(cfg.venue, CcxtVenueConfig)
        # kept here: the guard hands out only a read-only view of its venue
        self._built = CcxtVenue(cfg.venue, cfg.account_id, risk=cfg.risk, source=cfg.source,
                                redis=redis, lease=cfg.lease, template=self._exchange)
        return self._built

    async def __aenter__(self) -> GuardedExchange:
        owner = asyncio.current_task()
        if owner is None:
            raise RuntimeError("guarded() outside a task")
        await self._guard.__aenter__()
        self._owner = owner
        assert self._built is not None  # the guard built its venue on entering
        self._wrapped = GuardedExchange(self._exchange, self._guard, self._built,
                                        on_stop=self._stopped)
        self._wrapped._start()
        return self._wrapped

    def _stopped(self) -> None:
        """The guard stopped (a signal, ``stop()``, its background failed): end the body,
        as SIGTERM ends a plain bot — a loop that retries ``NotActive`` would spin on."""
        if not self._cancelled:
            self._cancelled = True
            self._owner.cancel()

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        ours = self._cancelled and et is not None and issubclass(et, asyncio.CancelledError)
        if ours:
            self._owner.uncancel()
        try:
            if self._wrapped is not None:
                await self._wrapped._stop()
        finally:
            swallowed = await self._guard.__aexit__(None if ours else et,
                                                    None if ours else exc, tb)
        return ours or swallowed


class GuardedExchange:
    """The caller's exchange with its order calls gated (see the module doc)."""

    def __init__(self, exchange: Any, guard: Guard, venue: CcxtVenue, *,
                 on_stop: Callable[[], None] | None = None) -> None:
        self._ex = exchange
        self._on_stop = on_stop
        self.guard = guard
        """The ``Guard`` underneath: ``role``, ``token``, ``stop()``."""
        self._ledger = Ledger(guard.redis, guard.keys, guard.cfg.risk)
        self._venue = venue
        self._term: Term | None = None
        self._ctx: Context | None = None
        self._active = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        """What the wrapper does not define: a data attribute of the caller's object, or a
        method on the passthrough list (``passes_through``); any other method — every way
        to place, change or cancel an order but the gated ones, every implicit API method
        — is replaced by one that raises ``NotGated`` when called. A camelCase name is its
        snake_case twin (``createOrder`` is ``create_order``, gated like it)."""
        if name.startswith("_"):
            raise AttributeError(name)  # never the raw object's internals (nor recursion)
        snake = _snake(name)
        if snake != name and snake in vars(GuardedExchange):
            return getattr(self, snake)
        value = getattr(self._ex, name)
        if not callable(value) or isinstance(value, type) or passes_through(snake):
            return value
        return _refusal(getattr(self._ex, "id", "exchange"), name, snake)

    def __repr__(self) -> str:
        return f"guarded({self._ex!r}, account={self.guard.cfg.account_id})"

    # -- the term ------------------------------------------------------------------------

    def _start(self) -> None:
        self._task = asyncio.create_task(self._terms(), name="guarded-ccxt-terms")

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _terms(self) -> None:
        """Hold each term open while it lasts; between terms, nothing is gated through."""
        while True:
            try:
                async with self.guard.term() as term:
                    self._term, self._ctx = term, term.context(CONTEXT_NAME)
                    self._active.set()
                    logs.event(log, "ccxt.active", token=term.token)
                    await term.ended.wait()
            except TermEnded as e:
                logs.event(log, "ccxt.term_ended", token=e.token, reason=e.reason)
            except GuardStopped:
                if self._on_stop is not None:
                    self._on_stop()
                return
            finally:
                self._term, self._ctx = None, None
                self._active.clear()

    async def wait_active(self) -> int:
        """Wait until this instance holds the lease and has reconciled; its token."""
        while True:
            await self._active.wait()
            term = self._term
            if term is not None and not term.ended.is_set():
                return term.token

    def _current(self) -> tuple[Term, Context]:
        term, ctx = self._term, self._ctx
        if term is None or ctx is None or term.ended.is_set() or not term.leadership.valid():
            raise NotActive(f"this instance ({self.guard.role}) does not hold the lease of "
                            f"{self.guard.cfg.account_id}", DenyReason.NOT_ACTIVE)
        return term, ctx

    async def _submit(self, term: Term, ctx: Context, intent: Intent) -> Decision:
        """``ctx.submit(intent)`` bound to ``term``, never telling the caller "not sent"
        about an order that may be out. If the term ends while the call is pending and
        the order has not left the process (the gate, the record read), the call is
        cancelled and ``NotActive`` raised: nothing reached the exchange. Once the send
        has begun (its client order id is in ``ctx.sent_client_order_ids()``) the term
        ending does not cancel it: the exchange's answer is awaited (bounded by the
        venue's request timeout) and recorded, and the call returns as usual. A sent
        order's call that fails instead raises ``OrderMayBeLive`` with its client order
        id. (The caller's own cancellation still cancels the call: the order is then left
        for reconciliation, which finds it by client order id.)"""
        coid = client_order_id_for(intent.resolved_intent_id(CONTEXT_NAME))
        task = asyncio.ensure_future(ctx.submit(intent))
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and coid in ctx.sent_client_order_ids():
                # The order is on its way: cancelling now would lose the exchange's answer
                # and tell a bot that retries NetworkError "not sent" (a second order).
                await asyncio.wait((task,))
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()  # not sent yet (or the caller itself is being cancelled)
                await asyncio.gather(task, return_exceptions=True)
        if not task.cancelled() and task.exception() is None:
            return task.result()
        failure = None if task.cancelled() else task.exception()
        if coid in ctx.sent_client_order_ids():
            how = "was cancelled" if failure is None else f"failed ({failure!r})"
            raise OrderMayBeLive(coid, f"the call {how} after the order was sent to "
                                 f"{self._ex.id}") from failure
        if failure is None:
            raise NotActive(f"the term ended ({term.reason or 'lease lost'}) before the "
                            "order was sent", DenyReason.NOT_ACTIVE)
        if isinstance(failure, ContextUnavailable):
            raise NotActive(f"the account's state could not be read: {failure}",
                            DenyReason.REDIS_UNAVAILABLE) from None
        raise failure

    async def _in_term(self, term: Term, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call`` (a cancel) bound to ``term``: cancelled, and ``NotActive`` raised,
        if the term ends while it is pending (the cancel may or may not have reached the
        exchange then: ``fetch_order`` reads the ledger, which reconciliation settles)."""
        task = asyncio.ensure_future(call())
        ended = asyncio.ensure_future(term.ended.wait())
        try:
            await asyncio.wait((task, ended), return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise NotActive(f"the term ended ({term.reason or 'lease lost'}) while the call "
                            "was pending", DenyReason.NOT_ACTIVE)
        try:
            return task.result()
        except ContextUnavailable as e:
            raise NotActive(f"the account's state could not be read: {e}",
                            DenyReason.REDIS_UNAVAILABLE) from None

    # -- gated ---------------------------------------------------------------------------

    async def create_order(self, symbol: str, type: str, side: str, amount: Any,
                           price: Any = None, params: dict[str, Any] | None = None) -> Any:
        extra = dict(params or {})
        coid = extra.pop("clientOrderId", None)
        if type != "limit":
            raise OrderDenied(DenyReason.BAD_ORDER, f"{type!r} orders are not modelled by the "
                              "gate (limit orders only)")
        if extra:
            raise OrderDenied(DenyReason.BAD_ORDER, f"params {sorted(extra)} are not modelled "
                              "by the gate (only clientOrderId)")
        instrument = self._venue.instrument(symbol)
        if instrument is None:
            raise OrderDenied(DenyReason.UNKNOWN_SYMBOL, f"{symbol!r} is not a configured "
                              "instrument's ccxt symbol ([risk.instruments], [venue] symbols)")
        if side not in ("buy", "sell"):
            raise OrderDenied(DenyReason.BAD_ORDER, f"side {side!r}")
        if price is None:
            raise OrderDenied(DenyReason.BAD_ORDER, "a limit order needs a price")
        if coid is not None and (not isinstance(coid, str) or not coid):
            raise OrderDenied(DenyReason.BAD_ORDER, "clientOrderId must be a non-empty string")
        intent = Intent(instrument, Side(side), _decimal(amount, "amount"),
                        _decimal(price, "price"),
                        intent_id=coid or f"ccxt-{uuid.uuid4().hex}")
        term, ctx = self._current()
        decision = await self._submit(term, ctx, intent)
        if isinstance(decision, Denied):
            if decision.reason in _NOT_ACTIVE_REASONS:
                raise NotActive(f"order not admitted: {decision.reason.value}"
                                + (f" ({decision.detail})" if decision.detail else ""),
                                decision.reason)
            raise OrderDenied(decision.reason, decision.detail)
        coid = decision.client_order_id
        try:
            record = await self._ledger.order(coid)
        except INFRA_ERRORS as e:
            if coid in ctx.sent_client_order_ids():
                raise OrderMayBeLive(coid, f"sent, but its record could not be read: {e}"
                                     ) from e
            raise NotActive(f"the admitted order's record could not be read: {e}",
                            DenyReason.REDIS_UNAVAILABLE) from e
        if record is None:
            if coid in ctx.sent_client_order_ids():
                raise OrderMayBeLive(coid, "sent, but its record is missing")
            raise NotActive("the admitted order's record could not be read (not sent)",
                            DenyReason.REDIS_UNAVAILABLE)
        if record.state is OrderState.REJECTED:
            raise ccxt_async.InvalidOrder(f"{self._ex.id} rejected the order "
                                          f"{record.client_order_id}: {record.reason}")
        return self._order(record)

    # ccxt's fixed-argument conveniences: the gated create_order with those arguments
    # (so market orders are refused by it, as create_order(..., "market", ...) is).

    async def create_limit_order(self, symbol: str, side: str, amount: Any, price: Any,
                                 params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "limit", side, amount, price, params)

    async def create_limit_buy_order(self, symbol: str, amount: Any, price: Any,
                                     params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "limit", "buy", amount, price, params)

    async def create_limit_sell_order(self, symbol: str, amount: Any, price: Any,
                                      params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "limit", "sell", amount, price, params)

    async def create_market_order(self, symbol: str, side: str, amount: Any,
                                  price: Any = None,
                                  params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "market", side, amount, price, params)

    async def create_market_buy_order(self, symbol: str, amount: Any,
                                      params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "market", "buy", amount, None, params)

    async def create_market_sell_order(self, symbol: str, amount: Any,
                                       params: dict[str, Any] | None = None) -> Any:
        return await self.create_order(symbol, "market", "sell", amount, None, params)

    async def cancel_order(self, id: str, symbol: str | None = None,
                           params: dict[str, Any] | None = None) -> Any:
        record = await self._record(id)
        if record.state.terminal:
            raise ccxt_async.OrderNotFound(f"{id}: the order is {record.state.value.lower()}")
        term, ctx = self._current()
        confirmed = await self._in_term(term, lambda: ctx.cancel(record.client_order_id))
        after = await self._ledger.order(record.client_order_id) or record
        if not confirmed and not after.state.terminal:
            raise ccxt_async.ExchangeError(f"cancel of {id} not confirmed by {self._ex.id}; "
                                           "it may still be open")
        return self._order(after)

    # -- the ledger's view ---------------------------------------------------------------

    async def fetch_order(self, id: str, symbol: str | None = None,
                          params: dict[str, Any] | None = None) -> Any:
        return self._order(await self._record(id))

    async def fetch_open_orders(self, symbol: str | None = None, since: int | None = None,
                                limit: int | None = None,
                                params: dict[str, Any] | None = None) -> list[Any]:
        instrument = None if symbol is None else self._venue.instrument(symbol)
        records = [r for r in await self._ledger.open_orders()
                   if symbol is None or r.symbol == instrument]
        if since is not None:
            records = [r for r in records if r.created_ms >= since]
        if limit is not None:
            records = records[:limit]
        return [self._order(r) for r in records]

    async def _record(self, id: str) -> OrderRecord:
        """The ledger's record of a client order id, or of an exchange order id among the
        open orders."""
        record = await self._ledger.order(id)
        if record is None:
            record = next((r for r in await self._ledger.open_orders()
                           if r.venue_order_id == id), None)
        if record is None:
            raise ccxt_async.OrderNotFound(f"{id}: no such order in the account's ledger")
        return record

    def _order(self, r: OrderRecord) -> dict[str, Any]:
        """A ccxt order structure, numbers in the caller's exchange's own number type."""
        num = self._ex.parse_number
        return {
            "id": r.client_order_id, "clientOrderId": r.client_order_id,
            "timestamp": r.created_ms, "datetime": self._ex.iso8601(r.created_ms),
            "lastTradeTimestamp": None, "lastUpdateTimestamp": r.updated_ms,
            "symbol": self._venue.ccxt_symbol(r.symbol), "type": "limit",
            "timeInForce": "GTC", "postOnly": False, "reduceOnly": None, "side": r.side.value,
            "price": num(str(r.price)),
            "triggerPrice": None, "amount": num(str(r.qty)), "filled": num(str(r.filled_qty)),
            "remaining": num(str(r.qty - r.filled_qty)), "cost": None, "average": None,
            "status": _STATUS[r.state], "fee": None, "trades": [], "fees": [],
            "info": {"state": r.state.value, "venue_order_id": r.venue_order_id,
                     "token": r.token, "intent_id": r.intent_id, "reason": r.reason},
        }


def _decimal(value: Any, what: str) -> Decimal:
    """A caller's number as the decimal it wrote (a float by its shortest repr)."""
    if isinstance(value, bool):
        raise OrderDenied(DenyReason.BAD_ORDER, f"{what} is not a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise OrderDenied(DenyReason.BAD_ORDER, f"{what} is not a number") from None
    if not d.is_finite() or d <= 0:
        raise OrderDenied(DenyReason.BAD_ORDER, f"{what} must be a positive number")
    return d
