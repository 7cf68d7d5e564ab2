"""The kill switch: an account's trading-state latch, settable from any machine.

Invariant upheld: *fail closed, and say why* (DESIGN.md §5). The latch is the HASH
``keys.state`` (``state`` ACTIVE | REDUCING | HALTED, ``reason``, ``by`` = user@host,
``at_ms`` = Redis server time, ``revoked_token``, ``prev_state``). One script
(``lua/killswitch_set.lua``) writes it, appends an entry to the account's journal and
PUBLISHes a JSON message on ``keys.control_channel`` — all in one atomic step, so a
latch is never set without its record and announcement. With ``revoke`` the same step
also INCRs ``keys.fence`` and deletes ``keys.lease``: the current holder's next gate call
is refused inside Redis, whatever its local clock believes.

What this module guarantees: when ``set_state`` returns, the latch is in Redis (read back
and compared), so the gate — which reads the latch in its own admission script — admits
nothing new after a HALTED kill returns. What it does NOT guarantee: that open orders are
already cancelled at the venue when the command returns; the active instance does that
on the control-channel message (and reconciliation on takeover), and the gate refuses
every new order meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import scripts
from guardrails.infra import connect
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys, InvalidAccountId
from guardrails.model import TradingState


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

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "reason": self.reason,
            "by": self.by,
            "at_ms": self.at_ms,
            "revoked_token": self.revoked_token or None,
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


def operator_identity() -> str:
    """``user@host`` of whoever runs this process (recorded in the latch)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
    at = fields.get("at_ms")
    return Latch(
        state=state,
        reason=fields.get("reason", ""),
        by=fields.get("by", ""),
        at_ms=int(at) if at and at.isdigit() else None,
        revoked_token=fields.get("revoked_token", ""),
    )


