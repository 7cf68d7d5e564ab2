"""The prune sweep: Redis memory that stays flat.

Every admitted order leaves an order record, an intent and (per fill) an applied-fill
entry in Redis. Terminal orders whose last change is older than the retention window
(``[prune] retention``), with their intents, Polymarket order-hash mappings and fill
entries, are **archived** to a JSON-lines file an operator can read (and ``reconcile`` /
the chaos checker merge, ``read_archive``) and then **removed** from Redis, by a bounded
background sweep the active instance runs (``Pruner.sweep`` every ``[prune] interval``,
from ``runtime/term.py``).

Invariants upheld:

- *Only terminal and old is removed.* The candidates are found with ``SCAN`` (small
  ``COUNT``) and a read of each record; each batch is then removed by
  ``lua/prune_orders.lua``, which re-checks atomically that every order is still terminal,
  unchanged since it was archived (``updated_ms``), older than the cutoff (Redis time)
  and not in the open set. A non-terminal order is never removed, however old.
- *Idempotency survives the prune.* A pruned intent id (and the order's client order
  id) is written to the tombstones (``keys.tombstones``, 6 bytes each,
  ``lua/lib/tomb.lua``) in the same script that removes it, and ``gate_admit.lua``
  refuses an intent found there (``intent_pruned``): a late retry of a pruned intent is
  refused, never admitted again; ``was_pruned`` tells the runtime a late venue fill of
  a pruned order from foreign activity.
- *The archive holds exactly what was removed.* A batch is first written (and fsynced)
  to ``<archive>.pending``; after the script answers, the lines of the orders it really
  removed are appended (fsynced) to the archive and the pending file is dropped. A crash
  between the two is repaired at the next sweep: a pending line whose key is gone from
  Redis is appended, the others dropped. ``read_archive`` keeps one line per order or
  fill (a repair after a crash at the wrong moment can write one twice, identically).
  A write cut short (a full disk) is cut back, and an append first cuts a torn last
  line (``_whole_lines``): a later append never glues a line onto a fragment.
- *Never blocks the gate.* Each script handles at most ``batch`` (≤ 200) orders or
  fills: one command per item and about ten batch-wide ones (13-25 µs per order
  measured, ``bench/memory.py``); the sweep sleeps ``pause_s`` between batches so the
  gate's commands run in between.

- *One writer per archive.* A sweep holds an exclusive ``flock`` on ``<archive>.lock``
  (``Archive.try_lock``: opened with ``O_NOFOLLOW``, a 0600 regular file of this user)
  from its first staged line to its last commit, so the background sweep and a manual
  ``guardrails prune --apply`` never write one archive at the same time. The lock is
  never waited for: a sweep that finds it held skips its round (``SweepReport.skipped``).
- *The operator sees what it did.* The scripts count what they remove in ``keys.prune_state``
  (``orders``, ``intents``, ``fills``) in the same atomic step; each sweep then records
  when it ran, by whom, its outcome (``ok`` / ``failed`` with the error / ``skipped``) and
  where its archive is in the same hash (``record_sweep``; ``status`` and ``doctor`` read it).

What is not pruned here: the journal and the denials stream are already capped
(``XADD MAXLEN ~``); the tombstones grow by 12 bytes per pruned order and are kept for
ever (docs/architecture.md, "Memory that stays flat").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis.asyncio as aioredis

from guardrails import redacted, scripts, statedir
from guardrails.keys import AccountKeys
from guardrails.model import TERMINAL_STATES

ARCHIVE_VERSION = 1
"""``"v"`` of every archive line."""

MAX_BATCH = 200
"""The most orders (or fills) one prune script handles: its cost is bounded by this."""

_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


class PruneError(Exception):
    """The sweep could not run safely: the archive cannot be written (not ours, not
    0600, a symlink, the disk is full) or a key has an unexpected shape. Nothing was
    removed from Redis that is not in the archive."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _updated_ms(key: str, v: Any) -> int:
    """An order's stored ``updated_ms`` as lua/prune_orders.lua reads it (stored_nat):
    ``PruneError`` naming the key when it is malformed, as the script would refuse it."""
    try:
        return scripts.stored_nat(v, f"{key} updated_ms")
    except ValueError as e:
        raise PruneError(f"{e}: nothing removed, fix the record") from None


