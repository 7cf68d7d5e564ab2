"""``guardrails run``: the configured strategies, run only while this instance holds the lease.

Invariants upheld: *one writer per account* and *fail closed, and say why*. The
process (1) validates the config and loads every strategy before touching anything,
(2) takes the host-local guard (a second copy needs ``--standby``), (3) heartbeats
into the instance registry, then (4) loops under the ``LeaderElector``: as standby it
waits for the lease; on becoming active it first checks that the account's stored
limits equal its own (a mismatch refuses to lead and names each difference), then
reconciles every non-terminal order with the venue (until that succeeds nothing
trades), and only then starts, in one task group, the fills/marks pump, the
kill-switch listener, a settler of in-doubt orders, a periodic position report and
every strategy, each with its own ``Context``. When the lease is lost or the process
is told to stop, the task group is cancelled; the lease is released only after the
strategies have stopped.

Strategy failure policy: a strategy that raises — anything, ``SystemExit`` and
``KeyboardInterrupt`` included — is logged with its name and stops for the life of the
process (no crash loop); the orders it sent in this term that are still open are
cancelled (its exposure is not left unmanaged); the other strategies keep running, and
the account's risk stays bounded by the gate. The exception is an infrastructure blip:
a strategy that ends with ``ContextUnavailable`` (a Context read Redis or the venue
could not answer) is restarted within the term with a bounded, logged backoff, so it is
not left dead while this instance keeps the lease. Stopping is bounded too: a strategy
that does not end within ``runtime.strategy_stop_timeout`` of being cancelled is
abandoned (it can no longer submit) and the stop — lease release included — goes on.

What this does NOT guarantee: that a paused process notices it lost the lease
before it tries to trade — that is why every order is admitted inside Redis against
the current token and a live lease; the local checks only make it fail sooner.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from guardrails import logs
from guardrails.config import Config, ConfigError, EvmVenueConfig, load_config
from guardrails.fencing import FileFenceMemory
from guardrails.gate import OrderGate
from guardrails.infra import connect, persistence
from guardrails.infra.embedded import EmbeddedRedisError, state_dir
from guardrails.keys import AccountKeys
from guardrails.lease import LeaderElector, Leadership, Lease
from guardrails.ledger import FillOutcome, Ledger, LedgerError
from guardrails.model import Fill, OrderState, TradingState
from guardrails.ops import notify
from guardrails.prune import Archive, PruneError, Pruner, default_archive_path, was_pruned
from guardrails.reconcile import ReconcileReport, reconcile, reconcile_order
from guardrails.registry import InstanceInfo, Registry, new_instance_id
from guardrails.runtime import identity, localguard
from guardrails.runtime.context import Context, ContextUnavailable, MarkBook, cancel_order, checkpoint
from guardrails.runtime.strategy_loader import LoadedStrategy, load_strategies
from guardrails.venues import make_venue
from guardrails.venues.base import Venue, VenueError

log = logging.getLogger("guardrails.runtime")

_INFRA_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.RedisError,
    OSError,
    asyncio.TimeoutError,
    VenueError,
    LedgerError,
)
_CLEANUP_ERRORS: tuple[type[BaseException], ...] = (ContextUnavailable, *_INFRA_ERRORS)
_PRUNE_ERRORS: tuple[type[BaseException], ...] = (PruneError, *_INFRA_ERRORS)
LIMITS_RECHECK_S = 5.0
"""How often a standby whose limits differ from the account's checks again."""
RECONCILE_RETRY_S = 2.0
PUMP_INTERVAL_S = 0.25
REPORT_INTERVAL_S = 5.0
SETTLE_INTERVAL_S = 5.0
"""How often an active instance looks up its in-doubt orders at the venue."""
KILL_ACK_TTL_MS = 86_400_000
"""Confirmations of kills/resumes are kept a day (they matter for seconds)."""
ALERT_DRAIN_S = 3.0
"""On the way down, how long queued alerts may take to leave before the process exits."""
HALT_RECHECK_S = 1.0
_DURABILITY_RANK = {persistence.Durability.VOLATILE: 0, persistence.Durability.UNKNOWN: 1,
                    persistence.Durability.DURABLE: 2}
