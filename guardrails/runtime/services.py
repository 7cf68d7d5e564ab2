"""What runs in the background of a ``Guard``: supervised loops, never on the order path.

For the whole life of the process (``Guard.__aenter__`` to ``__aexit__``): the registry
heartbeat (role, token and digests, said at once when the role changes) and alert
delivery. While this instance is active (one task group per term, cancelled when the
term ends): the fills/marks pump, the kill-switch listener (a HALTED latch cancels the
account's open orders; a latch older than one seen — Redis lost it — stops admission and
raises ``kill.latch_lost``: ``killswitch.follow``), the settler of in-doubt orders, and
the periodic position and P&L report. The health endpoint and the optional dashboard
are started here too.

Every loop survives infrastructure errors (logged once per outage, retried): a service
that stops would leave the account's exposure unmanaged while the lease is held. None
of them admits anything: the gate does, in Redis, against the live lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from guardrails import logs
from guardrails.config import Config, RedisConfig
from guardrails.infra import connect
from guardrails.keys import AccountKeys
from guardrails.killswitch import (
    FileLatchMemory,
    KillSwitch,
    KillSwitchError,
    Latch,
    LatchSeen,
    follow,
    read_latch,
)
from guardrails.ledger import FillOutcome, Ledger, LedgerError
from guardrails.model import Fill, OrderState, TradingState
from guardrails.ops import notify
from guardrails.prune import (
    Archive,
    PruneError,
    Pruner,
    default_archive_path,
    schedule,
    was_pruned,
)
from guardrails.reconcile import ReconcileReport, reconcile_order
from guardrails.registry import Registry
from guardrails.runtime.context import ContextUnavailable, MarkBook, cancel_order, checkpoint
from guardrails.runtime.health import start_health_server
from guardrails.statedir import StateDirError, state_dir
from guardrails.venues.base import Venue, VenueError

log = logging.getLogger("guardrails.runtime")

INFRA_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    asyncio.TimeoutError,
    VenueError,
    LedgerError,
)
"""What a background loop survives: logged and retried, never fatal."""
CLEANUP_ERRORS: tuple[type[BaseException], ...] = (ContextUnavailable, *INFRA_ERRORS)
PRUNE_ERRORS: tuple[type[BaseException], ...] = (PruneError, *INFRA_ERRORS)
RETRY_S = 2.0
"""How long a step that must succeed before trading (reconcile, first marks) waits to retry."""
PUMP_INTERVAL_S = 0.25
REPORT_INTERVAL_S = 5.0
SETTLE_INTERVAL_S = 5.0
"""How often an active instance looks up its in-doubt orders at the venue."""
KILL_ACK_TTL_MS = 86_400_000
"""Confirmations of kills/resumes are kept a day (they matter for seconds)."""
ALERT_DRAIN_S = 3.0
"""On the way down, how long queued alerts may take to leave before the process exits."""
HALT_RECHECK_S = 0.5
"""After a HALTED sweep that left orders open, sweep again this much later, then at
doubling intervals up to ``HALT_RECHECK_MAX_S`` while any is left: an order admitted
just before the latch may reach the venue at any moment up to its permit deadline."""
HALT_RECHECK_MAX_S = 5.0
LATCH_CHECK_S = 1.0
"""How often the kill listener reads the latch with no message: a latch Redis lost (a
restart from an AOF without its last second, a failover) announces nothing."""


class AccountServices:
    """The active term's background work on one account, over one started venue.

    One instance lives as long as the ``Guard`` (the foreign-fill count spans terms);
    its loops are started per term by ``guard.Guard`` and cancelled with the term.
    """

    def __init__(
        self,
        cfg: Config,
        redis: aioredis.Redis,
        venue: Venue,
        marks: MarkBook,
        *,
        instance_id: str,
        token: Callable[[], int | None],
        latch_memory: FileLatchMemory | None = None,
        latch_seen: LatchSeen | None = None,
    ) -> None:
        self.cfg = cfg
        self.redis = redis
        self.keys = AccountKeys(cfg.account_id)
        self.venue = venue
        self.marks = marks
        self.instance_id = instance_id
        self._token = token
        self._foreign_fills: set[str] = set()
        self._latch_memory = latch_memory
        self.latch_seen = latch_seen
        """The newest kill-switch latch this instance (or this host: ``latch_memory``) saw."""

    def ledger(self) -> Ledger:
        return Ledger(self.redis, self.keys, self.cfg.risk)

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start this term's loops in ``tg`` (they end when it is cancelled)."""
        tg.create_task(self.pump(), name="guard-pump")
        tg.create_task(self.kill_listener(), name="guard-kill-listener")
        tg.create_task(self.report(), name="guard-report")
        tg.create_task(self.settle_in_doubt(), name="guard-settle")
        tg.create_task(self.prune(), name="guard-prune")
        term_service = getattr(self.venue, "term_service", None)
        if term_service is not None:
            # The venue's own fence while active (the CLOB heartbeat).
            tg.create_task(term_service(), name="guard-venue-term")

    async def first_marks(self) -> None:
        """Marks in Redis before anything trades (the gate's price band needs one)."""
        ledger = self.ledger()
        symbols = sorted(self.cfg.risk.instruments)
        while True:
            checkpoint()
            try:
                marks = await self.venue.marks(symbols)
                self.marks.update(marks)
                await ledger.update_marks(marks)
                return
            except INFRA_ERRORS as e:
                logs.event(log, "marks.unavailable", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="strategies wait; retrying")
                await asyncio.sleep(RETRY_S)

    async def pump(self) -> None:
        """Venue facts into the ledger: fills (applied once per fill id) and marks."""
        ledger = self.ledger()
        symbols = sorted(self.cfg.risk.instruments)
        cursor: str | None = None
        failing = False
        while True:
            checkpoint()
            try:
                batch = await self.venue.fills_since(cursor)
                for fill in batch.fills:
                    await self._apply_fill(ledger, fill)
                cursor = batch.cursor
                marks = await self.venue.marks(symbols)
                self.marks.update(marks)
                await ledger.update_marks(marks)
                if failing:
                    logs.event(log, "pump.recovered")
                    failing = False
            except INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "pump.error", logging.WARNING,
                               error=f"{type(e).__name__}: {e}", action="retrying")
                failing = True
            await asyncio.sleep(PUMP_INTERVAL_S)

    async def settle_in_doubt(self) -> None:
        """While active, resolve orders whose outcome is in doubt, without waiting for
        the next takeover: UNKNOWN ones (an ambiguous submit) and PENDING_SUBMIT ones whose
        permit deadline has passed (they were admitted but may never have been sent).
        Each is looked up at the venue by client order id — never re-sent."""
        ledger = self.ledger()
        while True:
            checkpoint()
            await asyncio.sleep(SETTLE_INTERVAL_S)
            now_ms = int(time.time() * 1000)
            try:
                doubtful = [
                    o for o in await ledger.open_orders()
                    if o.state is OrderState.UNKNOWN
                    or (o.state is OrderState.PENDING_SUBMIT and o.deadline_ms < now_ms - 1000)
                ]
                if not doubtful:
                    continue
                report = ReconcileReport()
                for order in doubtful:
                    await reconcile_order(ledger, self.venue, order, report)
            except INFRA_ERRORS as e:
                logs.event(log, "reconcile.in_doubt_failed", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="retrying")
                continue
            logs.event(log, "reconcile.in_doubt", checked=report.checked,
                       fills_applied=report.fills_applied,
                       transitions=len(report.transitions), held=len(report.held),
                       failures=len(report.failures))

    async def _apply_fill(self, ledger: Ledger, fill: Fill) -> None:
        """Apply one venue fill (once per fill id); a fill the ledger cannot take is
        logged and skipped so it does not block the ones after it."""
        try:
            outcome = await ledger.apply_fill(fill)
        except LedgerError as e:
            logs.event(log, "fill.refused", logging.ERROR, fill_id=fill.fill_id,
                       client_order_id=fill.client_order_id, error=str(e))
            return
        if outcome is FillOutcome.DUPLICATE:
            return  # replayed from the venue's history: already applied
        level = logging.INFO if outcome is FillOutcome.APPLIED else logging.WARNING
        logs.event(log, "fill", level, client_order_id=fill.client_order_id,
                   fill_id=fill.fill_id, symbol=fill.symbol, side=fill.side.value,
                   qty=fill.qty, price=fill.price, outcome=outcome.value)
        if outcome is FillOutcome.UNKNOWN_ORDER:
            with contextlib.suppress(*INFRA_ERRORS):  # cannot tell: treat it as foreign
                if await was_pruned(self.redis, self.keys, fill.client_order_id):
                    logs.event(log, "fill.pruned_order", logging.WARNING, fill_id=fill.fill_id,
                               client_order_id=fill.client_order_id,
                               detail="a late report of an order pruned after the retention "
                                      "window (terminal: a fill on it is refused)")
                    return
            if await self._history_lost():
                logs.event(log, "fill.history_lost", logging.WARNING, fill_id=fill.fill_id,
                           client_order_id=fill.client_order_id,
                           detail="the account's Redis history is gone (no epoch, or the "
                                  "lost-history alarm is set): the order may be one that "
                                  "history held, so it is not counted as foreign; nothing is "
                                  "admitted until `guardrails fence recover` rebuilds the "
                                  "ledger from the venue")
                return
            await self._foreign_fill(fill)

    async def _history_lost(self) -> bool:
        """Whether the account's keys lost their history under this instance (FLUSHALL,
        an empty restart: ``fencing.py``): the epoch is gone or the alarm is set. A fill
        of an unknown order is then no evidence of another writer — the ledger that knew
        the order went with the history. Redis unreadable: False (counted as foreign:
        fail closed)."""
        try:
            epoch = await self.redis.get(self.keys.epoch)
            alarm = await self.redis.exists(self.keys.fence_alarm)
        except INFRA_ERRORS:
            return False
        return epoch is None or bool(alarm)

    async def _foreign_fill(self, fill: Fill) -> None:
        """A fill on this account of an order the ledger never admitted: another writer
        trades the account (a second copy on another host, a human, another bot on the
        same key). The venue is the only truth every copy shares, so this is where two
        lease domains show: halt the account (``foreign_activity``) once
        ``[runtime] foreign_activity_threshold`` such fills were seen (0: only log)."""
        self._foreign_fills.add(fill.fill_id)
        seen = len(self._foreign_fills)
        threshold = self.cfg.runtime.foreign_activity_threshold
        logs.event(log, "foreign_activity", logging.ERROR, fill_id=fill.fill_id,
                   client_order_id=fill.client_order_id, symbol=fill.symbol,
                   side=fill.side.value, qty=fill.qty, price=fill.price, seen=seen,
                   threshold=threshold or "off",
                   detail="a fill of an order guardrails never admitted: another writer "
                          "trades this account")
        if not threshold or seen < threshold:
            return
        halt_errors: tuple[type[BaseException], ...] = (KillSwitchError, *INFRA_ERRORS)
        try:
            if (await read_latch(self.redis, self.keys)).state is TradingState.HALTED:
                return
            await KillSwitch(self.redis, self.keys).set_state(
                TradingState.HALTED,
                reason=f"foreign_activity: {seen} fill(s) of orders guardrails never admitted "
                       f"(last: {fill.fill_id} of {fill.client_order_id} {fill.side.value} "
                       f"{fill.qty} {fill.symbol} @ {fill.price})",
                by=f"guardrails {self.instance_id} (foreign activity)",
            )
        except halt_errors as e:
            logs.event(log, "foreign_activity.halt_failed", logging.ERROR,
                       error=f"{type(e).__name__}: {e}")

    async def kill_listener(self) -> None:
        """React to the kill switch: on HALTED, cancel the account's open orders.

        The gate refuses new orders by itself once the latch is set; this only takes
        down what is already resting at the venue.
        """
        while True:
            checkpoint()
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.control_channel)
                # After a sweep that left orders open (an order admitted just before the
                # latch and still on its way, a cancel the venue did not confirm), sweep
                # again, at doubling intervals, until none is left: an order sent before
                # the latch can land at the venue up to its permit deadline.
                recheck_at: float | None = None
                pause = HALT_RECHECK_S
                left = await self.cancel_if_halted("subscribed")
                if left:
                    recheck_at = time.monotonic() + pause
                check_at = time.monotonic() + LATCH_CHECK_S
                while True:
                    checkpoint()
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.25)
                    if msg is not None:
                        left = await self.cancel_if_halted("control message")
                        pause = HALT_RECHECK_S
                        recheck_at = time.monotonic() + pause if left else None
                    elif recheck_at is not None and time.monotonic() >= recheck_at:
                        left = await self.cancel_if_halted("recheck")
                        pause = min(pause * 2, HALT_RECHECK_MAX_S)
                        recheck_at = time.monotonic() + pause if left else None
                    elif time.monotonic() >= check_at:
                        check_at = time.monotonic() + LATCH_CHECK_S
                        if await self._latch_went_back():
                            left = await self.cancel_if_halted("latch lost")
                            pause = HALT_RECHECK_S
                            recheck_at = time.monotonic() + pause if left else None
            except INFRA_ERRORS as e:
                logs.event(log, "kill.listener_error", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="resubscribing")
                await asyncio.sleep(1.0)
            finally:
                # Closing the kill listener's subscription (often on a dead connection):
                # it is being replaced or the term is ending either way.
                with logs.swallowed(log, "kill_listener.unsubscribe"):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _ack_latch(self, latch: Latch) -> None:
        """Tell the operator's ``kill``/``resume`` that this active instance read the latch
        (``keys.kill_acks``): the count it prints is of instances that confirmed, not of
        pub/sub subscribers. A failed ack is logged; the latch is in force regardless."""
        if latch.at_ms is None:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(self.keys.kill_acks, self.instance_id, f"{latch.at_ms}:{latch.state.value}")
                pipe.pexpire(self.keys.kill_acks, KILL_ACK_TTL_MS)
                await pipe.execute()
        except INFRA_ERRORS as e:
            logs.event(log, "kill.ack_failed", logging.WARNING, error=f"{type(e).__name__}: {e}")

    def latch_floor(self) -> int:
        """The lowest latch version the gate may admit under (``LatchSeen.floor``)."""
        return self.latch_seen.floor if self.latch_seen is not None else 0

    def recall_latch(self) -> None:
        """At a takeover: what this host's other instances saw since this one started
        (the memory file), if it is newer than this instance's own."""
        if self._latch_memory is None:
            return
        try:
            kept = self._latch_memory.load()
        except StateDirError as e:  # refused since the start: keep our own
            logs.event(log, "latch.memory_refused", logging.WARNING, error=str(e))
            return
        mine = self.latch_seen
        if kept is not None and (mine is None or (kept.version, bool(kept.lost))
                                 > (mine.version, bool(mine.lost))):
            self.latch_seen = kept

    def follow_latch(self, latch: Latch) -> bool:
        """Judge the latch just read against the newest one seen (``killswitch.follow``)
        and remember the outcome (in the host's memory too, before any ack of the latch
        is written). True when it has just gone backwards, which is said once, as
        ``kill.latch_lost``: from then on the gate refuses everything (``latch_lost``)
        until a newer latch is written."""
        before = self.latch_seen
        seen, went_back = follow(before, latch)
        if seen == before:
            return False
        self.latch_seen = seen
        if self._latch_memory is not None:
            self._latch_memory.save(seen)
        account = self.keys.account
        if went_back:
            assert before is not None
            logs.event(
                log, "kill.latch_lost", logging.ERROR, lost=seen.lost,
                remembered_state=before.state.value,
                seen_state=latch.state.value, seen_version=latch.version,
                seen_by=latch.by or None,
                detail="the kill-switch latch in Redis is older than one this instance saw "
                       "(absent reads version 0): Redis lost recent writes (a restart without "
                       "its last second of AOF, a failover to a replica without them)",
                action=f"this instance admits nothing on {account} until a new latch is "
                       f"written: decide what the account should do and run `guardrails kill "
                       f"--account {account} --reason '...'` or `guardrails resume --account "
                       f"{account}` against this Redis; then check its persistence and "
                       "replication")
        elif before is not None and before.lost:
            logs.event(log, "kill.latch_renewed", state=latch.state.value,
                       version=latch.version, by=latch.by or None,
                       detail="a new latch was written after the lost one: following it")
        return went_back

    async def _latch_went_back(self) -> bool:
        """Read and follow the latch (``follow_latch``); False when it cannot be read (the
        gate fails closed on a broken latch by itself)."""
        errors: tuple[type[BaseException], ...] = (KillSwitchError, *INFRA_ERRORS)
        try:
            latch = await read_latch(self.redis, self.keys)
        except errors:
            return False
        return self.follow_latch(latch)

    async def cancel_if_halted(self, why: str) -> int | None:
        """If the latch says HALTED, or is lost (older than one seen: ``follow_latch``),
        cancel every open order of the account and return how many are left open (not
        confirmed gone by the venue: still on their way, or a cancel that failed); 1 when
        the latch or the open orders could not be read (so the caller looks again); None
        when the latch is neither.

        Logs ``kill.halted`` (trigger, open orders, cancels confirmed) after every cancel
        has been confirmed by the venue and recorded; a recheck with nothing left open
        stays quiet.
        """
        errors: tuple[type[BaseException], ...] = (KillSwitchError, *INFRA_ERRORS)
        try:
            latch = await read_latch(self.redis, self.keys)
        except errors as e:
            logs.event(log, "kill.read_failed", logging.WARNING, error=str(e))
            return 1  # it cannot tell: look again (a recheck reads the latch first)
        self.follow_latch(latch)
        lost = self.latch_seen is not None and bool(self.latch_seen.lost)
        if why in ("control message", "subscribed"):
            await self._ack_latch(latch)
        if why == "control message":
            logs.event(log, "kill.state", state=latch.state.value, reason=latch.reason or None,
                       by=latch.by or None)
        if latch.state is not TradingState.HALTED and not lost:
            return None
        ledger = self.ledger()
        try:
            open_orders = await ledger.open_orders()
        except INFRA_ERRORS as e:
            logs.event(log, "kill.cancel_failed", logging.WARNING, error=str(e))
            return 1
        if why == "recheck" and not open_orders:
            return 0
        canceled = 0
        for rec in open_orders:
            reason = "kill switch lost by Redis" if lost else f"kill switch: {latch.reason}"
            if await cancel_order(ledger, self.venue, rec.client_order_id, reason=reason,
                                  log=log):
                canceled += 1
        logs.event(log, "kill.halted", trigger=why, open_orders=len(open_orders),
                   canceled=canceled, reason=latch.reason or None)
        return len(open_orders) - canceled

    async def report(self) -> None:
        """Every ``REPORT_INTERVAL_S``: log the positions and budget, and record the day's
        P&L sample every dashboard draws (``keys.pnl_history``)."""
        ledger = self.ledger()
        while True:
            checkpoint()
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                positions = await ledger.positions()
                budget = await ledger.budget()
                await ledger.record_pnl_sample(budget, int(time.time() * 1000))
            except INFRA_ERRORS as e:
                logs.event(log, "positions.unavailable", logging.WARNING, error=str(e))
                continue
            held = ",".join(
                f"{sym}:{p.qty}@{p.avg_cost}" for sym, p in sorted(positions.items()) if p.qty
            )
            logs.event(log, "positions", token=self._token(), positions=held or "flat",
                       budget_used=getattr(budget, "used", None),
                       budget_limit=getattr(budget, "limit", None))

    async def prune(self) -> None:
        """Every ``[prune] interval`` while active: archive and remove the terminal orders
        older than the retention window (``prune.py``). Housekeeping, never a reason to
        stop trading: a failure is logged and the next interval tries again. A round whose
        archive is locked by another sweep (``guardrails prune --apply``) is skipped, not
        waited for. The schedule (or, disabled, its absence) is recorded for the doctor."""
        p = self.cfg.prune
        path = Path(p.archive) if p.archive else default_archive_path(self.keys, state_dir())
        try:
            await schedule(self.redis, self.keys, interval_ms=p.interval if p.enabled else None,
                           archive=path)
        except INFRA_ERRORS as e:  # housekeeping: the doctor may warn, trading goes on
            logs.event(log, "prune.unscheduled", logging.WARNING, error=str(e))
        if not p.enabled:
            return
        pruner = Pruner(self.redis, self.keys, Archive(path), retention_ms=p.retention,
                        batch=p.batch, by=self.instance_id)
        while True:
            checkpoint()
            await asyncio.sleep(p.interval / 1000)
            try:
                rep = await pruner.sweep()
            except PRUNE_ERRORS as e:
                logs.event(log, "prune.failed", logging.ERROR, archive=str(path), error=str(e))
                continue
            if rep.skipped:
                logs.event(log, "prune.skipped", archive=str(path),
                           detail="another sweep holds the archive's lock (guardrails prune?)")
                continue
            if rep.pruned_orders or rep.pruned_fills or rep.recovered:
                logs.event(log, "prune.swept", orders=rep.pruned_orders,
                           intents=rep.pruned_intents, fills=rep.pruned_fills,
                           kept=rep.kept, batches=rep.batches,
                           max_batch_ms=round(rep.max_batch_ms, 2), archive=str(path))


