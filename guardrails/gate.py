"""The fenced order gate: one atomic Redis step per order decision.

Invariants upheld: *one writer per account* (the script admits only while the lease
holds exactly this instance's token and is live — checked inside Redis, so a paused
process whose lease expired is refused even if no one took over), *risk is shared*
(positions, reservations, the daily budget, the throttle and the limits are the
account's combined state, read and reserved in the same step), *idempotency* (an intent
id is admitted at most once; a retry gets the original decision and reserves nothing)
and *fail closed* (a Redis error raises ``GateUnavailable``; a key of the wrong shape
is ``Denied(BAD_STATE)``).

Each ``admit`` is decided in ONE ``EVALSHA`` of ``lua/gate_admit.lua`` — alone, or, on the
gate wire, in one batch with the other decisions asked for in the same event-loop turn
(``BATCH_MAX``; each decided exactly as alone, in order: docs/gate.md, "Batches").
Python only refuses an intent of the wrong shape before asking Redis
(``model.intent_args``: ``intent_problem``'s checks, the same ``Denied(bad_order)``
whoever calls — the script re-checks the strings it is sent), formats the arguments and
maps the reply. The check order and every ``DenyReason`` are documented
in ``docs/gate.md``; the key layout in ``docs/keys.md``.

A lost reply is not a denial: when the EVALSHA may have reached Redis but its reply
was lost (a read timeout, a connection dropped after sending), ``admit`` re-asks Redis
for the intent's decision (``HGET intents``, bounded by ``recover_ms``) and returns the
original ``Admitted`` (``duplicate=True``) if there is one. ``GateUnavailable`` means
nothing was admitted as far as Redis could say; its subclass ``GateOutcomeUnknown``
means Redis could not be asked again in time, so the intent *may* be admitted.

What it does not guarantee: that the order reaches the venue before
``Admitted.submit_deadline_ms`` — the caller must not send it after that instant, and
venues that support an expiry carry the deadline so a late order dies there.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from guardrails import scripts
from guardrails.config import RiskConfig
from guardrails.gatewire import GateWire, WireError
from guardrails.gatewire import bulk as wire_bulk
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.model import (
    ID_RE,
    Admitted,
    Decision,
    Denied,
    DenyReason,
    Intent,
    Order,
    Side,
    client_order_id_for,
    intent_args,
)
from guardrails.tradingday import ClockMs, TradingDay


class GateUnavailable(Exception):
    """Redis could not be asked, or answered with an error: nothing was admitted (as far
    as Redis could tell; see ``GateOutcomeUnknown``)."""


class GateOutcomeUnknown(GateUnavailable):
    """The request may have reached Redis (its reply was lost) and Redis could not be
    asked again within ``recover_ms``: the intent MAY be admitted and reserved. Asking
    again with the same intent id returns the original decision; an admitted order
    that is never sent is expired by reconciliation after its submit deadline."""


RECOVER_MS = 5_000
"""Default bound (ms) on re-asking Redis for an intent's decision after a lost reply."""


ADMITTED = 0
"""Reply code of gate_admit.lua for an admission (new or duplicate)."""
FAILED = -1
"""Reply code of gate_admit.lua for a decision that failed in the script itself."""