def candidate_since(key: str, state: Any, updated: Any, cutoff_ms: int) -> int | None:
    """The one pre-filter of a sweep (and of ``guardrails prune``'s dry run): the order
    at ``key`` whose record holds ``state`` and ``updated_ms`` is a candidate when it is
    terminal and last changed at or before ``cutoff_ms``; its ``updated_ms`` then, else
    None. (lua/prune_orders.lua re-checks all of it, and the open set, atomically.)"""
    if state is None or _s(state) not in _TERMINAL or updated is None:
        return None
    up = _updated_ms(key, updated)
    return up if up <= cutoff_ms else None


def default_archive_path(keys: AccountKeys, state_dir: Path) -> Path:
    """``<state dir>/archive/<venue>+<account>.jsonl`` (the account id is file-name safe)."""
    acct = keys.account
    return state_dir / "archive" / f"{acct.venue}+{acct.account}.jsonl"


def tombstone(value: str) -> tuple[str, bytes]:
    """lib/tomb.lua's (bucket, 6-byte fingerprint) of an intent or client order id."""
    h = hashlib.sha1(value.encode()).hexdigest()
    return h[:3], bytes.fromhex(h[3:15])


async def was_pruned(redis: aioredis.Redis, keys: AccountKeys, client_order_id: str) -> bool:
    """True when the prune sweep removed this order (its id is in the tombstones): a
    venue fill that names it is a late report of a long-terminal order, not foreign
    activity (the ledger refuses a fill on a terminal order all the same)."""
    bucket, fp = tombstone(client_order_id)
    # bytes whatever the client decodes (the fingerprints are binary)
    blob = await redis.execute_command(  # type: ignore[no-untyped-call]
        "HGET", keys.tombstones, "c" + bucket, NEVER_DECODE=True)
    if not isinstance(blob, bytes):
        return False
    return any(blob[i:i + 6] == fp for i in range(0, len(blob) - 5, 6))


# -- the sweep's record in Redis ------------------------------------------------------------

OUTCOMES = ("ok", "failed", "skipped")
"""``last_outcome`` of ``keys.prune_state``: the sweep finished; it stopped on an error
(``last_error``); it did not run because another sweep held the archive's lock."""

TOMBSTONE_BYTES = 6
"""Bytes of one tombstone fingerprint (``lua/lib/tomb.lua``)."""


@dataclass(frozen=True, slots=True)
class PruneTotals:
    """``keys.prune_state`` as read: the scripts' totals and the last sweep's record."""

    orders: int = 0
    intents: int = 0
    fills: int = 0
    last_run_ms: int | None = None
    """Redis time when the last sweep that ran (``ok`` or ``failed``) ended."""
    last_outcome: str | None = None
    last_error: str | None = None
    last_orders: int = 0
    last_fills: int = 0
    last_by: str | None = None
    last_skipped_ms: int | None = None
    """Redis time of the last round skipped because the archive's lock was held."""
    scheduled_ms: int | None = None
    """When the active instance's sweep schedule started (its first sweep is one
    ``interval_ms`` later); None when no instance runs the background sweep."""
    interval_ms: int | None = None
    archive: str | None = None
    """``<host>:<path>`` of the archive the last sweep wrote."""

    @property
    def tombstones(self) -> int:
        """Fingerprints in ``keys.tombstones``: one per pruned order and one per pruned
        intent (``prune_orders.lua`` writes both in the step that counts them; two ids
        whose 48-bit fingerprints collide share one, so this is exact but for that)."""
        return self.orders + self.intents

    @property
    def tombstone_bytes(self) -> int:
        return self.tombstones * TOMBSTONE_BYTES

    def to_json(self) -> dict[str, Any]:
        return {"orders": self.orders, "intents": self.intents, "fills": self.fills,
                "tombstones": self.tombstones, "tombstone_bytes": self.tombstone_bytes,
                "last_run_ms": self.last_run_ms, "last_outcome": self.last_outcome,
                "last_error": self.last_error, "last_orders": self.last_orders,
                "last_fills": self.last_fills, "last_by": self.last_by,
                "last_skipped_ms": self.last_skipped_ms, "scheduled_ms": self.scheduled_ms,
                "interval_ms": self.interval_ms, "archive": self.archive}


