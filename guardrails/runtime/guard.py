"""``Guard``: put a bot under the harness — the one implementation ``guardrails run`` uses too.

::

    async with Guard.from_config("config/mybot.toml") as guard:
        async with guard.active() as ctx:    # this instance holds the lease, reconciled
            await ctx.submit(Intent("BTC-USD", Side.BUY, Decimal("0.01"), Decimal("60000")))

Invariants upheld: *one writer per account* and *fail closed, and say why*.
``__aenter__`` takes the host lock (a second copy of the account on this host needs
``standby=True``), connects to Redis, starts the venue, claims its signer for this
account, refuses a Redis that would lose the fencing counter, and starts in the
background the registry heartbeat, alert delivery and the lease loop. As standby the
loop waits for the lease; on acquiring it, it checks the account's stored limits equal
ours (a mismatch refuses to lead), then runs ``term.prepare`` (reconcile first), starts
the term's services (fills/marks pump, kill listener, in-doubt settler, report) and
opens the term. ``guard.active()`` returns a ``Context`` once a term is open; when the
term ends — lease lost, self-fence, kill ``--revoke``, SIGTERM/SIGINT, ``stop()`` — the
body is cancelled, ``TermEnded`` is raised out of the block, and every further gated
call on that ``ctx`` is refused. The lease is released only after the body has left
(bounded: ``runtime.strategy_stop_timeout``). ``__aexit__`` stops it all: the lease is
released, the instance leaves the registry, the venue and Redis are closed, the host
lock is freed.

What this does NOT guarantee: that a paused process notices it lost the lease before it
tries to trade — that is why every order is admitted inside Redis against the current
token and a live lease; the local checks only make it fail sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

import redis.asyncio as aioredis

from guardrails import logs
from guardrails.config import Config, ConfigError, load_config
from guardrails.fencing import FileFenceMemory
from guardrails.infra import connect, persistence
from guardrails.infra.embedded import EmbeddedRedisError
from guardrails.keys import AccountKeys
from guardrails.killswitch import FileLatchMemory
from guardrails.lease import LeaderElector, Leadership, Lease
from guardrails.limits import check_or_init
from guardrails.ops import notify
from guardrails.registry import InstanceInfo, Registry, new_instance_id
from guardrails.runtime import identity, localguard, services
from guardrails.runtime.context import Context, MarkBook, checkpoint
from guardrails.runtime.services import INFRA_ERRORS, AccountServices
from guardrails.runtime.term import Term, prepare
from guardrails.statedir import StateDirError
from guardrails.venues import make_venue
from guardrails.venues.base import Venue, VenueReader

log = logging.getLogger("guardrails.runtime")

R = TypeVar("R")

LIMITS_RECHECK_S = 5.0
"""How often a standby whose limits differ from the account's checks again."""
VenueFactory = Callable[[Config, aioredis.Redis], Venue]
"""Builds the account's venue once Redis is connected (default ``venues.make_venue``)."""
_DURABILITY_RANK = {persistence.Durability.VOLATILE: 0, persistence.Durability.UNKNOWN: 1,
                    persistence.Durability.DURABLE: 2}