DENY_CODES: dict[int, DenyReason] = {
    1: DenyReason.SCHEMA_MISMATCH,
    2: DenyReason.HALTED,
    3: DenyReason.REDUCE_ONLY,
    4: DenyReason.STALE_TOKEN,
    5: DenyReason.LEASE_EXPIRED,
    6: DenyReason.BAD_ORDER,
    7: DenyReason.UNKNOWN_SYMBOL,
    8: DenyReason.OFF_TICK,
    9: DenyReason.OFF_LOT,
    10: DenyReason.MAX_NOTIONAL,
    11: DenyReason.PRICE_BAND,
    12: DenyReason.THROTTLED,
    13: DenyReason.POSITION_LIMIT,
    14: DenyReason.GROSS_EXPOSURE,
    15: DenyReason.DAILY_LOSS,
    16: DenyReason.BAD_STATE,
    17: DenyReason.INTENT_CONFLICT,
    18: DenyReason.INTENT_PRUNED,
    19: DenyReason.LATCH_LOST,
}
"""gate_admit.lua's denial codes -> reasons: the one place the script's codes are mapped."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


_SIDES = {b"buy": Side.BUY, b"sell": Side.SELL, "buy": Side.BUY, "sell": Side.SELL}
"""A recorded side as the reply carries it (bytes on the gate wire, str through redis-py)."""


def decode_reply(intent_id: str, client_order_id: str, raw: Any) -> Decision:
    """Map gate_admit.lua's reply to a decision; an unknown shape is a programming error.

    An admission carries the order as the script recorded it (``Admitted.order``)."""
    if not isinstance(raw, list) or not raw:
        raise GateUnavailable(f"gate script returned an unexpected reply: {raw!r}")
    code = int(raw[0])
    if code == FAILED:
        raise GateUnavailable(f"gate script failed: {_text(raw[1]) if len(raw) > 1 else raw!r}")
    if code == ADMITTED:
        if len(raw) != 9:
            raise GateUnavailable(f"gate script returned an unexpected admission: {raw!r}")
        _, duplicate_raw, token_raw, deadline_raw, nonce_raw, symbol, side_raw, qty, price = raw
        try:
            token, deadline, nonce = int(token_raw), int(deadline_raw), int(nonce_raw)
            duplicate = bool(int(duplicate_raw))
        except (TypeError, ValueError):
            raise GateUnavailable(f"gate script returned an unexpected admission: {raw!r}") from None
        order = None
        if symbol:  # '' when the order record is gone
            side = _SIDES.get(side_raw)
            try:
                if side is None:
                    raise ValueError(f"side {side_raw!r}")
                order = Order(client_order_id, _text(symbol), side, Decimal(_text(qty)),
                              Decimal(_text(price)), token, deadline, None if nonce < 0 else nonce)
            except (ValueError, ArithmeticError) as e:  # InvalidOperation is both
                # A repeat reads the order record back; one damaged since (a field gone
                # or rewritten) is not an order to send: the caller reads the record
                # (and meets the damage there). A fresh admission's fields are the
                # script's own arguments: one that does not decode is the script's fault.
                if not duplicate:
                    raise GateUnavailable(
                        f"gate script returned an admission whose order does not decode ({e}): {raw!r}"
                    ) from None
        return Admitted(intent_id, client_order_id, token, deadline, duplicate,
                        None if nonce < 0 else nonce, order)
    reason = DENY_CODES.get(code)
    if reason is None:
        raise GateUnavailable(f"gate script returned unknown code {code}: {raw!r}")
    return Denied(intent_id, reason, _text(raw[1]) if len(raw) > 1 else "")


def intent_digest(symbol: str, side: str, qty: str, price: str) -> str:
    """The digest gate_admit.lua stores with an admitted intent (and compares on a
    repeat): sha1 of the length-prefixed symbol, side, qty and price strings."""
    raw = "".join(f"{len(v.encode())}:{v}" for v in (symbol, side, qty, price))
    return hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()


def decimal_arg(value: Decimal, what: str) -> str:
    """The exact decimal string sent to the script. Floats are refused (no binary money)."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    return format(value, "f")