class KillSwitch:
    """Writes the latch of one account. One script registration per instance (per client)."""

    def __init__(self, redis: aioredis.Redis, keys: AccountKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._script = scripts.register(redis, "killswitch_set")

    async def set_state(
        self, state: TradingState, *, reason: str, by: str, revoke: bool = False
    ) -> StateChange:
        """Write the latch (and, with ``revoke``, fence out the holder), then verify it.

        Raises ``KillSwitchError`` if Redis refused or could not be reached, or if the
        latch read back is not the one written: the caller must then report failure.
        """
        k = self._keys
        try:
            raw = await self._script(
                keys=[k.state, k.journal, k.fence, k.lease, k.control_channel],
                args=[state.value, reason, by, "1" if revoke else "0", str(k.account)],
            )
        except RedisError as e:
            raise KillSwitchError(f"{k.account}: could not write the latch: {e}") from e
        change = self._outcome(raw, state, reason, by)
        try:
            latch = await read_latch(self._redis, k)
        except RedisError as e:
            raise KillSwitchError(
                f"{k.account}: wrote the latch but could not read it back: {e}"
            ) from e
        if latch.state is not state or latch.at_ms != change.at_ms:
            raise KillSwitchError(
                f"{k.account}: latch read back as {latch.state.value} at {latch.at_ms}, "
                f"not {state.value} at {change.at_ms}: another operator changed it; check status"
            )
        return change

    def _outcome(self, raw: object, state: TradingState, reason: str, by: str) -> StateChange:
        """Map the script's reply to a value: the ONE place its codes are interpreted."""
        if not isinstance(raw, list) or len(raw) != 6:
            raise KillSwitchError(f"{self._keys.account}: unexpected script reply {raw!r}")
        code, prev, at_ms, revoked, fence_after, subscribers = (
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
        raise KillSwitchError(f"{self._keys.account}: unknown script code {code!r}")


async def known_accounts(redis: aioredis.Redis) -> list[AccountId]:
    """Every account in ``keys.ACCOUNTS_INDEX`` (malformed members are skipped)."""
    out: list[AccountId] = []
    for raw in sorted(await redis.smembers(ACCOUNTS_INDEX)):
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            out.append(AccountId.parse(text))
        except InvalidAccountId:
            continue
    return out


def describe(change: StateChange, *, confirmed: int | None = None) -> str:
    """One line for the operator: exactly what was done."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(change.at_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    line = (
        f"{change.account}: {change.prev_state.value} -> {change.state.value} "
        f"by {change.by} at {when}Z reason={change.reason!r}"
    )
    if change.fence_after:
        if change.revoked_token:
            line += f"; revoked token {change.revoked_token} (fence now {change.fence_after})"
        else:
            line += f"; no lease was held; fence bumped to {change.fence_after}"
    if confirmed is None:
        line += f"; {change.subscribers} listener(s) notified"
    else:
        line += f"; {confirmed} instance(s) confirmed"
    return line


CONFIRM_TIMEOUT_S = 5.0
"""How long ``kill``/``resume`` wait for running instances to confirm they read the latch."""
EXIT_UNCONFIRMED = 3
"""``kill``/``resume`` exit status: the latch is written and verified, but no running
instance of the account confirmed it — no bot listens on this Redis (docs/operations.md)."""


async def _confirmations(redis: aioredis.Redis, keys: AccountKeys, change: StateChange,
                         within_s: float) -> list[str]:
    """The instances that acked ``change`` (``keys.kill_acks``) within ``within_s``."""
    want = f"{change.at_ms}:{change.state.value}"
    deadline = time.monotonic() + within_s
    while True:
        acks = await redis.hgetall(keys.kill_acks)
        found = sorted(_text(k) for k, v in acks.items() if _text(v) == want)
        if found or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(0.05)


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def ever_seen(redis: aioredis.Redis, account: AccountId) -> bool:
    """Whether ``account`` ever ran against this Redis: in the account index, or with
    stored limits. A typo'd id (``paper:dem0``) is neither."""
    k = AccountKeys(account)
    if await redis.sismember(ACCOUNTS_INDEX, str(account)):
        return True
    return bool(await redis.exists(k.limits))


async def _apply(
    args: argparse.Namespace, state: TradingState, accounts: list[AccountId] | None, revoke: bool
) -> int:
    from guardrails.status import load_target

    url, _ = load_target(args)
    redis = await connect.connect(url)
    where = connect.describe(url)
    try:
        try:
            targets = accounts if accounts is not None else await known_accounts(redis)
            if accounts is not None and not getattr(args, "force", False):
                unseen = [a for a in accounts if not await ever_seen(redis, a)]
                if unseen:
                    known = ", ".join(str(a) for a in await known_accounts(redis)) or "none"
                    print(f"guardrails: refused: {', '.join(map(str, unseen))} was never seen on "
                          f"{where} (not in {ACCOUNTS_INDEX}, no stored limits) — a typo? known "
                          f"accounts: {known}. Nothing was written; pass --force to write it anyway",
                          file=sys.stderr)
                    return 2
        except RedisError as e:
            print(f"guardrails: Redis at {where}: {e}; the latch was NOT confirmed: nothing was "
                  "changed", file=sys.stderr)
            return 1
        if not targets:
            print(
                f"guardrails: no known accounts in {ACCOUNTS_INDEX} on {where}; nothing was changed",
                file=sys.stderr,
            )
            return 1
        by = operator_identity()
        failed = 0
        unconfirmed: list[str] = []
        timeout = float(getattr(args, "confirm_timeout", CONFIRM_TIMEOUT_S))
        # Every latch first, then one wait for all the confirmations: `kill --all` waits
        # `timeout` in all, not per account, and no account's halt waits on another's ack.
        written: list[tuple[AccountId, AccountKeys, StateChange]] = []
        for account in targets:
            keys = AccountKeys(account)
            ks = KillSwitch(redis, keys)
            try:
                change = await ks.set_state(state, reason=args.reason, by=by, revoke=revoke)
            except KillSwitchError as e:
                failed += 1
                print(f"FAILED {e}; the latch of {account} was NOT confirmed", file=sys.stderr)
                continue
            written.append((account, keys, change))
            try:
                await redis.sadd(ACCOUNTS_INDEX, str(account))
            except RedisError as e:
                # The latch is set and verified; only the index (for --all and
                # dashboards) is missing this account, so say so rather than fail.
                print(f"warning: {account} not added to {ACCOUNTS_INDEX} ({e}); "
                      "`kill --all` and dashboards may not list it", file=sys.stderr)
        deadline = time.monotonic() + timeout
        for account, keys, change in written:
            try:
                confirmed = await _confirmations(redis, keys, change,
                                                 max(0.0, deadline - time.monotonic()))
            except RedisError as e:
                confirmed = []
                print(f"warning: could not read confirmations of {account}: {e}", file=sys.stderr)
            print(describe(change, confirmed=len(confirmed)))
            if not confirmed:
                unconfirmed.append(str(account))
        if failed:
            return 1
        if unconfirmed:
            print(f"NOT CONFIRMED: the latch of {', '.join(unconfirmed)} is written at {where}, "
                  f"but no running instance confirmed it within {timeout:g}s: no bot of that "
                  "account listens on this Redis. If a bot is trading, it uses another Redis "
                  "(a supervised bot's URL is in its unit's environment: GUARDRAILS_REDIS_URL); "
                  "run this command against that one.", file=sys.stderr)
            return EXIT_UNCONFIRMED
        return 0
    finally:
        await redis.aclose()


def _target_account(args: argparse.Namespace) -> AccountId | None:
    """``--account``, else the account of ``--config`` (default config/paper.toml), so
    ``guardrails kill --reason …`` in the bot's directory halts the bot's account."""
    if getattr(args, "account", None):
        return _account_arg(args.account)
    from guardrails.status import load_target

    _, cfg = load_target(args)
    if cfg is None:
        print("guardrails: name the account: --account venue:id, or --config with the bot's "
              "config (no config file found)", file=sys.stderr)
        return None
    return cfg.account_id


def _account_arg(text: str) -> AccountId | None:
    try:
        return AccountId.parse(text)
    except InvalidAccountId as e:
        print(f"guardrails: {e}", file=sys.stderr)
        return None


def cmd_kill(args: argparse.Namespace) -> int:
    """``guardrails kill``: HALTED (or REDUCING with --reduce-only). Exit 0 written and
    confirmed by a running instance, 1 not written, 2 refused, 3 written but unconfirmed."""
    state = TradingState.REDUCING if args.reduce_only else TradingState.HALTED
    accounts: list[AccountId] | None = None
    if not args.all:
        account = _target_account(args)
        if account is None:
            return 2
        accounts = [account]
    return asyncio.run(_apply(args, state, accounts, bool(args.revoke)))


def cmd_resume(args: argparse.Namespace) -> int:
    """``guardrails resume``: back to ACTIVE; exit 1 unless written, 3 unless confirmed."""
    account = _target_account(args)
    if account is None:
        return 2
    if not getattr(args, "reason", ""):
        args.reason = "resume"
    return asyncio.run(_apply(args, TradingState.ACTIVE, [account], False))
