"""The kill switch: an account's trading-state latch, settable from any machine.

Invariant upheld: *fail closed, and say why* (DESIGN.md §5). The latch is the HASH
``keys.state`` (``state`` ACTIVE | REDUCING | HALTED, ``reason``, ``by`` = who, e.g. an
operator's ``user@host``, ``at_ms`` = Redis server time, ``revoked_token``,
``prev_state``, ``version`` = the latch's number, above the latch it replaced: the server
time in ms, or one more than the replaced version when that is not below it).
One script
(``lua/killswitch_set.lua``) writes it, appends an entry to the account's journal and
PUBLISHes a JSON message on ``keys.control_channel`` — all in one atomic step, so a
latch is never set without its record and announcement. With ``revoke`` the same step
also INCRs ``keys.fence`` and deletes ``keys.lease``: the current holder's next gate call
is refused inside Redis, whatever its local clock believes.

What this module guarantees: when ``set_state`` returns, the latch is in Redis (read back
and compared), so the gate — which reads the latch in its own admission script — admits
nothing new after a HALTED kill returns. It also says how many of the server's connected
replicas acknowledged the write (``WAIT`` on the connection that wrote it, bounded by
``replication_timeout_ms``): a latch that reached no replica is lost if the master fails
over, and the replica promoted in its place reads ACTIVE. ``set_state`` reports that
(``StateChange.replicated``); it does not refuse it — the caller decides (``kill`` exits
non-zero and says so). What it does NOT guarantee: that open orders are
already cancelled at the venue when the command returns; the active instance does that
on the control-channel message (and reconciliation on takeover), and the gate refuses
every new order meanwhile. The operator command around it (which accounts, the wait for
confirmations, exit codes) is ``guardrails/ops/kill.py``.

A latch Redis lost is not a latch never set. Redis can lose its last writes (a crash
under ``appendfsync everysec``, a failover to a replica that had not received them), and
then a kill an instance already obeyed reads ACTIVE again (the key is gone) or as the
older latch it replaced. The fence does not show it: without ``--revoke`` a kill does not
touch the fence, and a fence rolled back within its epoch is raised silently on the next
acquire (``lua/lease_acquire.lua``). So every instance remembers the newest latch it saw
(``LatchSeen``, per host in ``FileLatchMemory``) and judges every latch it reads against
it (``follow``): a version below the remembered one is a lost latch — the instance
admits nothing (the gate refuses ``latch_lost`` below the floor it is given) and says so,
until an operator writes a new latch (``kill`` or ``resume``), whose version is above
what Redis showed and, being the server time, above the lost ones too (so one new latch
clears every instance that remembers one of them, not only the one that raised the
alarm). What that does NOT cover: a kill lost before any instance read it (no one saw
it: nothing to remember — ``kill`` reports whether a bot confirmed it and whether every
replica acknowledged it), and an instance on another host that never saw the lost latch
(each host remembers what its own instances saw).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from guardrails import scripts, statedir
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import TradingState

REPLICATION_TIMEOUT_MS = 500
"""How long ``set_state`` waits for replicas to acknowledge the latch (``WAIT``). Below
the operator commands' 1 s socket timeout, so a paused replica is an answer, not an error."""


class KillSwitchError(RuntimeError):
    """The latch could not be written or verified. ``str()`` says what and why."""


@dataclass(frozen=True, slots=True)
class Latch:
    """The latch as stored. A missing key or field reads as ACTIVE (never set)."""

    state: TradingState
    reason: str = ""
    by: str = ""
    at_ms: int | None = None
    revoked_token: str = ""
    version: int = 0
    """The latch's number (above the latch it replaced: ``lua/killswitch_set.lua``); 0 when
    there is none or it was written before latches had versions."""

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "by": self.by,
            "at_ms": self.at_ms,
            "revoked_token": self.revoked_token or None,
            "version": self.version,
        }


@dataclass(frozen=True, slots=True)
class StateChange:
    """What one kill/resume did, as confirmed by reading the latch back."""

    account: AccountId
    prev_state: TradingState
    state: TradingState
    reason: str
    by: str
    at_ms: int
    revoked_token: str
    """Token of the lease holder that was fenced out ("" if no revoke or no lease)."""
    fence_after: str
    """Value of the fencing counter after the revoke's INCR ("" without revoke)."""
    subscribers: int
    """Processes subscribed to the control channel when the change was published."""
    version: int = 0
    """The new latch's version."""
    replicas: int = 0
    """Replicas connected to the server that took the write (INFO replication)."""
    acked: int = 0
    """Of those, how many acknowledged the write within the timeout (``WAIT``)."""
    replication_problem: str = ""
    """Why replication could not be checked ("" when it was)."""

    @property
    def replicated(self) -> bool:
        """Every connected replica acknowledged the write (vacuously true with none)."""
        return not self.replication_problem and self.acked >= self.replicas