def check_intent(intent: Intent, risk: RiskConfig) -> Denied | None:
    """The script's order-sanity checks mirrored in Python, for a clear early error.

    The script stays the authority (it parses the same strings against the limits
    stored in Redis); this is for callers that want to explain a bad intent before
    asking Redis. Returns the denial the script would give, or None.
    """
    iid = intent.intent_id or ""
    inst = risk.instruments.get(intent.symbol)
    if inst is None:
        return Denied(iid, DenyReason.UNKNOWN_SYMBOL, f"symbol {intent.symbol} is not configured")
    for what, v in (("qty", intent.qty), ("price", intent.price)):
        if not isinstance(v, Decimal):
            return Denied(iid, DenyReason.BAD_ORDER, f"{what} must be a Decimal")
        if not v.is_finite() or v <= 0:
            return Denied(iid, DenyReason.BAD_ORDER, f"{what} {v} is not a finite positive number")
    try:
        off_lot = intent.qty % inst.lot != 0
        off_tick = intent.price % inst.tick != 0
    except InvalidOperation:
        return Denied(iid, DenyReason.BAD_ORDER, "qty or price is out of range")
    if off_lot:
        return Denied(iid, DenyReason.OFF_LOT, f"qty {intent.qty} is not a multiple of the lot")
    if off_tick:
        detail = f"price {intent.price} is not a multiple of the tick"
        return Denied(iid, DenyReason.OFF_TICK, detail)
    return None


BATCH_MAX = 16
"""Decisions one EVALSHA carries at most (gate_admit.lua's ``BATCH_MAX``). Decisions
that meet on the gate wire in one event-loop turn go out as one batch: the script's
per-run cost (reading the request, its prologue, the reads every decision shares) is
paid once per batch. 16 decisions run about as long as 16 pipelined single EVALSHAs,
which Redis would also run back to back (it reads a client's pipeline in 16 KB
chunks), so a batch stalls other clients no longer than the pipeline it replaces."""

FIXED_KEYS = 16
"""Keys every run of gate_admit.lua takes before the decisions' own (day, order) pairs."""
DECISION_ARGS = 10
"""Arguments per decision after ARGV[1] and ARGV[2] (gate_admit.lua's header)."""

_ORDER_KEY = b"$%d\r\n%s\r\n"  # a decision's order key, after its day key's bulk
_DECISION_ARGS = (
    b"%s"  # token, holder (packed when they change)
    + b"$%d\r\n%s\r\n" * 3  # intent id, coid, symbol
    + b"%s"  # side
    + b"$%d\r\n%s\r\n" * 2  # qty, price
    + b"%s%s"  # allocate nonce, day (packed once per day)
)
"""A decision's part of a batch's EVALSHA, as RESP (OrderGate._parts)."""
_SIDE_BULK = {Side.BUY: b"$3\r\nbuy\r\n", Side.SELL: b"$4\r\nsell\r\n"}
_NONCE_BULK = (b"$1\r\n0\r\n", b"$1\r\n1\r\n")


