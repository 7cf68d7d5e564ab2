"""The account's lease: at most one writer per account, fenced by a token that only grows.

Invariant upheld: **one writer per account** (DESIGN.md, invariant 1). The lease is the
STRING ``keys.lease`` = ``"<token>:<holder_id>"`` with a PX expiry; the token comes from
``keys.fence``, which is only ever INCR'd, inside the same script that takes the lease.
Three Lua scripts (``lua/lease_acquire.lua``, ``lease_renew.lua``, ``lease_release.lua``)
are the only writers of the lease:

- acquire: if the lease is free, INCR the fence and ``SET lease NX PX ttl``; otherwise
  report the holder and its remaining TTL;
- renew: if the lease still holds this holder's exact value (and the fence has not moved
  past its token), ``PEXPIRE`` it to ttl — it never adds time beyond ttl and never
  re-creates an expired lease;
- release: compare-and-delete, then PUBLISH ``released <token>`` on ``keys.lease_channel``
  so standbys wake at once.

``LeaderElector`` runs the loop a process lives in: wait as standby → acquire → run the
caller's ``lead`` next to the renew loop → on loss or stop, stop leading first, then
release. A standby does not poll: it is woken by the release message, or at the moment
the lease it saw can expire (it learned the remaining TTL; a plain ``PTTL`` then tells it
whether the holder renewed), or by a slow fallback no more often than ``renew_interval``.

The holder keeps a *local* deadline measured with a monotonic clock from *before* each
acquire/renew request was sent: ``sent_at + renew_deadline -
drift_margin``. When no renew succeeds by then it self-fences — ``Leadership.valid()``
turns False at that instant (no wake-up needed), ``leadership.lost`` is set, ``lead`` is
cancelled and awaited — and it goes back to standby. Losing the lease is a planned path,
never a crash; Redis errors are logged and retried with backoff.

What this module guarantees
- At most one process holds the Redis lease at a time, and every holder got a token
  larger than every earlier holder's (one script does INCR + SET NX; with AOF and
  ``appendfsync always`` the counter survives a Redis restart).
- A holder's ``Leadership.valid()`` turns False no later than ``renew_deadline -
  drift_margin`` after the last successful renew was *sent*, i.e. before the lease can
  expire in Redis (``ttl > renew_deadline``), provided the local monotonic clock and
  Redis's clock do not drift apart by more than ``drift_margin`` over that span.
- ``lead`` is cancelled and awaited before the lease is released; ``lead`` is never
  running while this process's lease could have been given to someone else, except for
  code that shields itself from cancellation or blocks the event loop.

What it does NOT guarantee (read this before relying on the lease)
- It does not make side effects exclusive by itself. A process paused (GC, SIGSTOP, a
  blocked event loop) between ``valid()`` and its write can write after its lease
  expired. Only checks *where the data lives* stop that: pass ``leadership.token`` to the
  order gate, whose script compares it with the live lease inside Redis, and use venue
  expiries no later than ``deadline_epoch_ms()``.
- No fairness among standbys: whichever acquire reaches Redis first wins.
- No instant crash takeover: after a crash the lease must expire first (≤ ttl, plus the
  time until a standby's scheduled attempt runs). Only a graceful release is instant.
- No protection against clocks that jump: Redis expires keys by its wall clock; a Redis
  host whose clock steps forward can expire a lease early.
- No durability beyond what Redis gives: with asynchronous replication a promoted replica
  can lack the latest INCR and repeat a token. ``wait_replicas`` (``WAIT`` after acquire,
  before the token is used, failing closed) narrows this; it is not consensus.
- A ``lead`` callback that returns on its own ends leadership gracefully: the lease is
  released and ``run`` returns. A ``lead`` that raises releases the lease and ``run``
  re-raises (a bug in ``lead`` is not retried silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import logs, scripts
from guardrails.config import LeaseConfig
from guardrails.keys import AccountKeys

STEPDOWN_RECANCEL_S = 0.2
"""How often stepping down checks for (and repeats) a cancellation the lead swallowed."""
T = TypeVar("T")

Clock = Callable[[], float]
"""A monotonic clock in seconds (``time.monotonic`` unless a test injects one)."""

INFRA_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
"""Errors that mean "Redis did not answer usefully": logged, retried, never a crash."""


class LeaseProtocolError(RuntimeError):
    """A lease script answered with a code or shape this module does not know (a bug or a
    schema mismatch). Never guessed around."""


class ReplicasNotAcknowledged(RuntimeError):
    """``WAIT`` after acquire saw fewer replicas than required: the new token is not used
    (fail closed) and the lease was released."""

    def __init__(self, token: int, acked: int, required: int) -> None:
        super().__init__(
            f"fencing token {token} acknowledged by {acked} of {required} required replicas; "
            "not using it"
        )
        self.token = token
        self.acked = acked
        self.required = required


_STANDBY_ERRORS: tuple[type[BaseException], ...] = (*INFRA_ERRORS, ReplicasNotAcknowledged)


# -- outcomes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquired:
    """This process now holds the lease with ``token`` for ``ttl_ms``."""

    token: int
    ttl_ms: int
    sent_at: float = 0.0
    """``clock()`` just before the acquire request was sent: the local deadline's origin."""