def _nat(v: str | None, what: str) -> int | None:
    """A latch field (absent: None) as lib/int.lua's stored integer."""
    if not v:
        return None
    try:
        return scripts.stored_nat(v, what)
    except ValueError as e:
        raise KillSwitchError(f"{e}: fail closed, fix the key") from None


async def read_latch(redis: aioredis.Redis, keys: AccountKeys) -> Latch:
    """The account's latch (read-only: TYPE + HGETALL). Raises KillSwitchError on a bad shape."""
    kind = await redis.type(keys.state)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "none":
        return Latch(TradingState.ACTIVE)
    if kind != "hash":
        raise KillSwitchError(f"{keys.state} is a {kind}, not a hash: fail closed, fix the key")
    raw = await redis.hgetall(keys.state)
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    try:
        state = TradingState(fields.get("state", "ACTIVE"))
    except ValueError:
        raise KillSwitchError(
            f"{keys.state} state={fields.get('state')!r} is not ACTIVE|REDUCING|HALTED"
        ) from None
    return Latch(
        state=state,
        reason=fields.get("reason", ""),
        by=fields.get("by", ""),
        at_ms=_nat(fields.get("at_ms"), f"{keys.state} at_ms"),
        revoked_token=fields.get("revoked_token", ""),
        version=_nat(fields.get("version"), f"{keys.state} version") or 0,
    )


@dataclass(frozen=True, slots=True)
class LatchSeen:
    """The newest latch an instance saw: what it judges every latch it reads against."""

    version: int
    state: TradingState
    at_ms: int | None = None
    by: str = ""
    lost: str = ""
    """Non-empty while the latch in Redis is behind one seen before (that one, described):
    ``version`` etc. are then the latch Redis showed, and only a newer one clears it."""

    @property
    def floor(self) -> int:
        """The lowest latch version anything may be admitted under (``gate_admit.lua``,
        step 2): the version seen, or, while lost, one above what Redis showed."""
        return self.version + 1 if self.lost else self.version

    def describe(self) -> str:
        return f"{self.state.value} version {self.version} by {self.by or '?'} at_ms {self.at_ms}"

    def to_json(self) -> dict[str, object]:
        return {"version": self.version, "state": self.state.value, "at_ms": self.at_ms,
                "by": self.by, "lost": self.lost}


def follow(seen: LatchSeen | None, latch: Latch) -> tuple[LatchSeen, bool]:
    """What an instance that remembers ``seen`` makes of reading ``latch`` (pure): what it
    remembers now, and whether the latch has just gone backwards — a version below the one
    seen (an absent latch is version 0). A newer version is followed (and ends a loss);
    the same version is the same latch (or, while lost, the one Redis fell back to)."""
    now = LatchSeen(latch.version, latch.state, latch.at_ms, latch.by)
    if seen is None or latch.version > seen.version:
        return now, False
    if latch.version == seen.version:
        return seen, False
    return replace(now, lost=seen.lost or seen.describe()), True


class FileLatchMemory:
    """The newest latch this host's instances of an account saw (``LatchSeen``), kept in
    ``<state dir>/latch/`` (``statedir.HostMemory``: only this user's own private file is
    trusted, ``load`` raises ``StateDirError`` otherwise; ``save`` never raises), so that a
    restarted instance still knows a latch Redis has since lost. Our own file that does
    not parse is logged and read as none."""

    def __init__(self, account: str, redis_target: str, root: Path | None = None) -> None:
        self._file = statedir.HostMemory("latch", account, redis_target, root)
        self.path = self._file.path

    def load(self) -> LatchSeen | None:
        doc = self._file.load_doc()
        if doc is None:
            return None
        try:
            at_ms = doc.get("at_ms")
            seen = LatchSeen(int(doc["version"]), TradingState(doc["state"]),
                             None if at_ms is None else int(at_ms), str(doc.get("by", "")),
                             str(doc.get("lost", "")))
        except (ValueError, KeyError, TypeError) as e:
            self._file.unreadable(e)
            return None
        return seen if seen.version >= 0 else None

    def save(self, seen: LatchSeen) -> None:
        self._file.save_doc(seen.to_json())