def _nat(v: object) -> int | None:
    """A stored integer >= 0 (lib/int.lua's rule, ``scripts.stored_nat``), or None when
    absent or malformed (``str.isdigit`` would take '١٠٠' and raise on '²')."""
    if v is None or _s(v) == "":
        return None
    try:
        return scripts.stored_nat(_s(v), "prune_state")
    except ValueError:
        return None


def parse_totals(raw: dict[Any, Any]) -> PruneTotals:
    """``HGETALL keys.prune_state`` as ``PruneTotals`` (a missing or malformed number
    reads as 0 / None, never as an exception: this is what operators look at)."""
    f = {_s(k): _s(v) for k, v in raw.items()}
    outcome = f.get("last_outcome")
    return PruneTotals(
        orders=_nat(f.get("orders")) or 0, intents=_nat(f.get("intents")) or 0,
        fills=_nat(f.get("fills")) or 0, last_run_ms=_nat(f.get("last_run_ms")),
        last_outcome=outcome if outcome in OUTCOMES else None,
        last_error=f.get("last_error") or None, last_orders=_nat(f.get("last_orders")) or 0,
        last_fills=_nat(f.get("last_fills")) or 0, last_by=f.get("last_by") or None,
        last_skipped_ms=_nat(f.get("last_skipped_ms")),
        scheduled_ms=_nat(f.get("scheduled_ms")), interval_ms=_nat(f.get("interval_ms")),
        archive=f.get("archive") or None)


async def read_totals(redis: aioredis.Redis, keys: AccountKeys) -> PruneTotals:
    """The account's prune totals and last sweep (one ``HGETALL``, read-only)."""
    return parse_totals(await redis.hgetall(keys.prune_state))


