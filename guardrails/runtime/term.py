"""One term of leadership: reconcile first, then trade under the lease, until it ends.

Invariants upheld: *one writer per account* and *fail closed, and say why*. A term
begins when this instance acquires the lease. Before anything may trade, ``prepare``
runs in order: the venue's term-start step (Polymarket: cancel what the previous term
left resting), reconciliation of every non-terminal order with the venue (until that
succeeds nothing trades; the lease is kept meanwhile so no other instance trades
unreconciled), the venue's takeover step (the EVM venue's fenced nonce sync), the first
marks, and a sweep if the kill switch is HALTED (or its latch was lost: older than one
this host saw). Only then is the ``Term`` opened: the
handle through which bodies (``guard.active()`` blocks, or ``guardrails run``'s
strategies) get their ``Context``. When the term ends — lease lost, self-fence, kill
``--revoke``, stop — every body is cancelled and waited for (bounded), and only then is
the lease released.

Strategy failure policy (``StrategySupervisor``, the body ``guardrails run`` runs): a
strategy that raises — anything, ``SystemExit`` and ``KeyboardInterrupt`` included —
is logged with its name and stops for the life of the process (no crash loop); the
orders it sent in this term that are still open are cancelled (its exposure is not left
unmanaged); the other strategies keep running, and the account's risk stays bounded by
the gate. The exception is an infrastructure blip: a strategy that ends with
``ContextUnavailable`` (a Context read Redis or the venue could not answer) is
restarted within the term with a bounded, logged backoff. Stopping is bounded too: a
strategy that does not end within ``runtime.strategy_stop_timeout`` of being cancelled
is abandoned (it can no longer submit) and the stop — lease release included — goes on.

What this does NOT guarantee: that a paused process notices it lost the lease before
it tries to trade — that is why every order is admitted inside Redis against the
current token and a live lease; the local checks only make it fail sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Protocol

from guardrails import logs
from guardrails.config import Config, EvmVenueConfig
from guardrails.gate import OrderGate
from guardrails.lease import Leadership
from guardrails.reconcile import reconcile
from guardrails.runtime.context import Context, ContextUnavailable, HandedOver, MarkBook, checkpoint
from guardrails.runtime.services import CLEANUP_ERRORS, INFRA_ERRORS, RETRY_S, AccountServices
from guardrails.runtime.strategy_loader import LoadedStrategy

log = logging.getLogger("guardrails.runtime")

BODY_GRACE_S = 1.0
"""Beyond ``runtime.strategy_stop_timeout``, how long a cancelled body may take to leave."""
RECANCEL_S = 0.5
"""How often a cancellation a body swallowed is repeated while the term waits for it."""


# -- before anything trades ------------------------------------------------------------


async def prepare(services: AccountServices, leadership: Leadership) -> bool:
    """The steps of a new term before anything may trade (see the module doc), each
    retried while Redis or the venue cannot answer. False when the venue's fence says
    this term is already over (the caller ends the term)."""
    await _venue_begin_term(services)
    await _reconcile_until_ok(services, leadership.token)
    if not await _venue_takeover(services, leadership):
        return False
    await services.first_marks()
    services.recall_latch()  # what this host's other instances saw of the latch meanwhile
    await services.cancel_if_halted("takeover")
    checkpoint()  # a stop requested meanwhile must not open the term
    return True


async def _reconcile_until_ok(services: AccountServices, token: int) -> None:
    """No body starts until every non-terminal order is settled with the venue.

    A failed reconciliation (Redis or the venue unreachable, or the venue disagreeing
    with the ledger) keeps the account fail-closed: it is logged with its reasons and
    retried; the lease is kept meanwhile so no other instance trades unreconciled.
    """
    ledger = services.ledger()
    attempt = 0
    while True:
        checkpoint()
        attempt += 1
        try:
            report = await reconcile(ledger, services.venue, now_ms=int(time.time() * 1000))
        except INFRA_ERRORS as e:
            logs.event(log, "reconcile.failed", logging.ERROR, token=token,
                       attempt=attempt, error=f"{type(e).__name__}: {e}",
                       action="fail closed: strategies not started; retrying")
            await asyncio.sleep(RETRY_S)
            continue
        if not report.ok:
            why = "; ".join(f"{coid}: {reason}" for coid, reason in report.failures[:5])
            logs.event(log, "reconcile.failed", logging.ERROR, token=token,
                       attempt=attempt, summary=report.summary(), why=why,
                       action="fail closed: strategies not started; retrying")
            await asyncio.sleep(RETRY_S)
            continue
        logs.event(log, "reconcile.done", token=token, checked=report.checked,
                   fills_applied=report.fills_applied,
                   transitions=len(report.transitions), held=len(report.held))
        return


async def _venue_begin_term(services: AccountServices) -> None:
    """Venues with a term-start step (Polymarket: cancel what the previous term left
    resting, start the heartbeat) run it before reconciliation, so reconciliation sees
    the cancels. Retried while the venue cannot be asked; strategies wait."""
    begin = getattr(services.venue, "begin_term", None)
    if begin is None:
        return
    while True:
        checkpoint()
        try:
            await begin()
            return
        except INFRA_ERRORS as e:
            logs.event(log, "venue.begin_term_failed", logging.WARNING,
                       error=f"{type(e).__name__}: {e}",
                       action="fail closed: strategies wait; retrying")
            await asyncio.sleep(RETRY_S)


async def _venue_takeover(services: AccountServices, leadership: Leadership) -> bool:
    """Venues with a takeover step (the EVM venue's fenced ``sync_nonce``) run it
    before any strategy. Retried while the venue cannot be asked; False when the
    venue's fence says this term is over."""
    sync = getattr(services.venue, "sync_nonce", None)
    if sync is None:
        return True
    while True:
        checkpoint()
        try:
            await sync(leadership.token, leadership.holder_id)
            return True
        except INFRA_ERRORS as e:
            logs.event(log, "venue.takeover_failed", logging.WARNING,
                       error=f"{type(e).__name__}: {e}",
                       action="fail closed: strategies wait; retrying")
            await asyncio.sleep(RETRY_S)
        except Exception as e:  # the venue's fence refused this token (NotHolder)
            logs.event(log, "venue.takeover_refused", logging.ERROR, token=leadership.token,
                       error=f"{type(e).__name__}: {e}", action="stepping down")
            return False


# -- the open term ---------------------------------------------------------------------


class Body(Protocol):
    """What the term cancels when it ends (``guard._Active``)."""

    def cancel(self, reason: str) -> None:
        """Cancel the body (again only if a cancellation was swallowed)."""


class Term:
    """An open term of leadership: reconciled, its services running, bodies admitted.

    ``context(name)`` builds the ``Context`` a body trades through (gate, venue and
    ledger, all under this term's ``Leadership``: once it is lost, every gated call is
    refused locally, and Redis refuses the token regardless). ``end`` cancels every
    registered body and waits for them to leave.
    """

    def __init__(self, cfg: Config, services: AccountServices, leadership: Leadership) -> None:
        self.cfg = cfg
        self.leadership = leadership
        self._services = services
        self._bodies: set[Body] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.ended = asyncio.Event()
        """Set the moment the term ends (before its bodies are cancelled)."""
        self.reason = ""
        """Why it ended ("stopping", "lease lost", ...), once ``ended`` is set."""
        self._handed = HandedOver()
        """The client order ids this term handed to the venue (every context's sends)."""

    @property
    def token(self) -> int:
        """This term's fencing token (every admission carries it)."""
        return int(self.leadership.token)

    @property
    def marks(self) -> MarkBook:
        return self._services.marks

    def context(self, name: str) -> Context:
        """A new ``Context`` named ``name`` (intent ids and logs carry the name)."""
        services = self._services
        return Context(
            name,
            gate=OrderGate(services.redis, services.keys, self.cfg.risk,
                           latch_floor=services.latch_floor),
            ledger=services.ledger(),
            venue=services.venue,
            leadership=self.leadership,
            risk=self.cfg.risk,
            marks=services.marks,
            allocate_nonce=isinstance(self.cfg.venue, EvmVenueConfig),
            handed=self._handed,
        )

    def enter(self, body: Body) -> bool:
        """Register ``body`` (cancelled when the term ends); False if it already has."""
        if self.ended.is_set():
            return False
        self._bodies.add(body)
        self._empty.clear()
        return True

    def leave(self, body: Body) -> None:
        self._bodies.discard(body)
        if not self._bodies:
            self._empty.set()

    async def end(self, reason: str) -> None:
        """End the term: cancel every body, and wait for them to leave — at most
        ``runtime.strategy_stop_timeout`` plus ``BODY_GRACE_S``. A body still inside
        then swallowed its cancellation: it is abandoned (its leadership is lost, so
        every gated call it makes is refused) and the term ends without it."""
        self.reason = reason
        self.ended.set()
        limit = self.cfg.runtime.strategy_stop_timeout / 1000 + BODY_GRACE_S
        until = time.monotonic() + limit
        while self._bodies and time.monotonic() < until:
            # Again each slice: a client library's timeout firing with the cancel can
            # swallow it (docs/chaos.md); the body's cancel() repeats only such a one.
            for body in list(self._bodies):
                body.cancel(reason)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._empty.wait()),
                                       min(RECANCEL_S, max(until - time.monotonic(), 0)))
        if self._bodies:
            logs.event(log, "guard.body_abandoned", logging.ERROR, token=self.token,
                       bodies=len(self._bodies), timeout_ms=int(limit * 1000),
                       reason="a guard.active() body did not leave after being cancelled; "
                              "its calls are refused and the term ends without it")