@dataclass(frozen=True, slots=True)
class Held:
    """Someone holds the lease. ``ttl_ms`` is its remaining TTL (-1: it has no expiry).

    A value that is not ``<token>:<holder>`` is reported with ``token=-1`` and the raw
    value as ``holder`` (fail closed: it is still held)."""

    holder: str
    token: int
    ttl_ms: int
    sent_at: float = 0.0
    """``clock()`` just before the request was sent: the lease expires no earlier than
    ``sent_at + ttl_ms/1000``."""


@dataclass(frozen=True, slots=True)
class Refused:
    """No lease: the fence's history is not the one this process saw (fencing epochs).

    ``reason`` is ``history_lost`` (the epoch and counter are gone, though this process
    saw a token: FLUSHALL, an empty restart), ``epoch_changed`` (another history: a
    restored snapshot from before, another Redis), or ``alarm`` (an earlier refusal
    stands until ``guardrails fence recover``). ``seen`` is ``<epoch>:<token>``."""

    reason: str
    seen: str
    epoch: str
    sent_at: float = 0.0


class RenewOutcome(enum.Enum):
    RENEWED = "renewed"
    MISSING = "missing"
    """The lease expired or was released; renew never re-creates it."""
    OTHER_HOLDER = "other_holder"
    SUPERSEDED = "superseded"
    """The fence counter moved past this token (e.g. ``guardrails kill --revoke``)."""
    NOT_HOLDING = "not_holding"
    """This ``Lease`` object holds no token; nothing was sent."""


class ReleaseOutcome(enum.Enum):
    RELEASED = "released"
    MISSING = "missing"
    OTHER_HOLDER = "other_holder"
    NOT_HOLDING = "not_holding"


# The one place where script codes become outcomes; an unknown code raises.
_ACQUIRE_ACQUIRED = 1
_ACQUIRE_HELD = 2
_ACQUIRE_REFUSED = 3
_RENEW_CODES = {
    1: RenewOutcome.RENEWED,
    2: RenewOutcome.MISSING,
    3: RenewOutcome.OTHER_HOLDER,
    4: RenewOutcome.SUPERSEDED,
}
_RELEASE_CODES = {
    1: ReleaseOutcome.RELEASED,
    2: ReleaseOutcome.MISSING,
    3: ReleaseOutcome.OTHER_HOLDER,
}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _code(script: str, reply: object) -> int:
    if isinstance(reply, int) and not isinstance(reply, bool):
        return reply
    raise LeaseProtocolError(f"{script}: expected an integer code, got {reply!r}")