# -- for the life of the process ---------------------------------------------------------


async def heartbeat(
    registry: Registry,
    *,
    role: Callable[[], str],
    token: Callable[[], int | None],
    stop: asyncio.Event,
    role_changed: asyncio.Event,
) -> None:
    """Beat into the instance registry: slowly as standby, and at once when the role
    changes (``role_changed``) or the process starts stopping."""
    failing = False
    while True:
        checkpoint()
        now = "stopping" if stop.is_set() else role()
        try:
            await registry.heartbeat(now, token(), ttl_ms=registry.ttl_ms(now))
            if failing:
                logs.event(log, "redis.recovered", during="heartbeat")
            failing = False
        except INFRA_ERRORS as e:
            if not failing:
                logs.event(log, "runtime.redis_unavailable", logging.WARNING,
                           during="heartbeat", error=f"{type(e).__name__}: {e}")
            failing = True
        interval = registry.interval_ms(now) / 1000  # a standby beats slowly
        if stop.is_set():
            await asyncio.sleep(interval)
        else:
            # say "stopping" or a new role as soon as it changes
            role_changed.clear()
            if role() == now:
                await wait_any((stop, role_changed), interval)


async def alerts(notifier: notify.Notifier, router: notify.AlertRouter) -> None:
    """Deliver alerts in the background (never on the order path), and let the router
    notice a Redis outage that has lasted past its threshold."""
    async with asyncio.TaskGroup() as tg:
        tg.create_task(notifier.run())
        while True:
            await asyncio.sleep(1.0)
            router.tick()