# -- guardrails run's body: the configured strategies ------------------------------------


_ABANDONED: set[asyncio.Task[BaseException | None]] = set()
"""Strategy tasks that ignored their cancellation (kept referenced until the process exits)."""


class StrategySupervisor:
    """Runs the configured strategies, each with its own ``Context``, for one term at a
    time (see the module doc's failure policy). ``crashed`` spans terms: a crashed or
    abandoned strategy is not started again by this process."""

    def __init__(self, cfg: Config, strategies: list[LoadedStrategy],
                 crashed: set[str] | None = None) -> None:
        self.cfg = cfg
        self.strategies = strategies
        self.crashed: set[str] = crashed if crashed is not None else set()
        self._token: int | None = None

    async def run_term(self, term: Term) -> None:
        """Run every strategy not crashed for ``term``; return only when cancelled (a
        term with every strategy finished still holds the lease and runs its services)."""
        self._token = term.token
        try:
            async with asyncio.TaskGroup() as tg:
                for loaded in self.strategies:
                    if loaded.name in self.crashed:
                        continue
                    tg.create_task(self._run_strategy(loaded, term.context(loaded.name)))
            await asyncio.Event().wait()
        finally:
            self._token = None

    async def _run_strategy(self, loaded: LoadedStrategy, ctx: Context) -> None:
        """Supervise one strategy for this term.

        Finished: logged. ``ContextUnavailable`` escaping it (an infrastructure blip):
        restarted after a backoff that doubles from ``runtime.strategy_restart_backoff`` up
        to ``strategy_restart_backoff_max`` (reset once it ran that long without failing).
        Anything else, ``SystemExit``/``KeyboardInterrupt`` included: crashed — its open
        orders are cancelled and it is not started again by this process.
        """
        rt = self.cfg.runtime
        delay = rt.strategy_restart_backoff / 1000
        attempt = 0
        while True:
            checkpoint()
            logs.event(log, "strategy.started", strategy=loaded.name, token=self._token,
                       attempt=attempt or None)
            started = time.monotonic()
            error = await self._strategy_term(loaded, ctx)
            if error is None:
                logs.event(log, "strategy.finished", strategy=loaded.name)
                return
            if not _is_infra_blip(error):
                self.crashed.add(loaded.name)
                logs.event(log, "strategy.crashed", logging.ERROR, exc_info=error,
                           strategy=loaded.name, error=f"{type(error).__name__}: {error}")
                await self._cancel_sent(loaded.name, ctx)
                return
            if time.monotonic() - started >= rt.strategy_restart_backoff_max / 1000:
                delay = rt.strategy_restart_backoff / 1000  # it had recovered: start over
            attempt += 1
            logs.event(log, "strategy.restarting", logging.WARNING, strategy=loaded.name,
                       attempt=attempt, delay_ms=int(delay * 1000),
                       error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, rt.strategy_restart_backoff_max / 1000)

    async def _strategy_term(self, loaded: LoadedStrategy, ctx: Context) -> BaseException | None:
        """Run ``strategy.run(ctx)`` once in its own task: None when it returned, or what
        it raised (never re-raised here: a ``SystemExit`` must not reach the event loop).

        When this supervisor is cancelled (the term ends), the strategy is cancelled and
        given ``runtime.strategy_stop_timeout`` to end; one still running then swallowed
        the cancellation: it is abandoned (its leadership is gone, so it cannot submit),
        marked crashed so no later term starts it again, and the stop goes on.
        """
        task = asyncio.create_task(_captured(loaded.strategy.run(ctx)),
                                   name=f"strategy-{loaded.name}")
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.cfg.runtime.strategy_stop_timeout / 1000)
            if not done:
                self.crashed.add(loaded.name)
                _ABANDONED.add(task)
                logs.event(log, "strategy.abandoned", logging.ERROR, strategy=loaded.name,
                           stop_timeout_ms=self.cfg.runtime.strategy_stop_timeout,
                           reason="it did not end after being cancelled (swallows "
                           "CancelledError); it can no longer submit and is not restarted")
            raise
        if task.cancelled():  # cancelled by nothing of ours: the strategy raised it itself
            return asyncio.CancelledError("the strategy's run ended with its own CancelledError")
        return task.result()

    async def _cancel_sent(self, name: str, ctx: Context) -> None:
        sent = set(ctx.sent_client_order_ids())
        try:
            still_open = [o.client_order_id for o in await ctx.open_orders()
                          if o.client_order_id in sent]
        except CLEANUP_ERRORS as e:
            logs.event(log, "strategy.cleanup_failed", logging.WARNING, strategy=name,
                       error=f"{type(e).__name__}: {e}")
            return
        for coid in still_open:
            await ctx.cancel(coid)
        logs.event(log, "strategy.stopped", strategy=name, canceled_open_orders=len(still_open))


async def _captured(run: Awaitable[None]) -> BaseException | None:
    """Await a strategy's ``run``; return what it raised instead of raising it.

    Why: asyncio re-raises ``SystemExit`` and ``KeyboardInterrupt`` from a task straight
    out of the event loop, which would take every strategy and the lease release down
    with it. Cancellation (and ``GeneratorExit``) pass through untouched.
    """
    try:
        await run
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except BaseException as e:  # a strategy's failure, whatever it is, is a value
        return e
    return None


def _is_infra_blip(error: BaseException) -> bool:
    """True when ``error`` is (or was caused by) a ``ContextUnavailable``."""
    seen = 0
    cur: BaseException | None = error
    while cur is not None and seen < 10:
        if isinstance(cur, ContextUnavailable):
            return True
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    return False

