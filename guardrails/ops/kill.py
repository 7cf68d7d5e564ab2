"""``guardrails kill`` and ``guardrails resume``: write an account's latch from anywhere,
then wait for the running instances to confirm they read it.

The latch itself (its script, its read-back check, what a HALTED return guarantees) is
``guardrails/killswitch.py``; this is the operator's side: which accounts (``--account``,
the config's, or ``--all``), a refusal of an account never seen on this Redis (a typo
would otherwise halt nothing and say "done"), one wait for every confirmation, and an
exit status that says which of those happened:

- 0: written, verified, and confirmed by a running instance of each account;
- 1: not written (Redis refused or could not be reached);
- 2: refused before anything was written (bad or unknown account);
- 3 (``EXIT_UNCONFIRMED``): written and verified, but no running instance confirmed it,
  or not every replica connected to the master acknowledged it (``WAIT``): a failover
  now could promote a replica that reads ACTIVE, so the kill is not done.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails.infra import connect
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from guardrails.killswitch import REPLICATION_TIMEOUT_MS, KillSwitch, KillSwitchError, StateChange
from guardrails.model import TradingState
from guardrails.ops.common import load_target, operator_identity, target_account
from guardrails.registry import known_accounts, read_account_index


def describe(change: StateChange, *, confirmed: int | None = None) -> str:
    """One line for the operator: exactly what was done."""
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
    if change.replication_problem:
        line += f"; NOT replicated: {change.replication_problem}"
    elif change.replicas:
        line += f"; replicated to {change.acked}/{change.replicas} replicas"
    else:
        line += "; no replicas connected"
    return line


CONFIRM_TIMEOUT_S = 5.0
"""How long ``kill``/``resume`` wait for running instances to confirm they read the latch."""
EXIT_UNCONFIRMED = 3
"""``kill``/``resume`` exit status: the latch is written and verified, but no running
instance of the account confirmed it — no bot listens on this Redis (docs/operations.md) —
or not every connected replica acknowledged it."""


async def confirmations(redis: aioredis.Redis, keys: AccountKeys, change: StateChange,
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
    url, _ = load_target(args)
    redis = await connect.connect(url)
    where = connect.describe(url)
    try:
        try:
            if accounts is None:
                index = await read_account_index(redis)
                if index.warning():
                    print(index.warning(), file=sys.stderr)
                targets = index.accounts
            else:
                targets = accounts
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
        unreplicated: list[str] = []
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
                confirmed = await confirmations(redis, keys, change,
                                                 max(0.0, deadline - time.monotonic()))
            except RedisError as e:
                confirmed = []
                print(f"warning: could not read confirmations of {account}: {e}", file=sys.stderr)
            print(describe(change, confirmed=len(confirmed)))
            if not confirmed:
                unconfirmed.append(str(account))
            if not change.replicated:
                unreplicated.append(
                    f"{account} ({change.replication_problem or f'{change.acked}/{change.replicas}'})")
        if failed:
            return 1
        if unreplicated:
            print(f"NOT REPLICATED: the latch of {', '.join(unreplicated)} is written on the "
                  f"master at {where}, but not every connected replica acknowledged it "
                  f"within {REPLICATION_TIMEOUT_MS} ms: if the master fails over now, the "
                  "promoted replica may read the old state and the bot keep trading. Check "
                  "the replicas (INFO replication) and run this command again.",
                  file=sys.stderr)
        if unconfirmed:
            print(f"NOT CONFIRMED: the latch of {', '.join(unconfirmed)} is written at {where}, "
                  f"but no running instance confirmed it within {timeout:g}s: no bot of that "
                  "account listens on this Redis. If a bot is trading, it uses another Redis "
                  "(a supervised bot's URL is in its unit's environment: GUARDRAILS_REDIS_URL); "
                  "run this command against that one.", file=sys.stderr)
            return EXIT_UNCONFIRMED
        return EXIT_UNCONFIRMED if unreplicated else 0
    finally:
        await redis.aclose()


def _reason_problem(args: argparse.Namespace, command: str) -> bool:
    """True (after one line on stderr) when ``--reason`` is not UTF-8 text: argv bytes
    that are not UTF-8 arrive as surrogate escapes, which Redis cannot be sent."""
    try:
        str(getattr(args, "reason", "")).encode("utf-8")
    except UnicodeEncodeError:
        print(f"guardrails {command}: --reason is not valid UTF-8 text; nothing was written",
              file=sys.stderr)
        return True
    return False


def cmd_kill(args: argparse.Namespace) -> int:
    """``guardrails kill``: HALTED (or REDUCING with --reduce-only). Exit 0 written and
    confirmed by a running instance, 1 not written, 2 refused, 3 written but unconfirmed."""
    if _reason_problem(args, "kill"):
        return 2
    state = TradingState.REDUCING if args.reduce_only else TradingState.HALTED
    accounts: list[AccountId] | None = None
    if not args.all:
        account = target_account(args, "kill")
        if account is None:
            return 2
        accounts = [account]
    return asyncio.run(_apply(args, state, accounts, bool(args.revoke)))


def cmd_resume(args: argparse.Namespace) -> int:
    """``guardrails resume``: back to ACTIVE; exit 1 unless written, 3 unless confirmed."""
    account = target_account(args, "resume")
    if account is None:
        return 2
    if not getattr(args, "reason", ""):
        args.reason = "resume"
    if _reason_problem(args, "resume"):
        return 2
    return asyncio.run(_apply(args, TradingState.ACTIVE, [account], False))