def _mapped(script: str, table: dict[int, Any], reply: object) -> Any:
    """``{code}`` (the scripts' one return convention) -> its outcome in ``table``."""
    if not isinstance(reply, list) or len(reply) != 1:
        raise LeaseProtocolError(f"{script}: expected {{code}}, got {reply!r}")
    code = _code(script, reply[0])
    if code not in table:
        raise LeaseProtocolError(f"{script}: unknown code {code}")
    return table[code]


def parse_lease_value(value: str) -> tuple[int, str]:
    """``"<token>:<holder_id>"`` -> ``(token, holder_id)``; ``(-1, value)`` if malformed."""
    token, sep, holder = value.partition(":")
    if sep:
        try:  # lib/int.lua's stored integer: isdigit() also takes '١٠٠' and '²'
            n = scripts.stored_nat(token, "lease token")
        except ValueError:
            return -1, value
        if token:
            return n, holder
    return -1, value


def _acquire_outcome(reply: object, sent_at: float) -> tuple[Acquired | Held | Refused, str]:
    """The outcome and the epoch Redis reported ("" if none yet)."""
    if not isinstance(reply, list) or len(reply) != 4:
        raise LeaseProtocolError(f"lease_acquire: expected a 4-element array, got {reply!r}")
    code = _code("lease_acquire", reply[0])
    epoch = _text(reply[3])
    if code == _ACQUIRE_ACQUIRED:
        return Acquired(
            token=_code("lease_acquire", reply[1]),
            ttl_ms=_code("lease_acquire", reply[2]),
            sent_at=sent_at,
        ), epoch
    if code == _ACQUIRE_HELD:
        token, holder = parse_lease_value(_text(reply[1]))
        return Held(
            holder=holder, token=token, ttl_ms=_code("lease_acquire", reply[2]), sent_at=sent_at
        ), epoch
    if code == _ACQUIRE_REFUSED:
        return Refused(_text(reply[1]), _text(reply[2]), epoch, sent_at), epoch
    raise LeaseProtocolError(f"lease_acquire: unknown code {code}")


# -- the lease ------------------------------------------------------------------------


class FenceMemory(Protocol):
    """Where a process keeps the highest (epoch, token) it has seen beyond its own life
    (``fencing.FileFenceMemory``). ``save`` must not raise: a memory that cannot be
    written is only less memory, never a reason to stop."""

    def load(self) -> tuple[str, int]: ...

    def save(self, epoch: str, token: int) -> None: ...