class OrderGate:
    """Admits or denies intents for one account, atomically, inside Redis.

    ``clock_ms`` (Unix ms) decides the trading day whose budget the decision reads;
    the throttle and the permit deadline use Redis server time. ``latch_floor`` says, at
    each decision, the lowest kill-switch latch version the caller accepts (the newest it
    saw: ``killswitch.LatchSeen.floor``); below it the script denies ``latch_lost``.
    Without it, 0: any latch, none included.
    """

    __slots__ = (
        "_day", "_day_key", "_fixed", "_floor", "_head_one", "_holder", "_keys",
        "_latch_floor", "_order_prefix", "_packed_keys", "_packed_sha", "_recover_ms", "_redis",
        "_risk", "_schema_b", "_schema_bulk", "_script", "_token", "_who", "_wire",
    )

    batch_max = BATCH_MAX
    """For the gate wire (``GateWire.decide``): decisions per batch at most."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: AccountKeys,
        risk: RiskConfig,
        *,
        clock_ms: ClockMs | None = None,
        recover_ms: int = RECOVER_MS,
        latch_floor: Callable[[], int] | None = None,
    ) -> None:
        self._redis = redis
        self._latch_floor = latch_floor
        self._recover_ms = recover_ms
        self._keys = keys
        self._risk = risk
        self._day = TradingDay(risk.timezone, clock_ms)
        self._script = scripts.register(redis, "gate_admit")
        # Everything constant per account is encoded once: redis-py would otherwise
        # re-encode these 16 keys on every admit (about half of the client-side cost of
        # packing the command). Bytes are sent as they are. (KEYS 1-16 of gate_admit.lua)
        self._fixed: tuple[bytes, ...] = tuple(k.encode() for k in (
            keys.schema, keys.state, keys.lease, keys.intents, keys.limits, keys.positions,
            keys.reservations, keys.marks, keys.throttle, keys.open_orders, keys.journal,
            keys.stats, keys.denials, keys.nonce, keys.aggregates, keys.tombstones,
        ))
        assert len(self._fixed) == FIXED_KEYS
        self._schema_b = str(SCHEMA_VERSION).encode()
        self._day_key: tuple[str, bytes, bytes, bytes, bytes] = ("", b"", b"", b"", b"")
        """(trading day, its key, the day itself, both as RESP bulks), encoded once per day."""
        # (None: no token or holder is bound yet, so the first admit always packs them)
        self._token: tuple[int | None, bytes] = (None, b"")
        self._holder: tuple[str | None, bytes] = (None, b"")
        self._who = b""
        """The token's and the holder's RESP bulks (packed when either changes)."""
        self._floor: tuple[int, bytes, bytes] = (0, b"0", wire_bulk(b"0"))
        """The latch floor, as it is sent and as its RESP bulk (packed when it changes)."""
        # The gate's own pipelined connection (gatewire.py), when the client is one it
        # speaks for: the command is then sent as RESP bytes of which everything
        # constant per account (the command, the sha, every key but the day's and the
        # order's, the schema version) was packed here, once; the latch floor when it changes.
        self._wire = GateWire.for_client(redis)
        self._packed_sha = wire_bulk(b"EVALSHA") + wire_bulk(self._script.sha.encode())
        self._packed_keys = b"".join(wire_bulk(k) for k in self._fixed)
        self._schema_bulk = wire_bulk(self._schema_b)
        numkeys = b"%d" % (FIXED_KEYS + 2)
        self._head_one = b"".join((  # a batch of one up to its decision's keys
            b"*%d\r\n" % (3 + FIXED_KEYS + 2 + 2 + DECISION_ARGS), self._packed_sha,
            wire_bulk(numkeys), self._packed_keys,
        ))
        # an order's key is this prefix + its client order id (checked, else built per call)
        prefix = keys.order("")
        self._order_prefix = prefix.encode() if keys.order("c0") == prefix + "c0" else b""

    async def admit(
        self,
        intent: Intent,
        *,
        intent_id: str,
        token: int,
        holder_id: str,
        allocate_nonce: bool = False,
    ) -> Decision:
        """Decide ``intent`` in one EVALSHA: ``Admitted`` (exposure reserved, order
        recorded PENDING_SUBMIT) or ``Denied(reason, detail)``. Raises
        ``GateUnavailable`` when nothing was admitted because Redis could not be asked
        (or answered with an error), and ``GateOutcomeUnknown`` when the request may
        have run but Redis could not be asked again within ``recover_ms``.

        An intent of the wrong shape (``model.intent_args``: a float or NaN qty, a str
        side, an over-long symbol or id, a decimal the script cannot hold exactly) is
        ``Denied(bad_order)`` here, before anything reaches Redis — whoever the caller."""
        args = intent_args(intent)  # the shape checks, and the exact qty / price strings
        if isinstance(args, str):
            return Denied(intent_id, DenyReason.BAD_ORDER, args)
        if not isinstance(intent_id, str) or not ID_RE.fullmatch(intent_id):
            return Denied(intent_id if isinstance(intent_id, str) and len(intent_id) <= 128 else "",
                          DenyReason.BAD_ORDER, "intent_id must be 1-128 printable ASCII "
                          "characters without spaces")
        qty, price = args
        coid = client_order_id_for(intent_id)
        self._bind(self._day.today(), token, holder_id,
                   self._latch_floor() if self._latch_floor is not None else 0)
        try:
            try:
                # On NOSCRIPT (a restarted or flushed Redis) the script is loaded (same
                # text, same sha) and run once more.
                if self._wire is not None:
                    # the wire batches it with the other decisions of this loop turn
                    keys_part, args_part = self._parts(
                        intent_id, coid, intent, qty, price, allocate_nonce)
                    try:
                        raw = await self._wire.decide(self, keys_part, args_part)
                    except NoScriptError:
                        await self._wire.load_script(self._script.script)
                        raw = await self._wire.decide(self, keys_part, args_part)
                else:
                    # a batch of one: KEYS 1-16, day, order; ARGV 1-2, then the decision's 10
                    # (the command name stays a str: redis-py's RedisCluster looks it up
                    # by name to route the call, and refuses a bytes name)
                    command = (
                        "EVALSHA", self._script.sha, FIXED_KEYS + 2, *self._fixed,
                        self._day_key[1], self._keys.order(coid), self._schema_b,
                        self._floor[1], self._token[1], self._holder[1], intent_id, coid, intent.symbol,
                        intent.side.value, qty, price, b"1" if allocate_nonce else b"0",
                        self._day_key[2],
                    )
                    # EVALSHA straight through execute_command: the Script wrapper would
                    # copy the arguments twice more.
                    try:
                        replies = await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
                    except NoScriptError:
                        await self._redis.script_load(self._script.script)
                        replies = await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
                    raw = _only(replies)
            except ResponseError as e:
                if "WRONGTYPE" in str(e):
                    return Denied(intent_id, DenyReason.BAD_STATE, str(e))
                raise GateUnavailable(f"gate script failed: {e}") from e
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            if _before_sending(e):
                raise GateUnavailable(f"redis unavailable: {type(e).__name__}: {e}") from e
            digest = intent_digest(intent.symbol, intent.side.value, qty, price)
            return await self._recover(intent_id, digest, e)
        except RedisError as e:
            raise GateUnavailable(f"redis error: {type(e).__name__}: {e}") from e
        return decode_reply(intent_id, coid, raw)

    def _bind(self, day: str, token: int, holder_id: str, floor: int) -> None:
        """The encoded pieces of the decisions that follow: the trading day's key and the
        day, the token and the holder, the latch floor (encoded again only when one
        changes)."""
        if floor != self._floor[0]:
            floor_b = str(floor).encode()
            self._floor = (floor, floor_b, wire_bulk(floor_b))
        if day != self._day_key[0]:
            day_key, day_b = self._keys.day(day).encode(), day.encode()
            self._day_key = (day, day_key, day_b, wire_bulk(day_key), wire_bulk(day_b))
        if token != self._token[0] or holder_id != self._holder[0]:
            self._token = (token, str(token).encode())
            self._holder = (holder_id, holder_id.encode())
            self._who = wire_bulk(self._token[1]) + wire_bulk(self._holder[1])

    def _parts(
        self, intent_id: str, coid: str, intent: Intent, qty: str, price: str, nonce: bool
    ) -> tuple[bytes, bytes]:
        """One decision's keys (day, order) and arguments, as the RESP bulks they are in a
        batch's EVALSHA (``pack_batch``)."""
        iid, c = intent_id.encode(), coid.encode()
        order = self._order_prefix + c if self._order_prefix else self._keys.order(coid).encode()
        sym, q, p = intent.symbol.encode(), qty.encode(), price.encode()
        return self._day_key[3] + _ORDER_KEY % (len(order), order), _DECISION_ARGS % (
            self._who, len(iid), iid, len(c), c, len(sym), sym, _SIDE_BULK[intent.side],
            len(q), q, len(p), p, _NONCE_BULK[nonce], self._day_key[4],
        )

    def pack_batch(self, keys: list[bytes], args: list[bytes]) -> bytes:
        """The EVALSHA of the decisions whose ``_parts`` are ``keys`` and ``args`` (1 to
        ``BATCH_MAX``, in order) as RESP bytes: what ``gatewire.pack`` would build, the
        parts constant per account packed once in __init__. Its reply is one reply per
        decision, in the same order."""
        n = len(keys)
        if n == 1:
            return b"".join((self._head_one, keys[0], self._schema_bulk, self._floor[2], args[0]))
        numkeys = b"%d" % (FIXED_KEYS + 2 * n)
        return b"".join((
            b"*%d\r\n" % (3 + FIXED_KEYS + 2 * n + 2 + DECISION_ARGS * n), self._packed_sha,
            b"$%d\r\n%s\r\n" % (len(numkeys), numkeys), self._packed_keys, *keys,
            self._schema_bulk, self._floor[2], *args,
        ))

    async def _recover(self, intent_id: str, digest: str, cause: BaseException) -> Decision:
        """The EVALSHA may have run and only its reply been lost: ask Redis for the
        intent's decision (a read, so asking is idempotent) until it answers or
        ``recover_ms`` passes. Returns the original admission (``intent_conflict`` when
        it was admitted as another order than ``digest`` says) or raises."""
        why = f"{type(cause).__name__}: {cause}"
        give_up = time.monotonic() + self._recover_ms / 1000
        pause = 0.05
        while True:
            try:
                stored = await self._redis.hget(self._keys.intents, intent_id)
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                if time.monotonic() + pause > give_up:
                    raise GateOutcomeUnknown(
                        f"reply lost ({why}) and Redis not reachable again within "
                        f"{self._recover_ms} ms ({type(e).__name__}): intent {intent_id} may "
                        "be admitted; submit the same intent id again to learn its decision"
                    ) from cause
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            except RedisError as e:
                raise GateOutcomeUnknown(
                    f"reply lost ({why}); re-asking failed: {type(e).__name__}: {e}"
                ) from cause
            if stored is None:
                raise GateUnavailable(
                    f"reply lost ({why}); Redis says intent {intent_id} was not admitted"
                ) from cause
            return decode_intent_record(intent_id, _text(stored), digest)