async def schedule(redis: aioredis.Redis, keys: AccountKeys, *, interval_ms: int | None,
                   archive: Path | None = None) -> None:
    """The active instance's sweep schedule: started now with ``interval_ms`` (what the
    doctor measures an overdue sweep against), or stopped (``None``: pruning disabled)."""
    if interval_ms is None:
        await redis.hdel(keys.prune_state, "scheduled_ms", "interval_ms")
        return
    sec, usec = await redis.time()
    fields = {"scheduled_ms": str(int(sec) * 1000 + int(usec) // 1000),
              "interval_ms": str(interval_ms)}
    if archive is not None:
        fields["archive"] = f"{socket.gethostname()}:{archive}"
    await redis.hset(keys.prune_state, mapping=cast(Any, fields))


# -- the archive file ----------------------------------------------------------------------


class Archive:
    """The account's archive: JSON lines, mode 0600, in a 0700 directory of this user.

    Lines (``"v": 1``): ``{"kind": "order", "coid", "pruned_at_ms", "order": {record
    fields}, "intent_id", "intent": <intents value or null>, "clob_hash": <or null>}``
    and ``{"kind": "fill", "fill_id", "coid", "pruned_at_ms"}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = path.with_name(path.name + ".pending")

    def _dir(self) -> None:
        # Inside the state directory, every directory down to the archive's is checked
        # (and created 0700): one rule for the state directory (guardrails.statedir).
        try:
            statedir.private_dir(self.path.parent)
        except statedir.StateDirError as e:
            raise PruneError(f"archive directory {self.path.parent} is not a directory of this "
                             f"user's own: {e}") from None

    def _open(self, path: Path, flags: int, what: str = "archive",
              access: int = os.O_WRONLY) -> int:
        """``path`` opened for writing (created 0600; ``access`` ``os.O_RDWR`` to read it
        too), refused unless it is a regular 0600 file of this user with one link: a
        planted symlink is never followed, a planted or hard-linked file never written."""
        try:
            fd = os.open(path, flags | access | os.O_CREAT | os.O_NOFOLLOW | os.O_NOCTTY
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise PruneError(f"{what} {path}: {e.strerror} (a symlink is refused; remove it)"
                             if e.errno == errno.ELOOP else f"{what} {path}: {e.strerror}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise PruneError(f"{what} {path} is not a regular file with one link; remove it")
        if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) != 0o600:
            os.close(fd)
            raise PruneError(f"{what} {path} must be a 0600 file of this user "
                             f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
        return fd

    def _write(self, path: Path, lines: list[dict[str, Any]], *, append: bool) -> None:
        """Write ``lines`` to ``path`` (appended, or replacing it), fsynced. An append
        first cuts a torn last line (``_whole_lines``), and a write cut short (a full
        disk) is cut back to where it started: the next append never lands on a fragment,
        which would make a line in the middle unreadable. (What a cut append held is
        still in the pending file: the next sweep's repair appends it again.)"""
        self._dir()
        fd = self._open(path, os.O_APPEND if append else os.O_TRUNC,
                        access=os.O_RDWR if append else os.O_WRONLY)
        start = 0
        try:
            if append:
                start = _whole_lines(fd)
            data = "".join(json.dumps(x, separators=(",", ":"), sort_keys=True) + "\n"
                           for x in lines).encode()
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise PruneError(f"archive {path}: {e.strerror}") from None
        finally:
            os.close(fd)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def try_lock(self) -> ArchiveLock | None:
        """The archive's exclusive lock, or None when another sweep (this process's or
        another's) holds it. Never blocks. ``PruneError`` when the lock file is unsafe:
        a symlink, not a regular file, hard-linked, not ours, not 0600."""
        self._dir()
        fd = self._open(self.lock_path, os.O_NONBLOCK, "archive lock")  # never truncated
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        return ArchiveLock(self.lock_path, fd)

    def stage(self, lines: list[dict[str, Any]]) -> None:
        """Write ``lines`` to the pending file (replacing it), fsynced, after checking
        that the archive itself can be appended to (so a batch is never removed from
        Redis while its archive is unwritable)."""
        self._dir()
        os.close(self._open(self.path, os.O_APPEND))
        try:
            self._write(self.pending, lines, append=False)
        except PruneError:
            # the script has not run: a pending file cut short names nothing removed,
            # and left behind it would stop every later sweep's repair
            self.pending.unlink(missing_ok=True)
            raise

    def staged(self) -> list[dict[str, Any]]:
        """The pending file's lines; a torn last one (a crash while staging, before the
        script ran) is left out, even when it is the only one."""
        return [obj for _, obj in _lines(self.pending, torn_first=True)]

    def commit(self, lines: list[dict[str, Any]]) -> None:
        """Append ``lines`` (what was removed) to the archive, fsynced; drop the pending file."""
        if lines:
            self._write(self.path, lines, append=True)
        self.pending.unlink(missing_ok=True)


@dataclass(slots=True)
class ArchiveLock:
    """A held archive lock; ``release`` (or the process's death) drops it."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the descriptor drops the flock


def _whole_lines(fd: int) -> int:
    """The length of the file at ``fd`` (open read-write) once a torn last line is cut
    off (every write ends with a newline, so bytes after the last one are a write cut
    short); a last line that is whole JSON but lost only its newline gets it back."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = keep = size
    while end > 0:
        begin = max(0, end - 65536)
        i = os.pread(fd, end - begin, begin).rfind(b"\n")
        if i >= 0:
            keep = begin + i + 1
            break
        end = keep = begin
    try:
        whole = isinstance(json.loads(os.pread(fd, size - keep, keep)), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        whole = False
    if whole:
        os.write(fd, b"\n")
        return size + 1
    os.ftruncate(fd, keep)
    return keep


def _lines(path: Path, *, torn_first: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) of ``path``, one a line; none when it does not exist.
    It is read only if it is a regular file of this user that no one else may write (not
    a symlink: ``statedir.open_read``), else ``PruneError`` — a planted archive is never
    believed. A torn last line (a crash mid-write) is skipped when it follows another
    line, or always with ``torn_first``; any other line that is not a JSON object is a
    ``PruneError``."""
    try:
        fd = statedir.open_read(path)
    except FileNotFoundError:
        return
    except statedir.StateDirError as e:
        raise PruneError(f"archive {path}: {e}") from None
    with os.fdopen(fd, encoding="utf-8") as f:
        n = 0
        while True:
            try:
                line = f.readline()
            except UnicodeDecodeError:
                raise PruneError(f"archive {path}: line {n + 1} is not UTF-8") from None
            if not line:
                return
            n += 1
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                if (n > 1 or torn_first) and not f.readline():
                    return  # a torn last line (a crash mid-write); never acted on
                raise PruneError(f"archive {path}: line {n} is not JSON") from None
            if not isinstance(obj, dict):
                raise PruneError(f"archive {path}: line {n} is not a JSON object")
            yield n, obj


@dataclass(frozen=True, slots=True)
class ArchiveView:
    """What was pruned: order lines by client order id, fill ids -> client order id."""

    orders: dict[str, dict[str, Any]]
    fills: dict[str, str]


def read_archive(path: Path | str) -> ArchiveView:
    """Read an archive (missing = empty). One entry per order / fill id. ``PruneError``
    naming the file (and line) when it is not this user's own (``_lines``) or a line is
    not an archive line: an order line's ``coid`` a string and ``order`` an object of
    strings, a fill line's ``fill_id`` and ``coid`` strings."""
    orders: dict[str, dict[str, Any]] = {}
    fills: dict[str, str] = {}
    p = Path(path)
    for n, obj in _lines(p):
        kind, coid = obj.get("kind"), obj.get("coid")
        if kind == "order":
            rec = obj.get("order")
            if not (isinstance(coid, str) and isinstance(rec, dict)
                    and all(isinstance(v, str) for v in rec.values())):
                raise PruneError(f"archive {p}: line {n} is not an order line (coid, order)")
            orders[coid] = obj
        elif kind == "fill":
            fid = obj.get("fill_id")
            if not (isinstance(fid, str) and isinstance(coid, str)):
                raise PruneError(f"archive {p}: line {n} is not a fill line (fill_id, coid)")
            fills[fid] = coid
    return ArchiveView(orders, fills)


# -- the sweep -----------------------------------------------------------------------------


@dataclass(slots=True)
class SweepReport:
    cutoff_ms: int = 0
    scanned_orders: int = 0
    pruned_orders: int = 0
    pruned_intents: int = 0
    pruned_fills: int = 0
    kept: int = 0
    """Candidates the script kept (they changed, or were re-opened, meanwhile)."""
    batches: int = 0
    max_batch_ms: float = 0.0
    """The slowest prune script round trip (client-side; Redis-side cost is in the bench)."""
    recovered: int = 0
    """Pending lines of an interrupted sweep appended to the archive."""
    skipped: bool = False
    """Nothing ran: another sweep held the archive's lock (``Archive.try_lock``)."""
    pruned: list[str] = field(default_factory=list)


Progress = Callable[[SweepReport], None]
"""Called after each batch with the running report (``guardrails prune``'s stderr lines)."""


class Pruner:
    """Archives and removes one account's terminal orders older than ``retention_ms``.

    ``batch`` orders (or fills) per script, ``scan_count`` per ``SCAN``/``HSCAN`` step,
    ``pause_s`` between batches (the gate's commands run in between)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: AccountKeys,
        archive: Archive,
        *,
        retention_ms: int,
        batch: int = 25,
        scan_count: int = 200,
        pause_s: float = 0.002,
        by: str = "",
    ) -> None:
        if not 1 <= batch <= MAX_BATCH:
            raise ValueError(f"batch must be 1..{MAX_BATCH}, got {batch}")
        if retention_ms <= 0:
            raise ValueError("retention_ms must be > 0")
        self.redis = redis
        self.keys = keys
        self.archive = archive
        self.retention_ms = retention_ms
        self.batch = batch
        self.scan_count = scan_count
        self.pause_s = pause_s
        self.by = by or f"pid {os.getpid()}@{socket.gethostname()}"
        """Who sweeps, recorded as ``last_by`` (an instance id, ``user@host (prune)``)."""
        self._progress: Progress | None = None
        self._orders = scripts.register(redis, "prune_orders")
        self._fills = scripts.register(redis, "prune_fills")

    async def _server_ms(self) -> int:
        sec, usec = await self.redis.time()
        return int(sec) * 1000 + int(usec) // 1000

    async def recover(self) -> int:
        """Finish an interrupted batch: pending lines whose key is gone are archived."""
        staged = self.archive.staged()
        if not staged:
            self.archive.commit([])
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for line in staged:
                if line.get("kind") == "order":
                    pipe.exists(self.keys.order(str(line["coid"])))
                else:
                    pipe.hexists(self.keys.fills, str(line["fill_id"]))
            present = await pipe.execute()
        gone = [line for line, here in zip(staged, present, strict=True) if not here]
        self.archive.commit(gone)
        return len(gone)

    async def sweep(self, *, now_ms: int | None = None,
                    progress: Progress | None = None) -> SweepReport:
        """One pass over the account's orders, then its applied fills, under the
        archive's lock; skipped (``rep.skipped``) when another sweep holds it. The outcome
        is recorded in ``keys.prune_state`` (``record_sweep``), a failure too before it is
        raised. ``now_ms`` (default: Redis time) is for tests that age records without
        waiting; ``progress`` is called after each batch."""
        lock = self.archive.try_lock()
        if lock is None:
            rep = SweepReport(skipped=True)
            await self.redis.hset(self.keys.prune_state, "last_skipped_ms",
                                  str(await self._server_ms()))
            return rep
        rep = SweepReport()
        self._progress = progress
        try:
            await self._sweep(rep, now_ms)
        except BaseException as e:
            if isinstance(e, Exception):
                try:
                    await self.record_sweep(rep, error=e)
                except Exception:  # Redis may be what failed: raise the cause, not this
                    pass
            raise
        finally:
            self._progress = None
            lock.release()
        await self.record_sweep(rep)
        return rep

    async def record_sweep(self, rep: SweepReport, *, error: BaseException | None = None) -> None:
        """Record one sweep that ran in ``keys.prune_state``: when it ended (Redis time),
        by whom, ``ok`` or ``failed`` (the error, masked, one line), what it removed and
        its archive. The totals themselves are the scripts' (counted as they remove)."""
        text = "" if error is None else redacted.mask_text(
            f"{type(error).__name__}: {error}").replace("\n", " ")[:500]
        await self.redis.hset(self.keys.prune_state, mapping={
            "last_run_ms": str(await self._server_ms()),
            "last_outcome": "ok" if error is None else "failed", "last_error": text,
            "last_orders": str(rep.pruned_orders), "last_fills": str(rep.pruned_fills),
            "last_by": self.by, "archive": f"{socket.gethostname()}:{self.archive.path}",
        })

    async def _sweep(self, rep: SweepReport, now_ms: int | None) -> None:
        rep.recovered = await self.recover()
        now = now_ms if now_ms is not None else await self._server_ms()
        rep.cutoff_ms = now - self.retention_ms
        prefix = self.keys.order("")
        pending: list[tuple[str, dict[str, str]]] = []
        names: list[str] = []
        # scan_iter, not a hand-rolled SCAN loop: on Redis Cluster it walks every primary
        async for n in self.redis.scan_iter(match=prefix + "*", count=self.scan_count):
            names.append(_s(n)[len(prefix):])
            if len(names) >= self.scan_count:
                await self._candidates(names, now, pending, rep)
                names = []
        await self._candidates(names, now, pending, rep)
        if pending:
            await self._prune_orders(pending, now, rep)
        await self._prune_fill_entries(now, rep)

    async def _candidates(self, coids: list[str], now: int,
                          pending: list[tuple[str, dict[str, str]]], rep: SweepReport) -> None:
        """Read one scanned page of order records; queue the terminal ones older than the
        cutoff (with their whole record, for the archive) and prune every full batch."""
        if not coids:
            return
        rep.scanned_orders += len(coids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in coids:
                pipe.hmget(self.keys.order(c), ["state", "updated_ms"])
            heads = await pipe.execute()
        queued = {c for c, _ in pending}  # SCAN may return a key twice
        old = [c for c, (st, up) in zip(coids, heads, strict=True)
               if c not in queued
               and candidate_since(self.keys.order(c), st, up, rep.cutoff_ms) is not None]
        if old:
            async with self.redis.pipeline(transaction=False) as pipe:
                for c in old:
                    pipe.hgetall(self.keys.order(c))
                recs = await pipe.execute()
            pending.extend((c, {_s(k): _s(v) for k, v in r.items()})
                           for c, r in zip(old, recs, strict=True) if r)
        while len(pending) >= self.batch:
            await self._prune_orders(pending[: self.batch], now, rep)
            del pending[: self.batch]

    async def _prune_orders(
        self, batch: list[tuple[str, dict[str, str]]], now: int, rep: SweepReport
    ) -> None:
        k = self.keys
        intents_raw: list[Any] = []
        hashes_raw: list[Any] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for coid, rec in batch:
                pipe.hget(k.intents, rec.get("intent_id", "") or "\x00")
                pipe.hget(k.clob_orders, coid)
            got = await pipe.execute()
        intents_raw, hashes_raw = got[0::2], got[1::2]
        lines: dict[str, dict[str, Any]] = {}
        for (coid, rec), iv, hv in zip(batch, intents_raw, hashes_raw, strict=True):
            intent = _s(iv) if iv is not None else None
            if intent is not None and not intent.startswith(coid + "|"):
                intent = None
            lines[coid] = {
                "v": ARCHIVE_VERSION, "kind": "order", "account": str(k.account), "coid": coid,
                "pruned_at_ms": now, "order": rec, "intent_id": rec.get("intent_id") or None,
                "intent": intent, "clob_hash": _s(hv) if hv is not None else None,
            }
        args: list[str] = [str(rep.cutoff_ms)]
        for coid, rec in batch:
            args += [coid, rec.get("updated_ms", "")]
        keys = [k.open_orders, k.intents, k.tombstones, k.prune_state, k.clob_orders,
                k.clob_hashes, *[k.order(c) for c, _ in batch]]
        raw, removed = await self._batch("prune_orders", lines, keys, args, 3, rep)
        rep.pruned_orders += int(raw[1])
        rep.pruned_intents += int(raw[2])
        rep.kept += len(batch) - len(removed)
        rep.pruned.extend(removed)

    async def _batch(
        self, name: str, lines: dict[str, dict[str, Any]], keys: list[str], args: list[str],
        first: int, rep: SweepReport,
    ) -> tuple[list[Any], list[str]]:
        """Stage ``lines``, run one prune script, archive the lines of what it removed
        (the ids from reply element ``first`` on); the script's reply and those ids."""
        self.archive.stage(list(lines.values()))
        script = self._orders if name == "prune_orders" else self._fills
        t0 = time.perf_counter()
        raw = await script(keys=keys, args=args)
        rep.max_batch_ms = max(rep.max_batch_ms, (time.perf_counter() - t0) * 1000)
        rep.batches += 1
        code = int(raw[0])
        if code == 4:
            self.archive.commit([])
            raise PruneError(f"{name} refused, nothing removed: {_s(raw[1])}")
        if code != 0:
            raise PruneError(f"{name} returned unknown code {code}")
        removed = [_s(x) for x in raw[first:]]
        self.archive.commit([lines[x] for x in removed])
        if self._progress is not None:
            self._progress(rep)
        await asyncio.sleep(self.pause_s)
        return raw, removed

    async def _prune_fill_entries(self, now: int, rep: SweepReport) -> None:
        """Fill entries whose order record is gone (pruned): archived, then removed."""
        k = self.keys
        pending: list[tuple[str, str]] = []
        page: list[tuple[str, str]] = []

        async def check(items: list[tuple[str, str]]) -> None:
            if not items:
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for _, c in items:
                    pipe.exists(k.order(c))
                present = await pipe.execute()
            queued = {f for f, _ in pending}  # HSCAN may return a field twice
            pending.extend(i for i, here in zip(items, present, strict=True)
                           if not here and i[0] not in queued)
            while len(pending) >= self.batch:
                await self._prune_fills(pending[: self.batch], now, rep)
                del pending[: self.batch]

        async for f, c in self.redis.hscan_iter(k.fills, count=self.scan_count):
            page.append((_s(f), _s(c)))
            if len(page) >= self.scan_count:
                await check(page)
                page = []
        await check(page)
        if pending:
            await self._prune_fills(pending, now, rep)

    async def _prune_fills(self, batch: list[tuple[str, str]], now: int, rep: SweepReport) -> None:
        k = self.keys
        lines = {f: {"v": ARCHIVE_VERSION, "kind": "fill", "account": str(k.account),
                     "fill_id": f, "coid": c, "pruned_at_ms": now} for f, c in batch}
        keys = [k.fills, k.prune_state, *[k.order(c) for _, c in batch]]
        raw, _ = await self._batch("prune_fills", lines, keys,
                                   [x for pair in batch for x in pair], 2, rep)
        rep.pruned_fills += int(raw[1])