class Lease:
    """One holder's handle on an account's lease (storage only; no timers, no tasks).

    ``holder_id`` must be unique per process (the runtime's instance id). The object
    remembers the token it was given; ``renew``/``release`` act on that token only.
    Local state is cleared only after Redis has answered, so a cancelled or failed
    call never makes the object forget a lease it may still hold.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: AccountKeys,
        holder_id: str,
        cfg: LeaseConfig,
        *,
        clock: Clock = time.monotonic,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        memory: FenceMemory | None = None,
    ) -> None:
        if not holder_id or any(c.isspace() for c in holder_id):
            raise ValueError(f"holder_id {holder_id!r}: must be non-empty, without whitespace")
        self.redis = redis
        self.keys = keys
        self.holder_id = holder_id
        self.cfg = cfg
        self.clock = clock
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._acquire = scripts.register(redis, "lease_acquire")
        self._renew = scripts.register(redis, "lease_renew")
        self._release = scripts.register(redis, "lease_release")
        self._token: int | None = None
        self.memory = memory
        self.seen_epoch, self.seen_token = memory.load() if memory else ("", 0)
        """The highest (epoch, token) this object has seen ("", 0: none) — its own
        tokens or a holder's — starting from what ``memory`` kept from earlier runs."""

    def remember(self, epoch: str, token: int) -> None:
        """Raise the highest (epoch, token) seen, from a reply the acquire script gave.
        The script answers with another epoch only when that history was re-seeded above
        our ``seen_token`` (``guardrails fence recover``): then it replaces the memory."""
        if not epoch:
            return
        if epoch != self.seen_epoch:
            self.seen_epoch, self.seen_token = epoch, max(token, 0)
        elif token > self.seen_token:
            self.seen_token = token
        else:
            return
        if self.memory is not None:
            self.memory.save(self.seen_epoch, self.seen_token)

    @property
    def token(self) -> int | None:
        """The token this object believes it holds (None when not holding)."""
        return self._token

    def _value(self, token: int) -> str:
        return f"{token}:{self.holder_id}"

    async def try_acquire(self) -> Acquired | Held | Refused:
        """Take the lease if it is free (new token), else report who holds it — or that
        the fence's history is not the one this object saw (``Refused``; fail closed).

        The script is given the highest (epoch, token) seen; the reply's epoch and token
        (ours, or the holder's) raise it. With ``wait_replicas > 0`` the new token must
        be acknowledged by that many replicas (``WAIT``, on the same connection as the
        script) before it is returned; otherwise the lease is released and
        ``ReplicasNotAcknowledged`` is raised.
        """
        keys = [self.keys.lease, self.keys.fence, self.keys.epoch, self.keys.fence_alarm]
        args: list[str | int] = [self.holder_id, self.cfg.ttl, self.seen_epoch,
                                 self.seen_token, uuid.uuid4().hex, int(time.time() * 1000)]
        sent_at = self.clock()
        if self.wait_replicas <= 0:
            reply = await self._acquire(keys=keys, args=args)
            outcome, epoch = _acquire_outcome(reply, sent_at)
        else:
            # WAIT only covers the writes of its own connection: pipeline both.
            pipe = self.redis.pipeline(transaction=False)
            await self._acquire(keys=keys, args=args, client=pipe)
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            reply, acked = await pipe.execute()
            outcome, epoch = _acquire_outcome(reply, sent_at)
            if isinstance(outcome, Acquired) and int(acked) < self.wait_replicas:
                self.remember(epoch, outcome.token)
                self._token = outcome.token
                await self.release()
                raise ReplicasNotAcknowledged(outcome.token, int(acked), self.wait_replicas)
        if isinstance(outcome, Acquired):
            self.remember(epoch, outcome.token)
            self._token = outcome.token
        elif isinstance(outcome, Held):
            self.remember(epoch, outcome.token)
        return outcome

    async def remaining_ms(self) -> int:
        """The lease's remaining TTL in ms, whoever holds it (PTTL: -2 free, -1 no expiry).
        One plain command: what an idle standby sends when a lease it saw should expire."""
        return int(await self.redis.pttl(self.keys.lease))

    async def renew_outcome(self) -> RenewOutcome:
        """Reset the lease's TTL to ``ttl`` if it is still ours; say what happened."""
        token = self._token
        if token is None:
            return RenewOutcome.NOT_HOLDING
        reply = await self._renew(
            keys=[self.keys.lease, self.keys.fence],
            args=[self._value(token), str(token), self.cfg.ttl],
        )
        outcome: RenewOutcome = _mapped("lease_renew", _RENEW_CODES, reply)
        if outcome is not RenewOutcome.RENEWED and self._token == token:
            self._token = None  # Redis said it is not ours: forget it
        return outcome

    async def renew(self) -> bool:
        """True if Redis confirmed the lease is still ours and reset its TTL to ``ttl``.
        False if Redis refused (expired, other holder, superseded) or nothing is held.
        Raises on infrastructure errors (the caller keeps its local deadline)."""
        return await self.renew_outcome() is RenewOutcome.RENEWED

    async def release_outcome(self) -> ReleaseOutcome:
        """Compare-and-delete the lease and publish ``released <token>``."""
        token = self._token
        if token is None:
            return ReleaseOutcome.NOT_HOLDING
        reply = await self._release(
            keys=[self.keys.lease],
            args=[self._value(token), self.keys.lease_channel, str(token)],
        )
        outcome: ReleaseOutcome = _mapped("lease_release", _RELEASE_CODES, reply)
        if self._token == token:
            self._token = None  # Redis answered: whatever it said, it is not ours now
        return outcome

    async def release(self) -> bool:
        """True if this call deleted our lease (and woke standbys); False if it was
        already gone or someone else's. Raises on infrastructure errors."""
        return await self.release_outcome() is ReleaseOutcome.RELEASED