Closer = Callable[[], Awaitable[None]]


async def start_health(
    port: int | None, facts: Callable[[], dict[str, object]]
) -> tuple[Closer | None, str]:
    """Serve ``GET /health`` on ``port`` (None: not served). Returns (closer, url)."""
    if port is None:
        return None, ""
    runner, url = await start_health_server(port, facts)
    logs.event(log, "health.serving", url=url)
    return runner.cleanup, url


DASHBOARD_CLIENT_NAME = "guardrails-dashboard"
"""What ``CLIENT LIST`` shows for the in-process dashboard's own connections."""


async def start_dashboard(redis_cfg: RedisConfig, cfg: Config) -> Closer | None:
    """``--dashboard``: serve OPS's dashboard (``guardrails.ops.dashboard``) in this process.

    The dashboard reads through a client of its own (``redis_cfg``, a pool of
    ``DASHBOARD_MAX_CONNECTIONS``), never the bot's: its page is unauthenticated, and
    whoever can reach it must not be able to take the connections the lease renews on.

    Optional by design: if the port is taken (another copy serves it already), this is
    logged and the instance runs on without it. The import is deferred: the dashboard
    pulls in the web stack, which a process without ``--dashboard`` never needs.
    """
    dashboard: Any = importlib.import_module("guardrails.ops.dashboard")
    port = cfg.runtime.dashboard_port
    try:
        client = await connect.connect(redis_cfg,
                                       max_connections=dashboard.DASHBOARD_MAX_CONNECTIONS,
                                       client_name=DASHBOARD_CLIENT_NAME)
    except INFRA_ERRORS as e:  # a cluster is contacted at connect
        logs.event(log, "dashboard.unavailable", logging.WARNING, port=port,
                   reason=f"{type(e).__name__}: {e}")
        return None
    try:
        app = dashboard.create_app(client, accounts=[cfg.account_id], config=cfg)
        runner, url = await dashboard.serve(app, "127.0.0.1", port)
    except OSError as e:
        logs.event(log, "dashboard.unavailable", logging.WARNING, port=port,
                   reason=f"{type(e).__name__}: {e}")
        await client.aclose()
        return None
    except BaseException:
        await client.aclose()
        raise
    logs.event(log, "dashboard.serving", url=url)

    async def close() -> None:
        try:
            await runner.cleanup()
        finally:
            await client.aclose()

    return close


async def wait_any(events: tuple[asyncio.Event, ...], seconds: float | None) -> None:
    """Wait until one of ``events`` is set or ``seconds`` pass (None: no limit)."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
