"""The paper venue: a simulated exchange that lives in Redis, outside every bot process.

Like a real exchange, its state — the book of resting orders, orders by client order id,
fills, balances per account, the marks — is shared by every instance of every account
that trades on it, under its own namespace ``venue:{<name>}:…`` (``keys.PaperVenueKeys``),
clearly apart from the harness's ``gr:`` keys. A failover therefore meets the same book
and fills a real venue would show, and reconciliation works as it would in production.

Every state change is one atomic Lua script (``lua/paper_*.lua``):

* **submit** dedupes the client order id (a re-send returns the original outcome, never a
  second order), then enforces the order's expiry: an order arriving after its
  ``submit_deadline_ms`` (the lease deadline the gate issued) is rejected — the venue-side
  fence. An accepted order that crosses the mark fills at once, *at the mark* (taker);
  otherwise it rests. Fills are whole: no partial fills.
* **advance** moves the exchange clock to a newer price step; a resting order the new
  mark crosses fills *at its own limit price* (maker). Marks follow a seeded random walk
  (``market.walk_next``) computed in Python in exact Decimal and applied only if the
  step is newer than the stored one, so instances racing to drive the clock produce one
  price path. The step index comes from Redis server time: step ``n`` starts at
  ``origin_ms + n * step``. Any call on the venue first advances the clock.
* **cancel** cancels a resting order; a final order stays final. A cancel of a client
  order id the exchange has not seen writes a *tombstone* (state ``canceled``, reason
  ``canceled_before_arrival``) in the same step, and answers ``Accepted``: the order,
  should it still arrive (sent late by a paused instance before its deadline), is
  rejected. A cancel is never overtaken by its order, so the ledger may release the
  reservation once the cancel is confirmed.

Every order received (accepted, rejected with its reason, or a duplicate), every cancel
and every fill is appended to the stream ``keys.PaperVenueKeys.record`` with its token
and arrival time; ``read_record`` reads it for tests and the chaos checker. Resting
orders do not expire (the deadline fences arrival only).

Not guaranteed: queue priority, partial fills, fees (always 0), or that an order the
mark crossed *between* two steps fills — only the marks at step boundaries count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, cast

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from guardrails import scripts
from guardrails.config import PaperVenueConfig, RiskConfig
from guardrails.infra import connect
from guardrails.keys import AccountId, PaperVenueKeys
from guardrails.model import Fill, Order, Side
from guardrails.sim import market
from guardrails.venues.base import (
    Accepted,
    FillBatch,
    Rejected,
    SubmitResult,
    Unknown,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
)

_FILLS_PAGE = 1000
_THREAD_WALK_STEPS = 2000
"""Catching up more steps than this runs in a worker thread, off the event loop."""

_STATES = {
    "open": VenueOrderState.OPEN,
    "filled": VenueOrderState.FILLED,
    "canceled": VenueOrderState.CANCELED,
    "rejected": VenueOrderState.REJECTED,
}


def _s(value: Any) -> str:
    """A reply value as ``str`` whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class _Scripts:
    """The paper scripts, registered on one client (EVALSHA after the first call)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.submit: AsyncScript = scripts.register(redis, "paper_submit")
        self.advance: AsyncScript = scripts.register(redis, "paper_advance")
        self.cancel: AsyncScript = scripts.register(redis, "paper_cancel")


def submit_outcome(code: int, venue_order_id: str, state: str, reason: str) -> SubmitResult:
    """Map ``paper_submit.lua``'s reply to a result (the one place its codes are read)."""
    if code == 1:
        return Accepted(venue_order_id)
    if code == 2:
        # A duplicate returns the original outcome: a rejected order stays rejected.
        if state == "rejected":
            return Rejected(reason or "rejected")
        return Accepted(venue_order_id)
    if code == 3:
        return Rejected(reason)
    raise VenueError(f"paper_submit returned unknown code {code!r}")


def cancel_outcome(code: int, state: str, venue_order_id: str, coid: str) -> SubmitResult:
    """Map ``paper_cancel.lua``'s reply to a result (the one place its codes are read)."""
    if code in (1, 2):
        return Accepted(venue_order_id)
    if code == 3:
        # Never seen: the tombstone guarantees a later arrival of ``coid`` is refused.
        return Accepted(venue_order_id)
    raise VenueError(f"paper_cancel returned unknown code {code!r}")