class KillSwitch:
    """Writes the latch of one account. One script registration per instance (per client)."""

    def __init__(self, redis: aioredis.Redis, keys: AccountKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = scripts.register(redis, "killswitch_set")

    async def set_state(
        self, state: TradingState, *, reason: str, by: str, revoke: bool = False,
        replication_timeout_ms: int = REPLICATION_TIMEOUT_MS,
    ) -> StateChange:
        """Write the latch (and, with ``revoke``, fence out the holder), wait for the
        server's connected replicas to acknowledge it, then verify it.

        Raises ``KillSwitchError`` if Redis refused or could not be reached, or if the
        latch read back is not the one written: the caller must then report failure.
        A latch written but not acknowledged by every replica is returned with
        ``replicated`` false (and ``replication_problem`` when it could not be checked).
        """
        k = self._keys
        keys = [k.state, k.journal, k.fence, k.lease, k.control_channel]
        args = [state.value, reason, by, "1" if revoke else "0", str(k.account)]
        replicas = acked = 0
        problem = ""
        try:
            if isinstance(self._redis, RedisCluster):
                raw = await self._script(keys=keys, args=args)
                replicas, problem = await self._cluster_replicas()
            else:
                # WAIT counts only the writes of its own connection: one connection for
                # the script, INFO and WAIT.
                async with self._redis.client() as conn:
                    raw = await self._script(keys=keys, args=args, client=conn)
                    self._outcome(raw, state, reason, by)  # refused: nothing to wait for
                    try:
                        info = await conn.info("replication")
                        replicas = int(info.get("connected_slaves", 0))
                        if replicas:
                            acked = int(await conn.wait(replicas, replication_timeout_ms))
                    except (RedisError, ValueError, TypeError) as e:
                        problem = f"could not check replication: {e}"
        except RedisError as e:
            raise KillSwitchError(f"{k.account}: could not write the latch: {e}") from e
        change = replace(self._outcome(raw, state, reason, by), replicas=replicas,
                         acked=acked, replication_problem=problem)
        try:
            latch = await read_latch(self._redis, k)
        except RedisError as e:
            raise KillSwitchError(
                f"{k.account}: wrote the latch but could not read it back: {e}"
            ) from e
        if (latch.state is not state or latch.at_ms != change.at_ms
                or latch.version != change.version):
            raise KillSwitchError(
                f"{k.account}: latch read back as {latch.state.value} at {latch.at_ms} "
                f"(version {latch.version}), not {state.value} at {change.at_ms} (version "
                f"{change.version}): another operator changed it; check status"
            )
        return change

    async def _cluster_replicas(self) -> tuple[int, str]:
        """The replicas of the slot owner of the latch, and why they cannot be waited for
        ("" with none): a cluster client does not keep the write's connection for WAIT."""
        assert isinstance(self._redis, RedisCluster)
        try:
            node = self._redis.get_node_from_key(self._keys.state)
            info = await self._redis.info("replication", target_nodes=node)
            replicas = int(info.get("connected_slaves", 0))
        except (RedisError, ValueError, TypeError) as e:
            return 0, f"could not check replication: {e}"
        if replicas:
            return replicas, ("Redis Cluster: replication of the latch is not checked "
                              f"({replicas} replica(s) of its slot owner)")
        return 0, ""

    def _outcome(self, raw: object, state: TradingState, reason: str, by: str) -> StateChange:
        """Map the script's reply to a value: the ONE place its codes are interpreted."""
        if not isinstance(raw, list) or len(raw) != 7:
            raise KillSwitchError(f"{self._keys.account}: unexpected script reply {raw!r}")
        code, prev, at_ms, revoked, fence_after, subscribers, version = (
            x.decode() if isinstance(x, bytes) else x for x in raw
        )
        if code == 1:
            return StateChange(
                account=self._keys.account,
                prev_state=TradingState(prev),
                state=state,
                reason=reason,
                by=by,
                at_ms=int(at_ms),
                revoked_token=str(revoked),
                fence_after=str(fence_after),
                subscribers=int(subscribers),
                version=int(version),
            )
        if code == -1:
            index, _, kind = str(prev).partition(":")
            names = {"1": "state", "2": "journal", "3": "fence", "4": "lease"}
            raise KillSwitchError(
                f"{self._keys.account}: key {names.get(index, index)} has type {kind}; "
                "nothing written. Inspect it with `guardrails doctor` and repair it first"
            )
        if code == -2:
            raise KillSwitchError(f"{self._keys.account}: {prev!r} is not a trading state")
        if code == -3:
            raise KillSwitchError(f"{self._keys.account}: {prev}; nothing written. Repair "
                                  "the latch's version field first")
        raise KillSwitchError(f"{self._keys.account}: unknown script code {code!r}")
