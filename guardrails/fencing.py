"""Fencing epochs: reading the lost-history alarm, and re-seeding the fence above every
token ever seen (``guardrails fence status|recover``).

Invariant served: *one writer per account* (DESIGN.md §1) across Redis losing data. The
fence is the pair (epoch, counter). ``lua/lease_acquire.lua`` creates the epoch with the
counter, and every instance passes the highest (epoch, token) it has seen; a history that
is gone (FLUSHALL, an empty restart) or is another one (an older snapshot restored) is
refused and ``keys.fence_alarm`` is set, which blocks every instance — including a new
one that remembers nothing — until ``recover``:

1. collect every token the account's remaining records show: the fence, the alarm's
   ``seen_token`` (the highest any refusing instance saw), the ledger journal and order
   records, the registry, the paper venue's own record, and ``--above`` (what the
   operator read from the venue's records or the instances' logs);
2. with the account's ``--config``: rebuild the ledger's record of what the venue filled
   (``reconcile.adopt_venue_history``), while the alarm still stops every instance;
3. write, in one MULTI on the account's slot, fence = that floor, epoch =
   ``<new id>@<floor>`` (the ``@floor`` lets running instances adopt the new history: it
   starts above what they saw), and delete the alarm; put the account back in the
   account index;
4. the next holder takes a token above the floor and, as always on becoming active,
   reconciles every non-terminal order with the venue before any strategy runs.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from guardrails import scripts, statedir
from guardrails.keys import ACCOUNTS_INDEX, AccountKeys, PaperVenueKeys
from guardrails.prune import read_archive


class FileFenceMemory:
    """The highest (epoch, token) this host's instances of an account have seen, kept in
    ``<state dir>/fence/`` (``statedir.HostMemory``: only this user's own private file is
    trusted, ``load`` raises ``StateDirError`` otherwise; ``save`` never raises,
    ``lease.FenceMemory``) so that a cold start after Redis lost its history is still
    refused. Our own file that does not parse is logged and treated as none."""

    def __init__(self, account: str, redis_target: str, root: Path | None = None) -> None:
        self._file = statedir.HostMemory("fence", account, redis_target, root)
        self.path = self._file.path
        self.account = account

    def load(self) -> tuple[str, int]:
        doc = self._file.load_doc()
        if doc is None:
            return "", 0
        try:
            epoch, token = str(doc["epoch"]), int(doc["token"])
        except (ValueError, KeyError, TypeError) as e:
            self._file.unreadable(e)
            return "", 0
        return (epoch, token) if epoch and token >= 0 else ("", 0)

    def save(self, epoch: str, token: int) -> None:
        self._file.save_doc({"epoch": epoch, "token": token})


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _opt(v: Any) -> str | None:
    return None if v is None else _s(v)


class FenceRecordError(ValueError):
    """A record the fence floor is computed from holds a malformed token: recovery
    refuses (a token read as 0 could put the floor below one already handed out)."""


def _int(v: Any, what: str) -> int:
    """A stored token (absent = 0), exactly as the scripts define one (lib/int.lua);
    ``FenceRecordError`` naming ``what`` (key and field) otherwise."""
    try:
        return scripts.stored_nat(v, what)
    except ValueError as e:
        raise FenceRecordError(str(e)) from None


async def read_alarm(redis: aioredis.Redis, keys: AccountKeys) -> dict[str, str] | None:
    """The account's lost-history alarm, or None when there is none."""
    raw = await redis.hgetall(keys.fence_alarm)
    return {_s(k): _s(v) for k, v in raw.items()} if raw else None


@dataclass(slots=True)
class Recovery:
    account: str
    floor: int
    epoch: str
    sources: dict[str, int] = field(default_factory=dict)
    """Highest token found in each source."""
    alarm: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"account": self.account, "floor": self.floor, "epoch": self.epoch,
                "sources": self.sources, "alarm": self.alarm}


async def _max_stream_token(redis: aioredis.Redis, key: str, account: str | None = None) -> int:
    best = 0
    last = "-"
    while True:
        batch = await redis.xrange(key, min=last, max="+", count=1000)
        if not batch:
            return best
        for fid, fields in batch:
            f = {_s(k): v for k, v in (fields or {}).items()}
            if account is None or _s(f.get("account", "")) == account:
                best = max(best, _int(f.get("token"), f"{key} entry {_s(fid)} token"))
        last = "(" + _s(batch[-1][0])
        if len(batch) < 1000:
            return best


async def fence_status(redis: aioredis.Redis, keys: AccountKeys) -> dict[str, Any]:
    """The account's epoch, fencing counter and alarm (read-only: GET, GET, HGETALL)."""
    epoch = await redis.get(keys.epoch)
    return {"account": str(keys.account), "epoch": None if epoch is None else _s(epoch),
            "fence": _int(await redis.get(keys.fence), keys.fence),
            "alarm": await read_alarm(redis, keys)}


async def highest_tokens(redis: aioredis.Redis, keys: AccountKeys, *,
                         paper_venue: str | None = None,
                         archive: Path | None = None) -> dict[str, int]:
    """The highest token each remaining record of the account shows, the prune archive
    (``archive``: the orders pruned from Redis, docs/keys.md) included."""
    out: dict[str, int] = {"fence": _int(await redis.get(keys.fence), keys.fence)}
    alarm = await read_alarm(redis, keys)
    out["alarm_seen"] = _int(alarm.get("seen_token"), f"{keys.fence_alarm} seen_token") if alarm else 0
    out["journal"] = await _max_stream_token(redis, keys.journal)
    orders = 0
    async for key in redis.scan_iter(match=keys.order("*"), count=500):
        orders = max(orders, _int(await redis.hget(_s(key), "token"), f"{_s(key)} token"))
    out["orders"] = orders
    registry = 0
    for member in await redis.zrange(keys.instances, 0, -1):
        ikey = keys.instance(_s(member))
        token = await redis.hget(ikey, "token")  # '' while it holds none (a standby)
        registry = max(registry, _int(token or None, f"{ikey} token"))
    out["registry"] = registry
    if paper_venue:
        out["venue_record"] = await _max_stream_token(
            redis, PaperVenueKeys(paper_venue).record, str(keys.account))
    if archive is not None:
        pruned = read_archive(archive).orders.items()
        # the archive holds the records as Redis stored them: strings, read the same way
        out["archive"] = max((_int(_opt(o.get("order", {}).get("token")),
                                   f"{archive} order {c} token") for c, o in pruned), default=0)
    return out


async def recover(redis: aioredis.Redis, keys: AccountKeys, *, above: int = 0,
                  paper_venue: str | None = None, archive: Path | None = None) -> Recovery:
    """Re-seed the fence at the highest token seen anywhere (and ``above``), under a new
    epoch ``<id>@<floor>``, and clear the alarm. The next acquire hands out floor + 1."""
    sources = await highest_tokens(redis, keys, paper_venue=paper_venue, archive=archive)
    sources["operator_above"] = above
    floor = max(sources.values())
    epoch = f"{uuid.uuid4().hex}@{floor}"
    alarm = await read_alarm(redis, keys)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.fence, str(floor))
        pipe.set(keys.epoch, epoch)
        pipe.delete(keys.fence_alarm)
        await pipe.execute()
    # The account index went with the history (a FLUSHALL): without it `kill --all`,
    # `status` and `doctor` would not see the account. Outside the slot: its own command.
    await redis.sadd(ACCOUNTS_INDEX, str(keys.account))
    return Recovery(str(keys.account), floor, epoch, sources, alarm)