# -- leadership -----------------------------------------------------------------------


class Leadership:
    """What ``lead`` receives: the token to pass to the gate and the local view of
    whether this process may still act as the writer."""

    def __init__(
        self, token: int, holder_id: str, *, clock: Clock, deadline: float, enforce: bool = True
    ) -> None:
        self.token = token
        self.holder_id = holder_id
        self.lost = asyncio.Event()
        """Set the moment this process stops being the leader (self-fence or refusal)."""
        self._clock = clock
        self._deadline = deadline
        self._enforce = enforce

    @property
    def deadline(self) -> float:
        """The local deadline on the injected monotonic clock."""
        return self._deadline

    def _extend(self, deadline: float) -> None:
        self._deadline = max(self._deadline, deadline)

    def remaining_s(self) -> float:
        return self._deadline - self._clock()

    def valid(self) -> bool:
        """True while not lost and the local deadline has not passed. Checked without
        any wake-up: it turns False at the deadline even if the loop is stuck."""
        if self.lost.is_set():
            return False
        return not self._enforce or self._clock() < self._deadline

    def deadline_epoch_ms(self) -> int:
        """Wall-clock (Unix ms) estimate of the local deadline."""
        return int((time.time() + self.remaining_s()) * 1000)


class _End(enum.Enum):
    STOPPED = "stopped"
    LEAD_RETURNED = "lead_returned"
    DEADLINE = "deadline"
    REFUSED = "refused"


LeadFn = Callable[[Leadership], Awaitable[None]]


def _set_event(event: asyncio.Event, _task: object) -> None:
    event.set()


async def _call(lead: LeadFn, leadership: Leadership) -> None:
    await lead(leadership)