def order_status(coid: str, rec: Mapping[str, str]) -> VenueOrderStatus:
    """A venue order record (the JSON in ``orders``) as a ``VenueOrderStatus``."""
    state = _STATES.get(rec.get("state", ""))
    if state is None:
        raise VenueError(f"order {coid}: unknown venue state {rec.get('state')!r}")
    fills: tuple[Fill, ...] = ()
    if rec.get("fill_id"):
        fills = (
            Fill(
                fill_id=rec["fill_id"],
                client_order_id=coid,
                symbol=rec["symbol"],
                side=Side(rec["side"]),
                qty=Decimal(rec["qty"]),
                price=Decimal(rec["fill_price"]),
                ts_ms=int(rec["fill_ts"]),
            ),
        )
    return VenueOrderStatus(
        client_order_id=coid,
        state=state,
        filled_qty=sum((f.qty for f in fills), Decimal(0)),
        fills=fills,
        detail=rec.get("reason", ""),
    )


def fill_from_entry(fields: Mapping[str, str]) -> Fill:
    """One entry of the fills stream (or a ``type=fill`` record entry) as a ``Fill``."""
    return Fill(
        fill_id=fields["fill_id"],
        client_order_id=fields["coid"],
        symbol=fields["symbol"],
        side=Side(fields["side"]),
        qty=Decimal(fields["qty"]),
        price=Decimal(fields["price"]),
        ts_ms=int(fields["ts_ms"]),
    )


async def read_record(
    redis: aioredis.Redis, venue_name: str, *, start: str = "-", count: int | None = None
) -> list[dict[str, str]]:
    """The paper exchange's append-only record, oldest first, each entry with its stream
    ``id``. Field sets by ``type`` (documented in docs/venues.md):

    * ``order``: coid, account, symbol, side, qty, price, token, deadline_ms, arrival_ms,
      result (accepted | rejected | duplicate), reason (``canceled_before_arrival`` for an
      order whose cancel came first), venue_order_id
    * ``fill``: fill_id, coid, account, symbol, side, qty, price, ts_ms, venue_order_id,
      liquidity (taker | maker)
    * ``cancel``: coid, account, arrival_ms, result (canceled | final), state, and
      ``reason=canceled_before_arrival`` when the id was not seen yet (a tombstone)
    * ``error``: coid, account, reason, ts_ms
    """
    rows = await redis.xrange(PaperVenueKeys(venue_name).record, min=start, max="+", count=count)
    out: list[dict[str, str]] = []
    for entry_id, fields in rows or []:
        row = {_s(k): _s(v) for k, v in (fields or {}).items()}
        row["id"] = _s(entry_id)
        out.append(row)
    return out


