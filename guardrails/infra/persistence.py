"""Whether the Redis that holds the fencing counter keeps it across a restart.

Invariant served: *one writer per account* (DESIGN.md §1). A fencing token is only a
fence while the counter it comes from never goes backwards. A Redis without its
append-only file (``appendonly no``) restarts with the counter gone (no RDB) or as old
as the last snapshot (RDB ``save``): the next acquire hands out a token some process
already used. So the server's persistence is read, not assumed:

- ``INFO persistence`` (``aof_enabled``, ``rdb_last_save_time``, ``loading``) — allowed
  to most users;
- ``CONFIG GET appendonly`` / ``appendfsync`` / ``save`` — often forbidden by an ACL;
  then the value is *unknown* and said so, never guessed.

``assess`` turns the readings into one verdict:

==============  ================================================================
``durable``     AOF on, ``appendfsync always``: every acknowledged write survives a
                restart and a crash of the host.
``durable``     AOF on, ``everysec``/``no``: survives a restart and a crash of the
(with a note)   Redis process; a crash of the *host* can lose the last second
                (``everysec``) or up to ~30 s (``no``) of writes.
``volatile``    AOF off: a restart loses the counter (RDB-only: everything since
                the last snapshot).
``unknown``     neither INFO nor CONFIG could be read.
==============  ================================================================

``guardrails run`` refuses a ``volatile`` Redis unless ``[redis] allow_non_durable =
true``; ``doctor`` reports it. Neither can see a restore of an older snapshot or a
failover to a replica that missed writes: that is what fencing epochs are for
(``docs/architecture.md``, "Fencing across lost history").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, ResponseError


class Durability(enum.Enum):
    DURABLE = "durable"
    VOLATILE = "volatile"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Persistence:
    """What one Redis server said about its persistence (None: could not be read)."""

    aof_enabled: bool | None
    appendfsync: str | None
    save: str | None
    """The RDB ``save`` schedule ("" = no snapshots)."""
    errors: tuple[str, ...] = ()
    """Why a reading is missing (e.g. "CONFIG: NOPERM ...")."""

    @property
    def durability(self) -> Durability:
        if self.aof_enabled is None:
            return Durability.UNKNOWN
        return Durability.DURABLE if self.aof_enabled else Durability.VOLATILE

    def summary(self) -> str:
        """One line for logs, status and doctor."""
        def show(v: object) -> str:
            if v is None:
                return "unknown"
            if isinstance(v, bool):
                return "yes" if v else "no"
            return repr(v) if v == "" else str(v)

        text = (f"appendonly={show(self.aof_enabled)} appendfsync={show(self.appendfsync)} "
                f"save={show(self.save)}")
        return text + (f" ({'; '.join(self.errors)})" if self.errors else "")

    def risk(self) -> str:
        """What this setting can lose, in one sentence."""
        d = self.durability
        if d is Durability.UNKNOWN:
            return ("persistence settings could not be read; whether the fencing counter "
                    "survives a restart is unknown")
        if d is Durability.VOLATILE:
            if self.save:
                return ("AOF is off: a restart rolls the fencing counter back to the last RDB "
                        "snapshot and tokens are handed out again")
            return "AOF is off: a restart empties Redis and the fencing counter starts again at 1"
        if self.appendfsync == "always":
            return "every acknowledged write survives a restart and a host crash"
        if self.appendfsync == "everysec":
            return "survives a restart; a host crash can lose the last second of writes"
        if self.appendfsync == "no":
            return "survives a restart; a host crash can lose up to ~30s of writes"
        return "survives a restart (appendfsync unknown: host-crash loss unknown)"


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def read(redis: aioredis.Redis) -> Persistence:
    """Read one server's persistence settings. Permission errors become "unknown";
    connection errors propagate (the caller decides: retry, or "could not check")."""
    aof: bool | None = None
    fsync: str | None = None
    save: str | None = None
    errors: list[str] = []
    try:
        info = await redis.info("persistence")
        if "aof_enabled" in info:
            aof = _text(info["aof_enabled"]) == "1"
    except NoPermissionError:
        errors.append("INFO: not allowed for this ACL user")
    except ResponseError as e:
        errors.append(f"INFO: {e}")
    try:
        conf = await redis.config_get("appendonly")
        conf.update(await redis.config_get("appendfsync"))
        conf.update(await redis.config_get("save"))
        conf = {_text(k): _text(v) for k, v in conf.items()}
        if "appendonly" in conf:
            aof = conf["appendonly"] == "yes"
        fsync = conf.get("appendfsync")
        save = conf.get("save")
    except NoPermissionError:
        errors.append("CONFIG: GET not allowed for this ACL user")
    except ResponseError as e:
        errors.append(f"CONFIG: {e}")
    return Persistence(aof, fsync, save, tuple(errors))
