"""The seeded fault schedule: a pure function of (seed, duration, instances, lease TTL).

The same arguments always give the same schedule, so a failing run is replayed with
its seed. Faults run one after another (never overlapping), so each violation the
checker finds can be laid next to the one fault that was in force. The first pass
injects every kind once, in a seeded order, with short holds; the rest of the window
is filled with faults drawn at random.

Targets are symbolic: ``active`` means "whichever instance holds the lease when the
fault fires" (the harness resolves it from the lease value in Redis and records whom
it hit); ``instance:<i>`` is a fixed instance.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

WARMUP_S = 3.0
"""No faults before this (the fault clock starts once the account trades)."""
QUIET_S = 6.0
"""No fault starts in the last seconds of the window."""


class FaultKind(StrEnum):
    SIGKILL = "sigkill"
    """SIGKILL an instance, start it again after ``hold_s``."""
    SIGSTOP = "sigstop"
    """SIGSTOP an instance for longer than the lease TTL, then SIGCONT."""
    PARTITION = "partition"
    """Close the instance's Redis connections and refuse new ones, then heal."""
    BLACKHOLE = "blackhole"
    """Accept the instance's Redis traffic but never forward it (timeouts), then heal."""
    REPLY_LOSS = "reply_loss"
    """Redis executes what the instance sends, but the replies never arrive (the
    connection drops after the write): an admission the instance cannot know about."""
    LATENCY = "latency"
    """Delay every byte between the instance and Redis by ``params.ms``."""
    REDIS_RESTART = "redis_restart"
    """SIGKILL Redis, keep it down for ``hold_s``, start it again from its AOF."""
    KILL_SWITCH = "kill_switch"
    """``guardrails kill`` (halt, reduce-only, or with ``--revoke``), ``resume`` after."""
    VENUE_DROP = "venue_drop"
    """The venue applies requests but loses its responses for ``hold_s``."""
    FLUSHALL = "flushall"
    """Every key of the account's database vanishes at once (the history is lost); the
    instances must refuse, then the harness runs ``guardrails fence recover`` like an
    operator ``hold_s`` later."""
    REDIS_WIPE = "redis_wipe"
    """SIGKILL Redis and start it again *without* its AOF (an empty restart); then as
    ``flushall``: refusal, ``fence recover`` after ``hold_s``."""
    SENTINEL_FAILOVER = "sentinel_failover"
    """SIGKILL the Sentinel-monitored primary; the sentinels promote the replica; the old
    primary comes back as a replica after ``hold_s`` (``--redis sentinel`` only)."""


PROXY_KINDS = frozenset(
    {FaultKind.PARTITION, FaultKind.BLACKHOLE, FaultKind.REPLY_LOSS, FaultKind.LATENCY}
)
"""Kinds applied in an instance's TCP proxy to Redis (a single-server run only: with
Sentinel the clients follow the master the sentinels name, not a proxy)."""
HISTORY_LOSS_KINDS = frozenset({FaultKind.FLUSHALL, FaultKind.REDIS_WIPE})
"""Kinds after which the account's history is gone and must be recovered."""
REDIS_MODES = ("single", "sentinel")


def kinds_for(redis_mode: str) -> tuple[FaultKind, ...]:
    """The kinds a run injects: ``single`` (one redis-server behind per-instance proxies)
    has every kind but the Sentinel failover; ``sentinel`` (primary + replica + three
    sentinels, clients connected through the sentinels) has the process, kill-switch,
    venue, FLUSHALL and failover kinds."""
    if redis_mode == "single":
        return tuple(k for k in FaultKind if k is not FaultKind.SENTINEL_FAILOVER)
    if redis_mode == "sentinel":
        return tuple(k for k in FaultKind if k not in PROXY_KINDS
                     and k not in (FaultKind.REDIS_RESTART, FaultKind.REDIS_WIPE))
    raise ValueError(f"unknown redis mode {redis_mode!r} (one of {REDIS_MODES})")


REQUIRED_KINDS = (
    FaultKind.SIGKILL,
    FaultKind.SIGSTOP,
    FaultKind.PARTITION,
    FaultKind.REDIS_RESTART,
    FaultKind.KILL_SWITCH,
    FaultKind.VENUE_DROP,
    FaultKind.FLUSHALL,
    FaultKind.REDIS_WIPE,
)
"""The kinds the issues ask for in a single-server run (``--redis sentinel`` adds
``sentinel_failover``); every schedule long enough holds each at least once."""


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    """Seconds on the fault clock, which starts once the account is trading."""
    kind: FaultKind
    target: str
    """``active``, ``instance:<i>``, ``redis``, ``venue`` or ``account``."""
    hold_s: float
    """How long the fault stays in force before the harness undoes it."""
    params: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return (
            f"t={self.at_s:6.1f}s  {self.kind.value:<13} target={self.target:<11} "
            f"hold={self.hold_s:4.1f}s {extra}"
        ).rstrip()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        return d