class GuardError(Exception):
    """The guard could not start; the message says why, in words for an operator.
    ``exit_code`` is what ``guardrails run`` exits with (1: no Redis, 2: refused)."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class GuardStopped(Exception):
    """``active()`` on a guard that is stopping or has stopped (a signal, ``stop()``, or
    its background failed: then ``__aexit__`` raises that failure)."""


class TermEnded(Exception):
    """Raised out of ``async with guard.active()`` when the term ended while the body
    ran: the body was cancelled, its ``ctx`` refuses every gated call from now on.
    Enter ``guard.active()`` again to wait for the next term."""

    def __init__(self, token: int, reason: str) -> None:
        super().__init__(f"term {token} ended: {reason}")
        self.token = token
        self.reason = reason


class Guard:
    """One instance of one account under the harness (see the module doc).

    ``standby``: this host already runs a copy of the account, deliberately.
    ``instance_id``: the registry's name for this instance (default: generated).
    ``health_port``: serve ``GET /health`` (default ``[runtime] health_port``; None: off).
    ``dashboard``: serve the dashboard in this process. ``handle_signals``: SIGTERM and
    SIGINT stop the guard (a second one exits the process at once, lease unreleased).
    ``strategies``: names reported by the health endpoint (``guardrails run`` sets them).
    ``venue``: builds the venue from the config and the connected Redis (default
    ``venues.make_venue``); an embedding such as ``guardrails.ccxt`` passes one that wraps
    an exchange object it already has. The guard starts and closes what it returns.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        standby: bool = False,
        instance_id: str | None = None,
        health_port: int | None = None,
        dashboard: bool = False,
        handle_signals: bool = True,
        strategies: list[str] | None = None,
        venue: VenueFactory | None = None,
    ) -> None:
        self.cfg = cfg
        self._make_venue: VenueFactory = venue or make_venue
        self.keys = AccountKeys(cfg.account_id)
        self.instance_id = instance_id or new_instance_id()
        self.standby = standby
        self.health_port = health_port if health_port is not None else cfg.runtime.health_port
        self.dashboard = dashboard
        self.handle_signals = handle_signals
        try:
            self.channels = notify.channels_from_config(cfg.notify)
        except ValueError as e:  # a [[notify]] entry that could never deliver: refuse
            raise ConfigError(f"{cfg.source}: {e}") from None
        self.strategies = strategies or []
        self.crashed: set[str] = set()
        """Strategies that crashed (``guardrails run``'s supervisor adds to it)."""
        self.marks = MarkBook()
        self.target = ""
        self._memory: FileFenceMemory | None = None
        self.health_url = ""
        self._stop = asyncio.Event()
        self._finished = asyncio.Event()
        self._term_opened = asyncio.Event()
        self._role_changed = asyncio.Event()
        self._role = "standby"
        self._token: int | None = None
        self._deadline_epoch_ms: Callable[[], int] | None = None
        self._term: Term | None = None
        self._redis: aioredis.Redis | None = None
        self._venue: Venue | None = None
        self._services: AccountServices | None = None
        self._lock: localguard.LocalLock | None = None
        self._closers: list[services.Closer] = []
        self._main: asyncio.Task[None] | None = None
        self._signals: list[signal.Signals] = []
        self._entered = False
        self._mismatch_logged: tuple[str, float] = ("", 0.0)
        self._claim: identity.Claim | None = None
        self._claim_due = asyncio.Event()
        """Set on becoming active: ``_keep_claim`` moves to the active period at once (the
        takeover's own check is ``_claim_holds``)."""
        self._refusal: GuardError | None = None
        """Why the running guard stopped itself (its claim taken by another account id):
        raised by ``__aexit__``."""

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], *, redis_url: str | None = None,
        standby: bool = False, instance_id: str | None = None, health_port: int | None = None,
        dashboard: bool = False, handle_signals: bool = True, strategies: list[str] | None = None,
        venue: VenueFactory | None = None,
    ) -> Guard:
        """A guard for the config at ``path`` (validated here: ``ConfigError`` names the
        file, the field and what is wrong). Nothing is touched until ``async with``."""
        return cls(load_config(Path(path), redis_url), standby=standby, instance_id=instance_id,
                   health_port=health_port, dashboard=dashboard, handle_signals=handle_signals,
                   strategies=strategies, venue=venue)

    # -- what a caller reads ----------------------------------------------------------

    @property
    def role(self) -> str:
        """``standby``, ``active`` or ``stopping``."""
        return "stopping" if self._stop.is_set() and self._entered else self._role

    @property
    def token(self) -> int | None:
        """The current term's fencing token (None while standby)."""
        return self._token

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("guard.redis outside `async with Guard(...)`")
        return self._redis

    @property
    def venue(self) -> VenueReader:
        """The account's started venue, to read (after ``__aenter__``): marks, balances, an
        order's record. Not to trade: orders go through the gate (``Context.submit``)."""
        return VenueReader(self._started_venue())

    def _started_venue(self) -> Venue:
        if self._venue is None:
            raise RuntimeError("guard.venue outside `async with Guard(...)`")
        return self._venue

    def stop(self) -> None:
        """Ask the guard to stop: the term ends (its body is cancelled) and the lease is
        released; ``__aexit__`` then finishes the shutdown."""
        self._stop.set()

    def active(self, name: str = "main") -> _Active[Context]:
        """``async with guard.active() as ctx``: waits until this instance holds the lease
        and has reconciled, then gives a ``Context`` named ``name``. The body is
        cancelled when the term ends and ``TermEnded`` is raised out of the block;
        ``GuardStopped`` if the guard is stopping."""
        return _Active(self, lambda term: term.context(name))

    def term(self) -> _Active[Term]:
        """Like ``active()``, giving the ``Term`` itself (several contexts for one term:
        ``term.context(name)``; ``guardrails run`` gives one to each strategy)."""
        return _Active(self, lambda term: term)

    def health_facts(self) -> dict[str, object]:
        deadline = self._deadline_epoch_ms() if self._deadline_epoch_ms else None
        return {
            "instance_id": self.instance_id,
            "account": str(self.cfg.account_id),
            "role": self.role,
            "token": self._token,
            "lease_deadline_ms": deadline,
            "config_digest": self.cfg.digest(),
            "limits_digest": self.cfg.risk.digest(),
            "strategies": list(self.strategies),
            "crashed_strategies": sorted(self.crashed),
            "standby_flag": self.standby,
            # non-empty while Redis shows a kill-switch latch older than one this instance
            # saw: it admits nothing (kill.latch_lost) whatever the role says
            "latch_lost": self._latch_lost(),
        }

    def _latch_lost(self) -> str:
        seen = self._services.latch_seen if self._services is not None else None
        return seen.lost if seen is not None else ""

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Guard:
        if self._entered:
            raise RuntimeError("a Guard is entered once")
        self._entered = True
        try:
            await self._start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        asked = self._stop.is_set()
        self._stop.set()
        try:
            if self._main is not None:
                await self._main
        finally:
            await self._close()
        if self._refusal is not None:
            raise self._refusal
        # A body ended by the stop that was asked for (a signal, stop()) is a clean exit.
        return asked and et is not None and issubclass(et, (TermEnded, GuardStopped))

    async def _start(self) -> None:
        cfg = self.cfg
        if self.handle_signals:
            self._install_signals()
        # The host lock first: it is keyed by the account alone, so a refused copy never
        # starts (or even looks for) a Redis.
        try:
            self._lock = localguard.acquire(cfg.account_id, standby=self.standby,
                                            lock_dir=cfg.runtime.lock_dir)
        except localguard.AlreadyRunning as e:
            raise GuardError(
                f"refused: {e}\n  another copy of account {cfg.account_id} already runs on "
                "this host (whatever Redis it uses); start this one with --standby to run it "
                "deliberately as a standby") from None
        except localguard.LocalGuardError as e:  # e.g. a lock_dir that is a file
            where = ("runtime.lock_dir" if cfg.runtime.lock_dir
                     else f"${localguard.LOCK_DIR_ENV}" if os.environ.get(localguard.LOCK_DIR_ENV)
                     else "host lock")
            raise GuardError(f"{cfg.source}: {where}: {e}") from None
        try:
            url = await connect.resolve_url(cfg.redis.url, start=True)
        except EmbeddedRedisError as e:
            logs.event(log, "runtime.redis_unavailable", logging.ERROR, error=str(e))
            raise GuardError(str(e), exit_code=1) from None
        self.target = connect.describe(url)
        # The fence memory before anything reaches Redis: a planted or foreign memory (or
        # state directory) is refused here, never trusted into the lease (where a forged
        # history would raise the account's lost-history alarm for every instance).
        memory = FileFenceMemory(str(cfg.account_id), self.target)
        latch_memory = FileLatchMemory(str(cfg.account_id), self.target)
        try:
            memory.load()
            latch_seen = latch_memory.load()  # the newest kill-switch latch this host saw
        except StateDirError as e:
            raise GuardError(f"{cfg.source}: fence or latch memory: {e}") from None
        self._memory = memory
        self._redis = await connect.connect(cfg.redis.model_copy(update={"url": url}))
        logs.event(
            log, "runtime.started", instance=self.instance_id, account=cfg.account_id,
            redis=self.target, standby_flag=int(self.standby), pid=os.getpid(),
            strategies=",".join(self.strategies) or "-",
            config_digest=cfg.digest(), limits_digest=cfg.risk.digest(),
        )
        await self._start_venue()
        # After the venue: a venue that cannot start is said first, without waiting on Redis.
        await self._check_durable()
        closer, self.health_url = await services.start_health(self.health_port,
                                                              self.health_facts)
        if closer is not None:
            self._closers.append(closer)
        if self.dashboard:
            # Its own small pool, never the bot's (the lease renews on self.redis).
            dash = await services.start_dashboard(cfg.redis.model_copy(update={"url": url}), cfg)
            if dash is not None:
                self._closers.append(dash)
        self._services = AccountServices(cfg, self.redis, self._started_venue(), self.marks,
                                         instance_id=self.instance_id, token=lambda: self._token,
                                         latch_memory=latch_memory, latch_seen=latch_seen)
        self._main = asyncio.create_task(self._background(), name="guard-main")

    async def _start_venue(self) -> None:
        kind = self.cfg.venue.kind
        try:
            self._venue = self._make_venue(self.cfg, self.redis)
            await self._venue.start()
            # One signer or exchange account, one account id: one already claimed by
            # another account id (a second label for the same wallet or API key, or
            # another key of the same exchange account) is refused before it can lead.
            self._claim = await identity.claim_account(self.redis, self.cfg, self._venue,
                                                       stop=self._stop)
        except Exception as e:  # a missing key, an EVM chain id mismatch, an unreachable venue
            logs.event(log, "venue.unavailable", logging.ERROR, venue=kind,
                       error=f"{type(e).__name__}: {e}", action="not starting")
            raise GuardError(f"venue ({kind}): {type(e).__name__}: {e}") from None

    async def _check_durable(self) -> None:
        """Refuse (``GuardError``) a Redis that would lose the fencing counter on a restart,
        unless the config says ``allow_non_durable``. Redis down: retried, since nothing
        can be admitted meanwhile; a stop while waiting is not a refusal."""
        async def read_every_primary() -> list[tuple[str, persistence.Persistence]]:
            async with connect.primaries(self.redis) as nodes:
                return [(name, await persistence.read(node)) for name, node in nodes]

        answered, readings = await self._until_redis_answers("persistence check",
                                                             read_every_primary)
        if not answered or readings is None:
            return
        # The worst node decides: one volatile primary loses its accounts' fences.
        name, found = min(readings, key=lambda r: _DURABILITY_RANK[r[1].durability])
        durability = found.durability
        allowed = self.cfg.redis.allow_non_durable
        if durability is persistence.Durability.VOLATILE and not allowed:
            where = f"{self.target} (node {name})" if name else self.target
            logs.event(log, "runtime.redis_not_durable", logging.ERROR, redis=where,
                       persistence=found.summary(), risk=found.risk(), action="refused")
            raise GuardError(
                f"refused: Redis at {where} would lose the fencing counter on restart "
                f"({found.summary()}): {found.risk()}; enable AOF (appendonly yes, "
                "appendfsync always) or set [redis] allow_non_durable = true for a "
                "throwaway setup")
        level = logging.INFO if durability is persistence.Durability.DURABLE else logging.WARNING
        logs.event(log, "runtime.redis_persistence", level, redis=self.target,
                   nodes=len(readings), durability=durability.value,
                   persistence=found.summary(), risk=found.risk(), allow_non_durable=int(allowed))

    async def _background(self) -> None:
        """Heartbeat, alerts and the lease loop, until stopped; then the last alerts."""
        registry = Registry(self.redis, self.keys, InstanceInfo.for_this_process(
            str(self.cfg.account_id),
            config_digest=self.cfg.digest(),
            limits_digest=self.cfg.risk.digest(),
            standby_flag=self.standby,
            health_url=self.health_url,
            instance_id=self.instance_id,
        ), self.cfg.runtime)
        lease = Lease(
            self.redis, self.keys, self.instance_id, self.cfg.lease,
            wait_replicas=self.cfg.redis.wait_replicas,
            wait_timeout_ms=self.cfg.redis.wait_timeout,
            memory=self._memory,
        )
        elector = LeaderElector(lease, log=logging.getLogger("guardrails.lease"))
        notifier = notify.Notifier(self.channels)
        router = notify.AlertRouter(str(self.cfg.account_id), notifier.publish,
                                    redis_threshold_s=self.cfg.runtime.alert_redis_after / 1000)
        unlisten = logs.add_listener(router.on_event)
        try:
            async with asyncio.TaskGroup() as tg:
                heartbeat = tg.create_task(services.heartbeat(
                    registry, role=lambda: self._role, token=lambda: self._token,
                    stop=self._stop, role_changed=self._role_changed), name="guard-heartbeat")
                alerts = tg.create_task(services.alerts(notifier, router), name="guard-alerts")
                claim = tg.create_task(self._keep_claim(registry), name="guard-claim")
                await self._elect(elector)
                self._role = "stopping"
                heartbeat.cancel()
                claim.cancel()
                # The last alerts (a lease lost on the way down) get a bounded moment to leave.
                await notifier.drain(services.ALERT_DRAIN_S)
                alerts.cancel()
        finally:
            self._finished.set()
            unlisten()
            with contextlib.suppress(*INFRA_ERRORS):
                await registry.remove()

    async def _claim_holds(self) -> bool:
        """At takeover, before reconciling or opening the term: the venue's claim is ours
        (set again if Redis lost it). False — and the guard stopping, ``__aexit__`` saying
        why — when another account id owns it; nothing of the term has run."""
        if self._claim is None:
            return True
        try:
            await identity.reclaim(self.redis, self._claim, str(self.cfg.account_id))
        except identity.ClaimConflict as e:
            self._claim_refused(e)
            return False
        return True

    def _claim_refused(self, e: identity.ClaimConflict) -> None:
        self._refusal = GuardError(f"venue ({self.cfg.venue.kind}): stopped: "
                                   f"{type(e).__name__}: {e}")
        self._stop.set()

    async def _keep_claim(self, registry: Registry) -> None:
        """Hold the venue's claim while the guard runs (``identity.reclaim``): at the
        registry heartbeat period of the role (a standby's slow one; at takeover
        ``_claim_holds`` checks it before the term opens, and this loop moves to the active
        period). Another account id owning it stops the guard — the term ends, the lease
        is released — and ``__aexit__`` raises why (``guardrails run`` exits 2)."""
        if self._claim is None:
            return
        while True:
            await services.wait(self._claim_due, registry.interval_ms(self._role) / 1000)
            if self._claim_due.is_set():
                self._claim_due.clear()  # became active: just checked; wait the new period
                continue
            try:
                await identity.reclaim(self.redis, self._claim, str(self.cfg.account_id))
            except identity.ClaimConflict as e:
                self._claim_refused(e)
                return

    async def _close(self) -> None:
        """Undo whatever ``_start`` did, last first. Each step is best effort on the way
        down (and says so): a failing close must not keep the host lock held."""
        for closer in reversed(self._closers):
            # A web runner's (health, dashboard) cleanup: the process is leaving; any
            # failure is logged at debug, a cancellation still propagates.
            with logs.swallowed(log, "service.close"):
                await closer()
        self._closers.clear()
        if self._venue is not None:
            # Any venue's close (an HTTP session, a ccxt client, a web3 provider) is
            # best effort on the way down; what failed is logged at debug.
            with logs.swallowed(log, "venue.close"):
                await self._venue.close()
        if self._main is not None:
            logs.event(log, "runtime.stopped", instance=self.instance_id)
        if self._redis is not None:
            with contextlib.suppress(*INFRA_ERRORS):
                await self._redis.aclose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError) as e:  # not the main thread
                logs.event(log, "runtime.signals_unavailable", logging.WARNING,
                           signal=sig.name, error=str(e))
                continue
            self._signals.append(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            # A second Ctrl-C while stopping: leave now. The lease is not released; it
            # expires within its TTL (nothing more is admitted under it meanwhile: the
            # process is gone).
            logs.event(log, "runtime.forced_exit", logging.WARNING, signal=sig.name)
            logging.shutdown()
            os._exit(130)
        logs.event(log, "runtime.signal", signal=sig.name, action="stopping")
        self._stop.set()

    # -- election ---------------------------------------------------------------------

    async def _elect(self, elector: LeaderElector) -> None:
        """Stand by / lead until told to stop.

        ``elector.run`` returns when ``stop`` is set (after releasing the lease) or when
        ``_lead`` returns on its own — which it does only to refuse leadership because
        this instance's limits differ from the account's (or the venue's fence refused
        the term). Then this instance waits as a non-candidate, re-checking the limits,
        so it never holds the lease idle.
        """
        while not self._stop.is_set():
            if not await self._limits_agree():
                await services.wait(self._stop, LIMITS_RECHECK_S)
                continue
            await elector.run(self._lead, self._stop)

    async def _until_redis_answers(
        self, during: str, call: Callable[[], Awaitable[R]]
    ) -> tuple[bool, R | None]:
        """``call()`` until Redis answers: ``(True, its value)``, or ``(False, None)`` when
        the Guard is stopped first. Nothing can be admitted meanwhile, so waiting is
        right; the outage is logged once, and its end."""
        failing = False
        while True:
            checkpoint()
            try:
                value = await call()
            except INFRA_ERRORS as e:
                if not failing:
                    logs.event(log, "runtime.redis_unavailable", logging.WARNING,
                               during=during, error=f"{type(e).__name__}: {e}",
                               note="nothing can be admitted; retrying")
                failing = True
                await services.wait(self._stop, services.RETRY_S)
                if self._stop.is_set():
                    return False, None
                continue
            if failing:
                logs.event(log, "redis.recovered", during=during)
            return True, value

    async def _limits_agree(self) -> bool:
        """True when the account's stored limits equal ours (stored first if none are).

        A Redis failure is retried here (nothing can be admitted meanwhile anyway);
        only a real difference returns False.
        """
        answered, mismatch = await self._until_redis_answers(
            "limits check",
            lambda: check_or_init(self.redis, self.keys, self.cfg.risk, self.instance_id))
        if not answered:
            return False
        if mismatch is None:
            self._mismatch_logged = ("", 0.0)
            return True
        # Said once per distinct difference (and again every minute), not every recheck.
        text, at = self._mismatch_logged
        if str(mismatch) != text or time.monotonic() - at > 60:
            self._mismatch_logged = (str(mismatch), time.monotonic())
            logs.event(log, "limits.mismatch", logging.ERROR, instance=self.instance_id,
                       differences=str(mismatch),
                       action=f"refusing to become active: {mismatch.action}")
        return False

    async def _lead(self, leadership: Leadership) -> None:
        """One term: limits, ``prepare`` (reconcile first), then the term is open — its
        services run and bodies may enter — until the elector cancels it."""
        assert self._services is not None
        self._role, self._token = "active", int(leadership.token)
        self._role_changed.set()
        self._claim_due.set()
        self._deadline_epoch_ms = leadership.deadline_epoch_ms
        logs.event(log, "runtime.active", instance=self.instance_id, token=leadership.token)
        try:
            if not await self._limits_agree():
                return  # refuse to lead: the elector releases the lease (see _elect)
            if not await self._claim_holds():
                return  # another account id owns the venue's account: the guard stops
            if not await prepare(self._services, leadership):
                return  # fenced out meanwhile: end the term (the elector steps down)
            term = Term(self.cfg, self._services, leadership)
            async with asyncio.TaskGroup() as tg:
                self._services.start(tg)
                self._term = term
                self._term_opened.set()
                try:
                    await asyncio.Event().wait()  # until the elector ends the term
                finally:
                    self._term_opened.clear()
                    self._term = None
                    await term.end("stopping" if self._stop.is_set() else "lease lost")
        finally:
            self._role, self._token, self._deadline_epoch_ms = "standby", None, None
            self._role_changed.set()
            logs.event(log, "runtime.standby", instance=self.instance_id,
                       token=leadership.token,
                       reason="stopping" if self._stop.is_set() else "term ended")

    async def _next_term(self) -> Term:
        """The open term, once there is one; ``GuardStopped`` if the guard stops first."""
        if not self._entered:
            raise RuntimeError("guard.active() outside `async with Guard(...)`")
        while True:
            if self._stop.is_set() or self._finished.is_set():
                raise GuardStopped(f"the guard of {self.cfg.account_id} is "
                                   f"{'stopping' if self._stop.is_set() else 'stopped'}")
            term = self._term
            if term is not None and not term.ended.is_set():
                return term
            await services.wait_any((self._term_opened, self._stop, self._finished), None)


T = TypeVar("T")


class _Active(Generic[T]):
    """The ``async with`` of ``Guard.active()`` / ``Guard.term()``: enter once a term is
    open; cancelled (the task that entered) when that term ends, which then leaves the
    block as ``TermEnded`` — as ``asyncio.timeout`` turns its cancellation into
    ``TimeoutError``. A cancellation from elsewhere passes through untouched."""

    def __init__(self, guard: Guard, give: Callable[[Term], T]) -> None:
        self._guard = guard
        self._give = give
        self._term: Term | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._cancelled = False
        self._reason = ""

    async def __aenter__(self) -> T:
        if self._task is not None:
            raise RuntimeError("guard.active() is entered once per call")
        self._task = asyncio.current_task()
        if self._task is None:
            raise RuntimeError("guard.active() outside a task")
        self._cancelling = self._task.cancelling()
        while True:
            term = await self._guard._next_term()
            if term.enter(self):
                break
        self._term = term
        return self._give(term)

    def cancel(self, reason: str) -> None:
        """Called by ``Term.end``: cancel the body; called again, cancel it again only if
        the first cancellation was swallowed (``cancelling()`` back to what it was)."""
        task = self._task
        if task is None or task.done():
            return
        if self._cancelled and task.cancelling() > self._cancelling:
            return  # still being cancelled: let it unwind
        self._cancelled, self._reason = True, self._reason or reason
        task.cancel(f"guardrails: term ended ({reason})")

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._term is not None and self._task is not None
        self._term.leave(self)
        if not self._cancelled:
            return
        ours = self._task.uncancel() <= self._cancelling
        if ours and (et is None or issubclass(et, asyncio.CancelledError)):
            raise TermEnded(self._term.token, self._reason) from None