"""After a HALTED sweep, sweep again once this much later (catches in-flight sends)."""


def cmd_run(args: argparse.Namespace) -> int:
    """Entry point of ``guardrails run``. 0 after a clean stop, 2 if it could not start."""
    logs.setup(fmt=getattr(args, "log_format", "kv"))
    cfg = load_config(args.config, args.redis_url)  # ConfigError -> exit 2 in cli.main
    try:
        channels = notify.channels_from_config(cfg.notify)
    except ValueError as e:  # a [[notify]] entry that could never deliver: refuse at start
        raise ConfigError(f"{cfg.source}: {e}") from None
    strategies = load_strategies(cfg, source=str(args.config))
    return _run_loop(_main(cfg, args, strategies, channels))


async def _main(cfg: Config, args: argparse.Namespace, strategies: list[LoadedStrategy],
                channels: list[notify.Channel]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)

    # The host lock first: it is keyed by the account alone, so a refused copy never
    # starts (or even looks for) a Redis.
    try:
        guard = localguard.acquire(cfg.account_id, standby=args.standby,
                                   lock_dir=cfg.runtime.lock_dir)
    except localguard.AlreadyRunning as e:
        print(
            f"guardrails run: refused: {e}\n"
            f"  another copy of account {cfg.account_id} already runs on this host (whatever "
            "Redis it uses); start this one with --standby to run it deliberately as a standby",
            file=sys.stderr,
        )
        return 2
    except localguard.LocalGuardError as e:  # e.g. a lock_dir that is a file
        where = ("runtime.lock_dir" if cfg.runtime.lock_dir
                 else f"${localguard.LOCK_DIR_ENV}" if os.environ.get(localguard.LOCK_DIR_ENV)
                 else "host lock")
        print(f"guardrails run: {cfg.source}: {where}: {e}", file=sys.stderr)
        return 2
    try:
        url = await connect.resolve_url(cfg.redis.url, start=True)
    except EmbeddedRedisError as e:
        logs.event(log, "runtime.redis_unavailable", logging.ERROR, error=str(e))
        print(f"guardrails run: {e}", file=sys.stderr)
        guard.release()
        return 1
    target = connect.describe(url)
    client = await connect.connect(cfg.redis.model_copy(update={"url": url}))
    try:
        runtime = Runtime(cfg, client, strategies, args=args, stop=stop, target=target,
                          channels=channels)
        return await runtime.run()
    finally:
        await client.aclose()
        guard.release()


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        # A second Ctrl-C while stopping: leave now. The lease is not released; it
        # expires within its TTL (nothing more is admitted under it meanwhile: the
        # process is gone).
        logs.event(log, "runtime.forced_exit", logging.WARNING, signal=sig.name)
        logging.shutdown()
        os._exit(130)
    logs.event(log, "runtime.signal", signal=sig.name, action="stopping")
    stop.set()