def _only(replies: Any) -> Any:
    """The one reply of a batch of one (gate_admit.lua answers a list of replies)."""
    if not isinstance(replies, list) or len(replies) != 1:
        raise GateUnavailable(f"gate script returned an unexpected batch reply: {replies!r}")
    return replies[0]


def _before_sending(e: BaseException) -> bool:
    """True when the error came from opening the connection: the request was not sent."""
    if isinstance(e, WireError):
        return not e.sent
    return "connecting to" in str(e).lower()


def decode_intent_record(intent_id: str, record: str, digest: str) -> Decision:
    """The admission stored at ``intents[intent_id]`` (``coid|token|deadline_ms|nonce|digest``;
    records written before digests have no last part), or ``Denied(INTENT_CONFLICT)`` when
    the stored digest is not ``digest``. ``order`` is None: the caller reads the record."""
    parts = record.split("|")
    try:
        if len(parts) not in (4, 5):
            raise ValueError("not 4 or 5 parts")
        coid = parts[0]
        token = scripts.stored_int(parts[1], "token")
        deadline = scripts.stored_int(parts[2], "deadline")
        nonce = None if parts[3] == "-" else scripts.stored_int(parts[3], "nonce")
    except ValueError as e:
        raise GateUnavailable(f"intents {intent_id} is malformed ({e}): {record!r}") from None
    if len(parts) == 5 and parts[4] != digest:
        detail = f"intent {intent_id} was admitted as another order; a different order needs a new intent id"
        return Denied(intent_id, DenyReason.INTENT_CONFLICT, detail)
    return Admitted(
        intent_id=intent_id,
        client_order_id=coid,
        token=token,
        submit_deadline_ms=deadline,
        duplicate=True,
        nonce=nonce,
    )