def _hold_range(kind: FaultKind, ttl_s: float) -> tuple[float, float]:
    return {
        FaultKind.SIGKILL: (1.0, 4.0),
        FaultKind.SIGSTOP: (ttl_s * 1.4, ttl_s * 2.5),
        FaultKind.PARTITION: (ttl_s * 1.2, ttl_s * 2.5),
        FaultKind.BLACKHOLE: (ttl_s * 1.2, ttl_s * 2.5),
        FaultKind.REPLY_LOSS: (1.0, 3.0),
        FaultKind.LATENCY: (2.0, 5.0),
        FaultKind.REDIS_RESTART: (0.5, 3.0),
        FaultKind.KILL_SWITCH: (2.0, 5.0),
        FaultKind.VENUE_DROP: (2.0, 5.0),
        FaultKind.FLUSHALL: (2.0, 6.0),
        FaultKind.REDIS_WIPE: (2.0, 6.0),
        FaultKind.SENTINEL_FAILOVER: (3.0, 8.0),
    }[kind]


def _target(kind: FaultKind, rng: random.Random, instances: int) -> str:
    if kind in (FaultKind.REDIS_RESTART, FaultKind.FLUSHALL, FaultKind.REDIS_WIPE,
                FaultKind.SENTINEL_FAILOVER):
        return "redis"
    if kind is FaultKind.KILL_SWITCH:
        return "account"
    if kind is FaultKind.VENUE_DROP:
        return "venue"
    # Mostly the active instance (that is where faults hurt); sometimes anyone.
    if rng.random() < 0.75:
        return "active"
    return f"instance:{rng.randrange(instances)}"


def _params(kind: FaultKind, rng: random.Random) -> dict[str, Any]:
    if kind is FaultKind.LATENCY:
        return {"ms": rng.choice((50, 150, 300, 600, 1200))}
    if kind is FaultKind.VENUE_DROP:
        modes = ("drop", "error_applied", "error_not_applied")
        return {"mode": rng.choices(modes, (0.6, 0.25, 0.15))[0]}
    if kind is FaultKind.KILL_SWITCH:
        return {"mode": rng.choices(("halt", "reduce_only", "revoke"), (0.5, 0.25, 0.25))[0]}
    return {}


def schedule(seed: int, duration_s: float, instances: int, ttl_s: float,
             kinds: tuple[FaultKind, ...] | None = None) -> list[Fault]:
    """Every fault of a run, in time order. Pure: same arguments, same list. ``kinds``
    defaults to ``kinds_for("single")``."""
    if instances < 1:
        raise ValueError("need at least one instance")
    pool = list(kinds if kinds is not None else kinds_for("single"))
    if not pool:
        raise ValueError("need at least one fault kind")
    rng = random.Random(seed)
    end = duration_s - QUIET_S
    faults: list[Fault] = []
    t = WARMUP_S
    first = list(pool)
    rng.shuffle(first)
    # Coverage pass: each kind once, short holds, so even a short run sees them all.
    for kind in first:
        lo, hi = _hold_range(kind, ttl_s)
        hold = round(rng.uniform(lo, lo + (hi - lo) * 0.25), 1)
        if t + hold > end:
            break
        faults.append(Fault(round(t, 1), kind, _target(kind, rng, instances), hold, _params(kind, rng)))
        t += hold + rng.uniform(1.5, 3.0)
    # Then anything, with its full range of holds, until the window is full.
    while True:
        kind = rng.choice(pool)
        lo, hi = _hold_range(kind, ttl_s)
        hold = round(rng.uniform(lo, hi), 1)
        if t + hold > end:
            break
        faults.append(Fault(round(t, 1), kind, _target(kind, rng, instances), hold, _params(kind, rng)))
        t += hold + rng.uniform(1.5, 4.0)
    return faults


def minimum_duration(ttl_s: float, kinds: tuple[FaultKind, ...] | None = None) -> float:
    """The shortest ``--duration`` whose schedule certainly holds every kind once."""
    pool = kinds if kinds is not None else kinds_for("single")
    worst = sum(lo + (hi - lo) * 0.25 for lo, hi in (_hold_range(k, ttl_s) for k in pool))
    return WARMUP_S + worst + 3.0 * len(pool) + QUIET_S