class PaperVenue:
    """One account at the paper exchange named ``venue_cfg.name``.

    ``risk`` supplies the instruments (tick, lot, money unit); ``make_venue`` passes the
    runtime's ``RiskConfig``. ``wall_ms`` is the local clock used only to skip needless
    clock reads between steps (the step itself is computed from Redis server time).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        venue_cfg: PaperVenueConfig,
        account: AccountId,
        *,
        risk: RiskConfig | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        self.name = venue_cfg.name
        self._redis = redis
        self._cfg = venue_cfg
        self._account = account.account
        self._instruments = market.instruments_for(venue_cfg, risk)
        self._keys = PaperVenueKeys(venue_cfg.name)
        self._wall_ms = wall_ms or (lambda: time.time_ns() // 1_000_000)
        self._scripts: _Scripts | None = None
        self._advance_lock: asyncio.Lock | None = None
        # Local knowledge of the exchange clock, to skip reads within a step.
        self._origin_ms: int | None = None
        self._offset_ms = 0
        self._known_step = -1

    def __repr__(self) -> str:
        return f"PaperVenue(name={self.name!r}, account={self._account!r})"

    @property
    def keys(self) -> PaperVenueKeys:
        return self._keys

    async def start(self) -> None:
        if self._scripts is None:
            self._scripts = _Scripts(self._redis)
        if self._advance_lock is None:
            self._advance_lock = asyncio.Lock()

    async def close(self) -> None:
        """Nothing to close: the Redis client belongs to the caller."""

    def _all_keys(self) -> list[str]:
        k = self._keys
        return [k.clock, k.orders, k.open, k.fills, k.record, k.balances, k.seq]

    async def _ready(self) -> tuple[_Scripts, asyncio.Lock]:
        await self.start()
        assert self._scripts is not None and self._advance_lock is not None
        return self._scripts, self._advance_lock

    # -- the clock --------------------------------------------------------------------

    async def _with_time(self, command: str, *args: str) -> tuple[Any, int]:
        """``command`` and the server's TIME (ms) in one round trip where the client can
        pipeline them; a Redis Cluster client cannot pipeline a keyless TIME, so there
        it is a second command (to the key's node)."""
        if connect.is_cluster(self._redis):
            cluster = cast(Any, self._redis)
            reply = await cluster.execute_command(command, *args)
            sec, usec = await cluster.execute_command(
                "TIME", target_nodes=cluster.get_node_from_key(args[0]))
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.execute_command(command, *args)
                pipe.time()
                reply, (sec, usec) = await pipe.execute()
        return reply, int(sec) * 1000 + int(usec) // 1000

    async def _read_clock(self) -> tuple[dict[str, str], int]:
        clock_raw, now_ms = await self._with_time("HGETALL", self._keys.clock)
        if isinstance(clock_raw, list):  # HGETALL through execute_command: a flat list
            clock_raw = dict(zip(clock_raw[::2], clock_raw[1::2], strict=True))
        clock = {_s(k): _s(v) for k, v in clock_raw.items()}
        return clock, now_ms

    def _symbol_args(self, marks: Mapping[str, int]) -> list[str]:
        args = [str(len(marks))]
        for sym, ticks in sorted(marks.items()):
            args += [sym, str(ticks), str(self._instruments[sym].price(ticks))]
        return args

    def _marks_forward(self, clock: Mapping[str, str], to_step: int) -> dict[str, int]:
        base = int(clock["step"])
        out: dict[str, int] = {}
        for sym, inst in self._instruments.items():
            stored = clock.get(f"px:{sym}")
            # A symbol added after the clock started begins at its start price now.
            start = int(stored) if stored else market.start_ticks(self._cfg, inst)
            out[sym] = market.walk(
                start, base, to_step, seed=self._cfg.seed, symbol=sym,
                volatility=self._cfg.volatility,
            )
        return out

    async def _apply_step(self, scripts: _Scripts, step: int, origin_ms: int,
                          marks: Mapping[str, int]) -> None:
        reply = await scripts.advance(
            keys=self._all_keys(), args=[str(step), str(origin_ms), *self._symbol_args(marks)]
        )
        code = int(reply[0])
        if code not in (0, 1):
            raise VenueError(f"paper_advance returned unknown code {code!r}")
        self._known_step = max(self._known_step, int(reply[1]))

    async def advance(self) -> None:
        """Bring the exchange clock up to the current step (idempotent; every call does)."""
        scripts, lock = await self._ready()
        if self._origin_ms is not None:
            est = (self._wall_ms() + self._offset_ms - self._origin_ms) // self._cfg.step
            if est <= self._known_step:
                return
        async with lock:
            clock, now_ms = await self._read_clock()
            self._offset_ms = now_ms - self._wall_ms()
            if "origin_ms" not in clock:
                start = {s: market.start_ticks(self._cfg, i) for s, i in self._instruments.items()}
                await self._apply_step(scripts, 0, now_ms, start)
                clock, now_ms = await self._read_clock()
            self._origin_ms = int(clock["origin_ms"])
            stored = int(clock["step"])
            self._known_step = max(self._known_step, stored)
            step = (now_ms - self._origin_ms) // self._cfg.step
            if step > stored:
                await self._move_to(scripts, clock, step)

    async def advance_to(self, step: int) -> None:
        """Move the clock to ``step`` now, ahead of wall time (tests drive fills with it)."""
        scripts, lock = await self._ready()
        await self.advance()
        async with lock:
            clock, _ = await self._read_clock()
            if step > int(clock["step"]):
                await self._move_to(scripts, clock, step)

    async def _move_to(self, scripts: _Scripts, clock: Mapping[str, str], step: int) -> None:
        if step - int(clock["step"]) > _THREAD_WALK_STEPS:
            marks = await asyncio.to_thread(self._marks_forward, clock, step)
        else:
            marks = self._marks_forward(clock, step)
        await self._apply_step(scripts, step, int(clock["origin_ms"]), marks)

    async def current_step(self) -> int:
        """The exchange clock's stored step (after advancing it)."""
        await self.advance()
        clock, _ = await self._read_clock()
        return int(clock["step"])

    # -- the Venue protocol -------------------------------------------------------------

    async def submit(self, order: Order) -> SubmitResult:
        try:
            scripts, _ = await self._ready()
            await self.advance()
        except RedisError as e:
            # Nothing was sent: the order certainly did not reach the exchange.
            return Rejected(f"venue_unavailable: {type(e).__name__}")
        invalid = market.validate_order(order, self._instruments)
        inst = self._instruments.get(order.symbol)
        qty_units = inst.lots(order.qty) if inst and not invalid else 0
        px_ticks = inst.ticks(order.price) if inst and not invalid else 0
        args = [
            self._account,
            order.client_order_id,
            order.symbol,
            order.side.value,
            str(order.qty),
            str(qty_units or 0),
            str(order.price),
            str(px_ticks or 0),
            str(inst.k if inst else 0),
            str(order.token),
            str(order.submit_deadline_ms),
            invalid,
        ]
        try:
            reply = await scripts.submit(keys=self._all_keys(), args=args)
        except RedisError as e:
            # The script may or may not have run: the outcome is unknown. Reconcile.
            return Unknown(f"venue_unavailable: {type(e).__name__}")
        return submit_outcome(int(reply[0]), _s(reply[1]), _s(reply[2]), _s(reply[3]))

    async def cancel(self, client_order_id: str) -> SubmitResult:
        try:
            scripts, _ = await self._ready()
            await self.advance()
        except RedisError as e:
            return Unknown(f"venue_unavailable: {type(e).__name__}")
        k = self._keys
        try:
            reply = await scripts.cancel(
                keys=[k.orders, k.open, k.record], args=[self._account, client_order_id]
            )
        except RedisError as e:
            return Unknown(f"venue_unavailable: {type(e).__name__}")
        return cancel_outcome(int(reply[0]), _s(reply[1]), _s(reply[2]), client_order_id)

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        """The exchange's record of ``client_order_id``. When it has none, the order can
        still arrive unless ``deadline_ms`` (the order's submit deadline, which only the
        caller knows for an order the exchange never saw) has passed by exchange time;
        without ``deadline_ms`` the answer is the conservative ``can_still_arrive=True``."""
        try:
            await self.advance()
            raw, now_ms = await self._with_time(
                "HGET", self._keys.orders, f"{self._account}|{client_order_id}")
        except RedisError as e:
            raise VenueError(f"paper venue {self.name}: lookup failed: {type(e).__name__}") from e
        if raw is None:
            return VenueOrderStatus(
                client_order_id=client_order_id,
                state=VenueOrderState.NOT_FOUND,
                can_still_arrive=deadline_ms is None or now_ms <= deadline_ms,
            )
        rec: dict[str, str] = json.loads(_s(raw))
        return order_status(client_order_id, rec)

    async def fills_since(self, cursor: str | None) -> FillBatch:
        try:
            await self.advance()
            fills: list[Fill] = []
            pos = cursor or "0-0"
            while True:
                rows = await self._redis.xrange(
                    self._keys.fills, min=f"({pos}", max="+", count=_FILLS_PAGE
                ) or []
                for entry_id, raw in rows:
                    pos = _s(entry_id)
                    fields = {_s(k): _s(v) for k, v in (raw or {}).items()}
                    if fields.get("account") == self._account:
                        fills.append(fill_from_entry(fields))
                if len(rows) < _FILLS_PAGE:
                    return FillBatch(fills=tuple(fills), cursor=pos)
        except RedisError as e:
            raise VenueError(f"paper venue {self.name}: fills failed: {type(e).__name__}") from e

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        try:
            await self.advance()
            wanted = list(symbols)
            if not wanted:
                return {}
            values = await self._redis.hmget(self._keys.clock, [f"pxd:{s}" for s in wanted])
        except RedisError as e:
            raise VenueError(f"paper venue {self.name}: marks failed: {type(e).__name__}") from e
        return {s: Decimal(_s(v)) for s, v in zip(wanted, values, strict=True) if v is not None}

    async def balances(self) -> dict[str, Decimal]:
        """Position per symbol and ``cash`` (money spent and received, in the quote unit)."""
        try:
            await self.advance()
            out: dict[str, Decimal] = {}
            prefix = f"{self._account}|"
            async for field, value in self._redis.hscan_iter(
                self._keys.balances, match=f"{prefix}*"
            ):
                name = _s(field)[len(prefix):]
                units = int(_s(value))
                if name == "cash":
                    some = next(iter(self._instruments.values()), None)
                    if some is not None:
                        out["cash"] = some.money(units)
                elif name in self._instruments:
                    out[name] = self._instruments[name].qty(units)
            return out
        except RedisError as e:
            raise VenueError(f"paper venue {self.name}: balances failed: {type(e).__name__}") from e