class Runtime:
    """One ``guardrails run`` process: registry, election, and — while active — trading."""

    def __init__(
        self,
        cfg: Config,
        redis: aioredis.Redis,
        strategies: list[LoadedStrategy],
        *,
        args: argparse.Namespace,
        stop: asyncio.Event,
        target: str,
        channels: list[notify.Channel] | None = None,
    ) -> None:
        self.cfg = cfg
        self.channels = channels or []
        self.redis = redis
        self.keys = AccountKeys(cfg.account_id)
        self.strategies = strategies
        self.args = args
        self.stop = stop
        self.target = target
        self.instance_id: str = args.instance_id or new_instance_id()
        self._venue: Venue | None = None
        self.marks = MarkBook()
        self.role = "standby"
        self._role_changed = asyncio.Event()
        """Set when ``role`` changes: the heartbeat says so at once, not a slow beat later."""
        self.token: int | None = None
        self.deadline_epoch_ms: Callable[[], int] | None = None
        self.crashed: set[str] = set()
        self._foreign_fills: set[str] = set()
        self.health_url = ""
        self._mismatch_logged: tuple[str, float] = ("", 0.0)

    @property
    def venue(self) -> Venue:
        """The account's venue (built and started at the top of ``run``)."""
        assert self._venue is not None, "venue used before Runtime.run started it"
        return self._venue

    # -- the process ------------------------------------------------------------

    async def run(self) -> int:
        """Until stopped: 0 after a clean stop, 2 if the venue could not be started."""
        logs.event(
            log, "runtime.started", instance=self.instance_id, account=self.cfg.account_id,
            redis=self.target, standby_flag=int(bool(self.args.standby)), pid=os.getpid(),
            strategies=",".join(s.name for s in self.strategies) or "-",
            config_digest=self.cfg.digest(), limits_digest=self.cfg.risk.digest(),
        )
        kind = self.cfg.venue.kind
        try:
            self._venue = make_venue(self.cfg, self.redis)
            await self._venue.start()
            # One signer, one account: a key already claimed by another account id (a
            # second label for the same wallet) is refused before it can lead.
            await identity.claim_signer(self.redis, self.cfg, self._venue, stop=self.stop)
        except Exception as e:  # a missing key, an EVM chain id mismatch, an unreachable venue
            logs.event(log, "venue.unavailable", logging.ERROR, venue=kind,
                       error=f"{type(e).__name__}: {e}", action="not starting")
            print(f"guardrails run: venue ({kind}): {type(e).__name__}: {e}", file=sys.stderr)
            if self._venue is not None:
                with contextlib.suppress(Exception):
                    await self._venue.close()
            return 2
        # After the venue: a venue that cannot start is said first, without waiting on Redis.
        if not await self._durable_enough():
            with contextlib.suppress(Exception):  # refusing to start; the venue's close is best effort
                await self.venue.close()
            return 2
        health_runner = await self._start_health()
        dashboard = await self._start_dashboard()
        registry = self._make_registry()
        lease = Lease(
            self.redis, self.keys, self.instance_id, self.cfg.lease,
            wait_replicas=self.cfg.redis.wait_replicas,
            wait_timeout_ms=self.cfg.redis.wait_timeout,
            memory=FileFenceMemory(str(self.cfg.account_id), self.target),
        )
        elector = LeaderElector(lease, log=logging.getLogger("guardrails.lease"))
        notifier = notify.Notifier(self.channels)
        router = notify.AlertRouter(str(self.cfg.account_id), notifier.publish,
                                    redis_threshold_s=self.cfg.runtime.alert_redis_after / 1000)
        unlisten = logs.add_listener(router.on_event)
        try:
            async with asyncio.TaskGroup() as tg:
                heartbeat = tg.create_task(self._heartbeat(registry))
                alerts = tg.create_task(self._alerts(notifier, router))
                await self._elect(elector)
                self.role = "stopping"
                heartbeat.cancel()
                # The last alerts (a lease lost on the way down) get a bounded moment to leave.
                await notifier.drain(ALERT_DRAIN_S)
                alerts.cancel()
        finally:
            unlisten()
            with contextlib.suppress(*_INFRA_ERRORS):
                await registry.remove()
            for closer in (dashboard, health_runner):
                if closer is not None:
                    with contextlib.suppress(Exception):
                        await closer()
            with contextlib.suppress(Exception):
                await self.venue.close()
            logs.event(log, "runtime.stopped", instance=self.instance_id)
        return 0

    async def _alerts(self, notifier: notify.Notifier, router: notify.AlertRouter) -> None:
        """Deliver alerts in the background (never on the order path), and let the router
        notice a Redis outage that has lasted past its threshold."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(notifier.run())
            while True:
                await asyncio.sleep(1.0)
                router.tick()

    async def _durable_enough(self) -> bool:
        """False (refuse to run) when Redis would lose the fencing counter on a restart
        and the config does not say ``allow_non_durable``. Redis down: retried, since
        nothing can be admitted meanwhile; a stop while waiting is not a refusal."""
        failing = False
        while True:
            try:
                async with connect.primaries(self.redis) as nodes:
                    readings = [(name, await persistence.read(node)) for name, node in nodes]
                # The worst node decides: one volatile primary loses its accounts' fences.
                name, found = min(readings, key=lambda r: _DURABILITY_RANK[r[1].durability])
                break
            except _INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "runtime.redis_unavailable", logging.WARNING,
                               during="persistence check", error=f"{type(e).__name__}: {e}",
                               note="nothing can be admitted; retrying")
                failing = True
                await _wait(self.stop, RECONCILE_RETRY_S)
                if self.stop.is_set():
                    return True
        durability = found.durability
        allowed = self.cfg.redis.allow_non_durable
        if durability is persistence.Durability.VOLATILE and not allowed:
            where = f"{self.target} (node {name})" if name else self.target
            logs.event(log, "runtime.redis_not_durable", logging.ERROR, redis=where,
                       persistence=found.summary(), risk=found.risk(), action="refused")
            print(f"guardrails run: refused: Redis at {where} would lose the fencing "
                  f"counter on restart ({found.summary()}): {found.risk()}; enable AOF "
                  "(appendonly yes, appendfsync always) or set [redis] allow_non_durable = "
                  "true for a throwaway setup", file=sys.stderr)
            return False
        level = logging.INFO if durability is persistence.Durability.DURABLE else logging.WARNING
        logs.event(log, "runtime.redis_persistence", level, redis=self.target,
                   nodes=len(readings), durability=durability.value,
                   persistence=found.summary(), risk=found.risk(), allow_non_durable=int(allowed))
        return True

    async def _elect(self, elector: LeaderElector) -> None:
        """Stand by / lead until told to stop.

        ``elector.run`` returns when ``stop`` is set (after releasing the lease) or when
        ``_lead`` returns on its own — which it does only to refuse leadership because
        this instance's limits differ from the account's. Then this instance waits as a
        non-candidate, re-checking the limits, so it never holds the lease idle.
        """
        while not self.stop.is_set():
            if not await self._limits_agree():
                await _wait(self.stop, LIMITS_RECHECK_S)
                continue
            await elector.run(self._lead, self.stop)

    async def _limits_agree(self) -> bool:
        """True when the account's stored limits equal ours (stored first if none are).

        A Redis failure is retried here (nothing can be admitted meanwhile anyway);
        only a real difference returns False.
        """
        from guardrails.limits import check_or_init

        failing = False
        while True:
            checkpoint()
            try:
                mismatch = await check_or_init(
                    self.redis, self.keys, self.cfg.risk, self.instance_id
                )
                break
            except _INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "runtime.redis_unavailable", logging.WARNING,
                               during="limits check", error=f"{type(e).__name__}: {e}",
                               note="nothing can be admitted; retrying")
                failing = True
                await _wait(self.stop, RECONCILE_RETRY_S)
                if self.stop.is_set():
                    return False
        if failing:
            logs.event(log, "redis.recovered", during="limits check")
        if mismatch is None:
            self._mismatch_logged = ("", 0.0)
            return True
        # Said once per distinct difference (and again every minute), not every recheck.
        text, at = self._mismatch_logged
        if str(mismatch) != text or time.monotonic() - at > 60:
            self._mismatch_logged = (str(mismatch), time.monotonic())
            logs.event(log, "limits.mismatch", logging.ERROR, instance=self.instance_id,
                       differences=str(mismatch),
                       action="refusing to become active: fix the config, or change the "
                       "account's limits deliberately with `guardrails limits apply`")
        return False

    # -- one term of leadership ---------------------------------------------------

    async def _lead(self, leadership: Leadership) -> None:
        self.role, self.token = "active", int(leadership.token)
        self._role_changed.set()
        self.deadline_epoch_ms = leadership.deadline_epoch_ms
        logs.event(log, "runtime.active", instance=self.instance_id, token=leadership.token)
        try:
            if not await self._limits_agree():
                return  # refuse to lead: the elector releases the lease (see _elect)
            await self._venue_begin_term()
            await self._reconcile_until_ok()
            if not await self._venue_takeover(leadership):
                return  # fenced out meanwhile: end the term (the elector steps down)
            await self._first_marks()
            await self._cancel_if_halted("takeover")
            checkpoint()  # a stop requested meanwhile must not start the strategies
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pump())
                tg.create_task(self._kill_listener())
                tg.create_task(self._report())
                tg.create_task(self._settle_in_doubt())
                if self.cfg.prune.enabled:
                    tg.create_task(self._prune())
                term_service = getattr(self.venue, "term_service", None)
                if term_service is not None:
                    # The venue's own fence while active (the CLOB heartbeat).
                    tg.create_task(term_service())
                for loaded in self.strategies:
                    if loaded.name in self.crashed:
                        continue
                    tg.create_task(self._run_strategy(loaded, self._context(loaded, leadership)))
        finally:
            self.role, self.token, self.deadline_epoch_ms = "standby", None, None
            self._role_changed.set()
            logs.event(log, "runtime.standby", instance=self.instance_id,
                       token=leadership.token,
                       reason="stopping" if self.stop.is_set() else "term ended")

    def _context(self, loaded: LoadedStrategy, leadership: Leadership) -> Context:
        return Context(
            loaded.name,
            gate=OrderGate(self.redis, self.keys, self.cfg.risk),
            ledger=Ledger(self.redis, self.keys, self.cfg.risk),
            venue=self.venue,
            leadership=leadership,
            risk=self.cfg.risk,
            marks=self.marks,
            allocate_nonce=isinstance(self.cfg.venue, EvmVenueConfig),
        )

    def _ledger(self) -> Ledger:
        return Ledger(self.redis, self.keys, self.cfg.risk)

    async def _reconcile_until_ok(self) -> None:
        """No strategy starts until every non-terminal order is settled with the venue.

        A failed reconciliation (Redis or the venue unreachable, or the venue disagreeing
        with the ledger) keeps the account fail-closed: it is logged with its reasons and
        retried; the lease is kept meanwhile so no other instance trades unreconciled.
        """
        ledger = self._ledger()
        attempt = 0
        while True:
            checkpoint()
            attempt += 1
            try:
                report = await reconcile(ledger, self.venue, now_ms=int(time.time() * 1000))
            except _INFRA_ERRORS as e:
                logs.event(log, "reconcile.failed", logging.ERROR, token=self.token,
                           attempt=attempt, error=f"{type(e).__name__}: {e}",
                           action="fail closed: strategies not started; retrying")
                await asyncio.sleep(RECONCILE_RETRY_S)
                continue
            if not report.ok:
                why = "; ".join(f"{coid}: {reason}" for coid, reason in report.failures[:5])
                logs.event(log, "reconcile.failed", logging.ERROR, token=self.token,
                           attempt=attempt, summary=report.summary(), why=why,
                           action="fail closed: strategies not started; retrying")
                await asyncio.sleep(RECONCILE_RETRY_S)
                continue
            logs.event(log, "reconcile.done", token=self.token, checked=report.checked,
                       fills_applied=report.fills_applied,
                       transitions=len(report.transitions), held=len(report.held))
            return

    async def _venue_begin_term(self) -> None:
        """Venues with a term-start step (Polymarket: cancel what the previous term left
        resting, start the heartbeat) run it before reconciliation, so reconciliation sees
        the cancels. Retried while the venue cannot be asked; strategies wait."""
        begin = getattr(self.venue, "begin_term", None)
        if begin is None:
            return
        while True:
            checkpoint()
            try:
                await begin()
                return
            except _INFRA_ERRORS as e:
                logs.event(log, "venue.begin_term_failed", logging.WARNING,
                           error=f"{type(e).__name__}: {e}",
                           action="fail closed: strategies wait; retrying")
                await asyncio.sleep(RECONCILE_RETRY_S)

    async def _venue_takeover(self, leadership: Leadership) -> bool:
        """Venues with a takeover step (the EVM venue's fenced ``sync_nonce``) run it
        before any strategy. Retried while the venue cannot be asked; False when the
        venue's fence says this term is over."""
        sync = getattr(self.venue, "sync_nonce", None)
        if sync is None:
            return True
        while True:
            checkpoint()
            try:
                await sync(leadership.token, leadership.holder_id)
                return True
            except _INFRA_ERRORS as e:
                logs.event(log, "venue.takeover_failed", logging.WARNING,
                           error=f"{type(e).__name__}: {e}",
                           action="fail closed: strategies wait; retrying")
                await asyncio.sleep(RECONCILE_RETRY_S)
            except Exception as e:  # the venue's fence refused this token (NotHolder)
                logs.event(log, "venue.takeover_refused", logging.ERROR, token=leadership.token,
                           error=f"{type(e).__name__}: {e}", action="stepping down")
                return False

    async def _first_marks(self) -> None:
        """Marks in Redis before any strategy runs (the gate's price band needs one)."""
        ledger = self._ledger()
        symbols = sorted(self.cfg.risk.instruments)
        while True:
            checkpoint()
            try:
                marks = await self.venue.marks(symbols)
                self.marks.update(marks)
                await ledger.update_marks(marks)
                return
            except _INFRA_ERRORS as e:
                logs.event(log, "marks.unavailable", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="strategies wait; retrying")
                await asyncio.sleep(RECONCILE_RETRY_S)

    async def _run_strategy(self, loaded: LoadedStrategy, ctx: Context) -> None:
        """Supervise one strategy for this term (see the module doc's failure policy).

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
            logs.event(log, "strategy.started", strategy=loaded.name, token=self.token,
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
        except _CLEANUP_ERRORS as e:
            logs.event(log, "strategy.cleanup_failed", logging.WARNING, strategy=name,
                       error=f"{type(e).__name__}: {e}")
            return
        for coid in still_open:
            await ctx.cancel(coid)
        logs.event(log, "strategy.stopped", strategy=name, canceled_open_orders=len(still_open))

    # -- tasks of an active term -------------------------------------------------------

    async def _pump(self) -> None:
        """Venue facts into the ledger: fills (applied once per fill id) and marks."""
        ledger = self._ledger()
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
            except _INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "pump.error", logging.WARNING,
                               error=f"{type(e).__name__}: {e}", action="retrying")
                failing = True
            await asyncio.sleep(PUMP_INTERVAL_S)

    async def _settle_in_doubt(self) -> None:
        """While active, resolve orders whose outcome is in doubt, without waiting for
        the next takeover: UNKNOWN ones (an ambiguous submit) and PENDING_SUBMIT ones whose
        permit deadline has passed (they were admitted but may never have been sent).
        Each is looked up at the venue by client order id — never re-sent."""
        ledger = self._ledger()
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
            except _INFRA_ERRORS as e:
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
            with contextlib.suppress(*_INFRA_ERRORS):  # cannot tell: treat it as foreign
                if await was_pruned(self.redis, self.keys, fill.client_order_id):
                    logs.event(log, "fill.pruned_order", logging.WARNING, fill_id=fill.fill_id,
                               client_order_id=fill.client_order_id,
                               detail="a late report of an order pruned after the retention "
                                      "window (terminal: a fill on it is refused)")
                    return
            await self._foreign_fill(fill)

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
        from guardrails.killswitch import KillSwitch, KillSwitchError, read_latch

        halt_errors: tuple[type[BaseException], ...] = (KillSwitchError, *_INFRA_ERRORS)
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

    async def _kill_listener(self) -> None:
        """React to the kill switch: on HALTED, cancel the account's open orders.

        The gate refuses new orders by itself once the latch is set; this only takes
        down what is already resting at the venue.
        """
        while True:
            checkpoint()
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.keys.control_channel)
                recheck_at = None
                if await self._cancel_if_halted("subscribed"):
                    recheck_at = time.monotonic() + HALT_RECHECK_S
                while True:
                    checkpoint()
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if msg is not None:
                        if await self._cancel_if_halted("control message"):
                            recheck_at = time.monotonic() + HALT_RECHECK_S
                    elif recheck_at is not None and time.monotonic() >= recheck_at:
                        # An order admitted just before the latch may reach the venue
                        # just after the first sweep: sweep once more.
                        recheck_at = None
                        await self._cancel_if_halted("recheck")
            except _INFRA_ERRORS as e:
                logs.event(log, "kill.listener_error", logging.WARNING,
                           error=f"{type(e).__name__}: {e}", action="resubscribing")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _ack_latch(self, latch: Any) -> None:
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
        except _INFRA_ERRORS as e:
            logs.event(log, "kill.ack_failed", logging.WARNING, error=f"{type(e).__name__}: {e}")

    async def _cancel_if_halted(self, why: str) -> bool:
        """If the latch says HALTED, cancel every open order of the account; True then.

        Logs ``kill.halted`` (trigger, open orders, cancels confirmed) after every cancel
        has been confirmed by the venue and recorded; a recheck with nothing left open
        stays quiet.
        """
        from guardrails.killswitch import KillSwitchError, read_latch

        errors: tuple[type[BaseException], ...] = (KillSwitchError, *_INFRA_ERRORS)
        try:
            latch = await read_latch(self.redis, self.keys)
        except errors as e:
            logs.event(log, "kill.read_failed", logging.WARNING, error=str(e))
            return False
        if why in ("control message", "subscribed"):
            await self._ack_latch(latch)
        if why == "control message":
            logs.event(log, "kill.state", state=latch.state.value, reason=latch.reason or None,
                       by=latch.by or None)
        if latch.state is not TradingState.HALTED:
            return False
        ledger = self._ledger()
        try:
            open_orders = await ledger.open_orders()
        except _INFRA_ERRORS as e:
            logs.event(log, "kill.cancel_failed", logging.WARNING, error=str(e))
            return True
        if why == "recheck" and not open_orders:
            return True
        canceled = 0
        for rec in open_orders:
            if await cancel_order(ledger, self.venue, rec.client_order_id,
                                  reason=f"kill switch: {latch.reason}", log=log):
                canceled += 1
        logs.event(log, "kill.halted", trigger=why, open_orders=len(open_orders),
                   canceled=canceled, reason=latch.reason or None)
        return True

    async def _report(self) -> None:
        ledger = self._ledger()
        while True:
            checkpoint()
            await asyncio.sleep(REPORT_INTERVAL_S)
            try:
                positions = await ledger.positions()
                budget = await ledger.budget()
                # The day's P&L history every dashboard draws (keys.pnl_history).
                await ledger.record_pnl_sample(budget, int(time.time() * 1000))
            except _INFRA_ERRORS as e:
                logs.event(log, "positions.unavailable", logging.WARNING, error=str(e))
                continue
            held = ",".join(
                f"{sym}:{p.qty}@{p.avg_cost}" for sym, p in sorted(positions.items()) if p.qty
            )
            logs.event(log, "positions", token=self.token, positions=held or "flat",
                       budget_used=getattr(budget, "used", None),
                       budget_limit=getattr(budget, "limit", None))

    async def _prune(self) -> None:
        """Every ``[prune] interval`` while active: archive and remove the terminal orders
        older than the retention window (``prune.py``). Housekeeping, never a reason to
        stop trading: a failure is logged and the next interval tries again."""
        p = self.cfg.prune
        path = Path(p.archive) if p.archive else default_archive_path(self.keys, state_dir())
        pruner = Pruner(self.redis, self.keys, Archive(path), retention_ms=p.retention,
                        batch=p.batch)
        while True:
            checkpoint()
            await asyncio.sleep(p.interval / 1000)
            try:
                rep = await pruner.sweep()
            except _PRUNE_ERRORS as e:
                logs.event(log, "prune.failed", logging.ERROR, archive=str(path), error=str(e))
                continue
            if rep.pruned_orders or rep.pruned_fills or rep.recovered:
                logs.event(log, "prune.swept", orders=rep.pruned_orders,
                           intents=rep.pruned_intents, fills=rep.pruned_fills,
                           kept=rep.kept, batches=rep.batches,
                           max_batch_ms=round(rep.max_batch_ms, 2), archive=str(path))

    # -- registry, health, dashboard ---------------------------------------------------

    def _make_registry(self) -> Registry:
        info = InstanceInfo.for_this_process(
            str(self.cfg.account_id),
            config_digest=self.cfg.digest(),
            limits_digest=self.cfg.risk.digest(),
            standby_flag=bool(self.args.standby),
            health_url=self.health_url,
            instance_id=self.instance_id,
        )
        return Registry(self.redis, self.keys, info, self.cfg.runtime)

    async def _heartbeat(self, registry: Registry) -> None:
        failing = False
        while True:
            checkpoint()
            role = "stopping" if self.stop.is_set() else self.role
            try:
                await registry.heartbeat(role, self.token, ttl_ms=registry.ttl_ms(role))
                if failing:
                    logs.event(log, "redis.recovered", during="heartbeat")
                failing = False
            except _INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "runtime.redis_unavailable", logging.WARNING,
                               during="heartbeat", error=f"{type(e).__name__}: {e}")
                failing = True
            interval = registry.interval_ms(role) / 1000  # a standby beats slowly
            if self.stop.is_set():
                await asyncio.sleep(interval)
            else:
                # say "stopping" or a new role as soon as it changes
                self._role_changed.clear()
                if self.role == role:
                    await _wait_any((self.stop, self._role_changed), interval)

    def health_facts(self) -> dict[str, object]:
        deadline = self.deadline_epoch_ms() if self.deadline_epoch_ms else None
        return {
            "instance_id": self.instance_id,
            "account": str(self.cfg.account_id),
            "role": self.role,
            "token": self.token,
            "lease_deadline_ms": deadline,
            "config_digest": self.cfg.digest(),
            "limits_digest": self.cfg.risk.digest(),
            "strategies": [s.name for s in self.strategies],
            "crashed_strategies": sorted(self.crashed),
            "standby_flag": bool(self.args.standby),
        }

    async def _start_health(self) -> Callable[[], Awaitable[None]] | None:
        port = self.args.health_port
        if port is None:
            port = self.cfg.runtime.health_port
        if port is None:
            return None
        try:
            from guardrails.runtime.health import start_health_server
        except ImportError:
            logs.event(log, "health.unavailable", logging.WARNING, reason="no guardrails.runtime.health")
            return None
        runner, url = await start_health_server(port, self.health_facts)
        self.health_url = url
        logs.event(log, "health.serving", url=url)
        return runner.cleanup

    async def _start_dashboard(self) -> Callable[[], Awaitable[None]] | None:
        """``--dashboard``: serve OPS's dashboard (``guardrails.ops.dashboard``) in this process.

        Optional by design: if the module is missing or the port is taken (another copy
        serves it already), this is logged and the instance runs on without it.
        """
        if not self.args.dashboard:
            return None
        try:
            dashboard = importlib.import_module("guardrails.ops.dashboard")
        except ImportError as e:
            logs.event(log, "dashboard.unavailable", logging.WARNING, reason=str(e))
            return None
        port = self.cfg.runtime.dashboard_port
        try:
            app = dashboard.create_app(self.redis, accounts=[self.cfg.account_id], config=self.cfg)
            runner, url = await dashboard.serve(app, "127.0.0.1", port)
        except OSError as e:
            logs.event(log, "dashboard.unavailable", logging.WARNING, port=port,
                       reason=f"{type(e).__name__}: {e}")
            return None
        logs.event(log, "dashboard.serving", url=url)
        cleanup: Callable[[], Awaitable[None]] = runner.cleanup
        return cleanup


_ABANDONED: set[asyncio.Task[BaseException | None]] = set()
"""Strategy tasks that ignored their cancellation (kept referenced until the process exits)."""
ABANDON_GRACE_S = 0.5


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


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that a task that will not end — a strategy that
    swallowed its cancellation and was abandoned — cannot hang the exit: after
    ``ABANDON_GRACE_S`` the process exits anyway (the lease was already released and
    the host lock freed inside ``main``)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # as asyncio.run does (child watchers, get_event_loop)
    try:
        rc = loop.run_until_complete(main)
    finally:
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=ABANDON_GRACE_S))
        stuck = sorted(t.get_name() for t in leftover if not t.done())
    if stuck:
        logs.event(log, "runtime.exit_abandoning", logging.WARNING, tasks=",".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return rc


async def _wait_any(events: tuple[asyncio.Event, ...], seconds: float) -> None:
    """Wait until one of ``events`` is set or ``seconds`` pass."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