async def _first_set(events: Sequence[asyncio.Event], wait_s: float | None) -> bool:
    """Wait until one of ``events`` is set (True) or ``wait_s`` seconds pass (False)."""
    if any(e.is_set() for e in events):
        return True
    if wait_s is not None and wait_s <= 0:
        return False
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        done, _ = await asyncio.wait(waiters, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


_LISTEN_SLICE_S = 1.0
"""Longest single pub/sub read; bounds how long a stopping listener can take to end."""


def _backoff(failures: int, cap: float) -> float:
    return float(min(cap, 0.1 * 2 ** max(0, failures - 1)))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


class LeaderElector:
    """Runs ``lead`` only while this process holds the lease (see the module doc).

    ``self_fence=False`` keeps leading past the local deadline until Redis itself refuses
    a renew, and ``on_refused(stop)`` is awaited after Redis refused a renew and before
    stepping down. Both exist for tests that watch a stale holder's submissions being
    refused by Redis alone (``tests/stale_leader.py``); ``guardrails run`` sets neither.
    ``fallback_ms`` is the slow standby retry when nothing else wakes it (default: ttl;
    never below renew_interval).
    """

    def __init__(
        self,
        lease: Lease,
        *,
        log: logging.Logger,
        self_fence: bool = True,
        fallback_ms: int | None = None,
        on_refused: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    ) -> None:
        self.lease = lease
        self.log = log
        self.self_fence = self_fence
        self.on_refused = on_refused
        cfg = lease.cfg
        self.fallback = max(cfg.renew_interval, fallback_ms or cfg.ttl) / 1000
        self.leadership: Leadership | None = None
        """The current leadership (None while standby)."""
        self._orphans: set[asyncio.Task[Any]] = set()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, lead: LeadFn, stop: asyncio.Event) -> None:
        """Stand by, lead while holding the lease, step down on loss; return on ``stop``
        (after ``lead`` has returned and the lease is released) or when ``lead`` returns."""
        cfg, clock = self.lease.cfg, self.lease.clock
        async with self._release_wakeups() as released, self._reaping_orphans():
            while not stop.is_set():
                # 1. Standby: wait without polling until the lease may be free, then acquire.
                acquired = await self._acquire(released, stop)
                if acquired is None:
                    return  # stopped while standby: nothing to release
                leadership = Leadership(
                    acquired.token,
                    self.lease.holder_id,
                    clock=clock,
                    deadline=acquired.sent_at + (cfg.renew_deadline - cfg.drift_margin) / 1000,
                    enforce=self.self_fence,
                )
                self.leadership = leadership
                logs.event(self.log, "lease.acquired", token=acquired.token,
                           ttl_ms=acquired.ttl_ms, holder=self.lease.holder_id)
                end: _End | None = None
                try:
                    # 2. Lead inside a task group, next to the renew loop.
                    async with asyncio.TaskGroup() as tg:
                        lead_done = asyncio.Event()
                        lead_task = tg.create_task(_call(lead, leadership), name="lease-lead")
                        lead_task.add_done_callback(functools.partial(_set_event, lead_done))
                        # 3. Renew until the renew deadline passes, Redis refuses, or stop.
                        end = await self._renew_until_end(leadership, stop, lead_done)
                        # 4. Stop leading: lost is already set on a loss; cancel lead until
                        #    it has ended. One cancel() is not enough: a client library's
                        #    request timeout firing at the same moment can swallow it (the
                        #    cancellation surfaces as a TimeoutError the lead code handles),
                        #    and the task group would then wait on a lead that never ends.
                        #    A lead still unwinding its cancellation (cancelling() > 0)
                        #    is left to finish its cleanup; only a swallowed one is repeated.
                        if not lead_task.done():
                            leadership.lost.set()
                            lead_task.cancel()
                        while not lead_task.done():
                            await asyncio.wait({lead_task}, timeout=STEPDOWN_RECANCEL_S)
                            if not lead_task.done() and lead_task.cancelling() == 0:
                                lead_task.cancel()
                finally:
                    # 5. Only now that lead has returned: release (unless Redis refused us).
                    leadership.lost.set()
                    self.leadership = None
                    await self._step_down(end)
                if end is _End.LEAD_RETURNED:
                    return
            # stop was set between leaderships: nothing held

    @contextlib.asynccontextmanager
    async def _reaping_orphans(self) -> AsyncIterator[None]:
        """On the way out, give Redis calls that ``_bounded`` gave up on a moment to end."""
        try:
            yield
        finally:
            if self._orphans:
                await asyncio.wait(list(self._orphans), timeout=1.0)

    async def _bounded(self, coro: Coroutine[Any, Any, T], limit_s: float) -> T:
        """``await coro``, but give up after ``limit_s`` *whatever the Redis client does*.

        Unlike ``asyncio.wait_for`` this never waits for the cancelled call to unwind, so a
        cancellation swallowed inside the client cannot hold the self-fence back. A call
        given up on is cancelled and reaped when ``run`` ends."""
        task = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait([task], timeout=limit_s)
        except asyncio.CancelledError:
            self._orphan(task)
            raise
        if task in done:
            return task.result()
        self._orphan(task)
        raise TimeoutError(f"no answer from Redis within {limit_s * 1000:.0f}ms")

    def _orphan(self, task: asyncio.Task[Any]) -> None:
        task.cancel()
        if not task.done():
            self._orphans.add(task)
            task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._orphans.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned call's error was already handled

    async def _acquire(self, released: asyncio.Event, stop: asyncio.Event) -> Acquired | None:
        """Try to acquire; while held, sleep until the seen lease expires, a release is
        published, or the slow fallback is due. None when ``stop`` is set.

        When the sleep ends at the seen expiry (nothing woke it), a plain ``PTTL`` comes
        first: an idle standby next to a renewing holder costs one command per ttl, and
        the acquire script runs only once the lease is gone (or a release woke us)."""
        clock = self.lease.clock
        limit = self.lease.cfg.ttl / 1000
        failures = 0
        held: Held | None = None
        refused: tuple[str, str] | None = None
        woken = True
        while not stop.is_set():
            released.clear()
            try:
                if held is not None and not woken:
                    sent_at = clock()
                    ttl_ms = await self._bounded(self.lease.remaining_ms(), limit)
                    if ttl_ms != -2:  # still held (renewed, or taken over): sleep again
                        held = Held(held.holder, held.token, ttl_ms, sent_at)
                        woken = await _first_set([stop, released], self._until_expiry(held))
                        continue
                outcome = await self._bounded(self.lease.try_acquire(), limit)
            except _STANDBY_ERRORS as e:
                failures += 1
                delay = _backoff(failures, self.fallback)
                logs.event(self.log, "lease.redis_unavailable", logging.WARNING, phase="standby",
                           error=_describe(e), attempt=failures, retry_in_ms=int(delay * 1000))
                await _first_set([stop], delay)
                woken = True
                continue
            if failures:
                logs.event(self.log, "lease.redis_recovered", phase="standby", attempts=failures)
                failures = 0
            if isinstance(outcome, Acquired):
                return outcome
            if isinstance(outcome, Refused):
                # Fail closed: the fence's history is gone or not ours. Nothing is taken
                # until an operator re-seeds it (`guardrails fence recover`); retried slowly.
                if refused != (outcome.reason, outcome.epoch):
                    logs.event(self.log, "lease.fence_refused", logging.ERROR,
                               reason=outcome.reason, seen=outcome.seen,
                               epoch=outcome.epoch or "-",
                               action="not trading until `guardrails fence recover`")
                    refused = (outcome.reason, outcome.epoch)
                held = None
                woken = await _first_set([stop], self.fallback)
                continue
            refused = None
            if held is None or (held.holder, held.token) != (outcome.holder, outcome.token):
                level = logging.WARNING if outcome.holder == self.lease.holder_id else logging.INFO
                logs.event(self.log, "lease.standby", level, holder=outcome.holder,
                           token=outcome.token, ttl_ms=outcome.ttl_ms)
            held = outcome
            woken = await _first_set([stop, released], self._until_expiry(held))
        return None

    def _until_expiry(self, held: Held) -> float:
        """Seconds until the seen lease can have expired (it cannot before ``sent_at +
        ttl``), capped by the slow fallback; the fallback alone if it has no expiry."""
        if held.ttl_ms < 0:
            return self.fallback
        wait = held.sent_at + (held.ttl_ms + 1) / 1000 - self.lease.clock()
        return min(max(wait, 0.0), self.fallback)

    async def _renew_until_end(
        self, leadership: Leadership, stop: asyncio.Event, lead_done: asyncio.Event
    ) -> _End:
        """Renew every renew_interval; each success moves the local deadline to
        ``sent_at + renew_deadline - drift_margin``. Returns why leading ends."""
        cfg, clock = self.lease.cfg, self.lease.clock
        interval = cfg.renew_interval / 1000
        last_sent = clock()
        next_renew = last_sent + interval
        failures = 0
        while True:
            wake_at = min(next_renew, leadership.deadline) if self.self_fence else next_renew
            if await _first_set([stop, lead_done], wake_at - clock()):
                return _End.STOPPED if stop.is_set() else _End.LEAD_RETURNED
            if self.self_fence and clock() >= leadership.deadline:
                leadership.lost.set()  # self-fence: stop admitting at once
                logs.event(self.log, "lease.lost", logging.WARNING, token=leadership.token,
                           reason="renew_deadline", failed_renews=failures)
                return _End.DEADLINE
            sent_at = clock()
            budget = leadership.remaining_s() if self.self_fence else cfg.ttl / 1000
            try:
                outcome = await self._bounded(self.lease.renew_outcome(), max(budget, 0.001))
            except INFRA_ERRORS as e:
                failures += 1
                remaining = leadership.remaining_s()
                logs.event(self.log, "lease.renew_failed", logging.WARNING, token=leadership.token,
                           error=_describe(e), attempt=failures,
                           remaining_ms=int(remaining * 1000))
                next_renew = clock() + _backoff(failures, interval)
                continue
            if outcome is not RenewOutcome.RENEWED:
                logs.event(self.log, "lease.lost", logging.WARNING, token=leadership.token,
                           reason=outcome.value)
                if self.on_refused is not None:
                    await self.on_refused(stop)
                leadership.lost.set()
                return _End.REFUSED
            answered_after = clock() - sent_at
            gap = sent_at - last_sent
            leadership._extend(sent_at + (cfg.renew_deadline - cfg.drift_margin) / 1000)
            if failures or gap > 2 * interval or answered_after > interval:
                # renewed, but closer to the deadline than planned: worth a line
                logs.event(self.log, "lease.renewed_late", logging.WARNING, token=leadership.token,
                           gap_ms=int(gap * 1000), answered_after_ms=int(answered_after * 1000),
                           failed_renews=failures)
            failures = 0
            last_sent = sent_at
            next_renew = sent_at + interval

    async def _step_down(self, end: _End | None) -> None:
        """After lead has returned: release the lease unless Redis already refused it.

        On a self-fence the lease may still be ours in Redis; releasing it (compare-and-
        delete, bounded in time) lets a standby in before the TTL runs out. If it is no
        longer ours, Redis leaves it alone and we say so."""
        if end is _End.REFUSED:
            return
        token = self.lease.token
        reason = end.value if end else "aborted"
        try:
            outcome = await self._bounded(
                self.lease.release_outcome(), self.lease.cfg.renew_interval / 1000
            )
        except INFRA_ERRORS as e:
            logs.event(self.log, "lease.release_failed", logging.WARNING, token=token,
                       reason=reason, error=_describe(e),
                       note="the lease expires on its own within ttl")
            return
        if outcome is ReleaseOutcome.RELEASED:
            logs.event(self.log, "lease.released", token=token, reason=reason)
        else:
            logs.event(self.log, "lease.not_released", token=token, reason=reason,
                       found=outcome.value)

    # -- pub/sub wake-ups ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _release_wakeups(self) -> AsyncIterator[asyncio.Event]:
        """An Event set on every ``released <token>`` message (and on every
        (re)subscription, since a release may have been missed meanwhile)."""
        released = asyncio.Event()
        closing = asyncio.Event()
        task = asyncio.create_task(self._listen(released, closing), name="lease-listener")
        try:
            yield released
        finally:
            # The listener reads in bounded slices and checks ``closing`` after each, so
            # it ends even if a cancellation is lost inside the Redis client's read.
            closing.set()
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=3 * _LISTEN_SLICE_S)
            if not done:
                logs.event(self.log, "lease.listener_stuck", logging.WARNING,
                           note="release listener did not stop in time")

    async def _listen(self, released: asyncio.Event, closing: asyncio.Event) -> None:
        channel = self.lease.keys.lease_channel
        failures = 0
        while not closing.is_set():
            pubsub = self.lease.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                if failures:
                    logs.event(self.log, "lease.listener_recovered", attempts=failures)
                failures = 0
                released.set()
                while not closing.is_set():
                    # A read timeout, not a poll: it sends nothing to Redis.
                    msg = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_LISTEN_SLICE_S
                    )
                    if msg is not None and msg.get("type") == "message":
                        released.set()
            except Exception as e:  # a wake-up optimisation: never let it die silently
                if closing.is_set():
                    return
                failures += 1
                delay = _backoff(failures, self.fallback)
                logs.event(self.log, "lease.listener_error", logging.WARNING,
                           error=_describe(e), retry_in_ms=int(delay * 1000))
                await _first_set([closing], delay)
            finally:
                # The subscription's connection may already be broken (that is often why
                # the loop ended): closing it is best effort, whatever redis-py raises.
                with logs.swallowed(self.log, "lease.release_listener.close"):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
