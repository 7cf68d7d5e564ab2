"""The independent checker: did the account keep its invariants under faults?

It trusts nothing the bots say about themselves. Its only inputs are

- the **venue's own record** (the exchange simulator's append-only JSONL: every order
  that arrived, what the venue did with it, every fill), and
- **Redis**, read raw through the documented keys (``docs/keys.md``): the account's
  journal stream, order hashes, open set, reservations, positions, fills, stats.

It never imports the gate, the ledger or the runtime, never reads a bot's log, and
parses the keys itself, so a bug in those modules cannot hide itself from it.

The checks (numbering = ``INVARIANTS``):

1. admissions are fenced: in journal order, once an order was admitted under token
   N+1, no order is admitted under a token <= N; across histories (a FLUSHALL or an
   empty restart loses one, the harness keeps it for the checker) the order is
   (epoch, token), every history's tokens start above every token of the histories
   before it (``fence recover`` re-seeds above them), and no (epoch, token) ever admits
   for two holders;
2. every order the venue received was admitted by the gate (same client order id,
   symbol, side, quantity, price), no client order id was admitted twice within one
   history — nor again in a later history once the venue had received it (one the
   venue never saw may be admitted again after a lost history: ``resolve_readmissions``)
   — and none executed twice at the venue (accepted as new more than once, or filled
   beyond its quantity, or one fill id twice);
3. replaying the venue's fills in order, the account's position never exceeds a
   symbol's ``max_position`` and no trading day's realized loss exceeds the daily loss
   limit (unrealized loss moves with the market, which no gate can stop, so it is not
   checked here);
4. after settling, the ledger equals the venue: positions, the set of fills (and
   which order each belongs to), no order terminal in the ledger that is still live at
   the venue, and every reservation belongs to a live (non-terminal) order; and the
   maintained aggregates (``agg``), when present, equal a recomputation from the raw
   positions, reservations and marks (k = tick x lot x 10^quote_decimals, from the
   run's own config);
5. no order left a terminal state (journal transitions in order, and the final record);
6. every order that reached the venue after its sender lost the lease (after its
   permit deadline, after a higher token's first admission, or after its token was
   revoked) was stopped by the venue's fence (expired/rejected there, no fills) or
   stayed within what it reserved (filled no more than its quantity, at or better
   than its limit price). These "late sends" are counted.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from guardrails.config import RiskConfig
from guardrails.keys import AccountKeys
from guardrails.model import Side

_STORED_INT = re.compile(r"-?[0-9]{1,17}")


def _int(v: Any, what: str) -> int:
    """A stored integer as docs/keys.md defines it (``^-?[0-9]+$``, ``|n| < 2^53``),
    parsed here rather than imported (the checker trusts no module it checks); a
    ``ValueError`` naming ``what`` (key and field) otherwise, never another number."""
    text = v if isinstance(v, str) else str(v)
    if not _STORED_INT.fullmatch(text) or abs(int(text)) >= 2**53:
        raise ValueError(f"{what} is not an integer: {text!r}")
    return int(text)

INVARIANTS: dict[int, str] = {
    1: "admissions fenced (token never goes back)",
    2: "venue orders admitted once, executed once",
    3: "venue position and daily loss within limits",
    4: "ledger equals venue; reservations live",
    5: "terminal stays terminal",
    6: "late sends fenced or within reservation",
}

TERMINAL = frozenset({"FILLED", "CANCELED", "REJECTED", "EXPIRED"})
STRANDED_GRACE_MS = 1000
"""Clock slack between Redis (deadlines) and the checker's own clock."""


# -- normalised inputs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Admission:
    """A journal entry: the gate admitted ``coid`` under ``token``."""

    seq: int
    coid: str
    token: int
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    deadline_ms: int
    ts_ms: int
    epoch: int = 0
    """Which history (0 = the oldest) the journal entry was read from."""
    holder: str = ""
    """The lease holder the gate admitted it for (``""`` when not recorded)."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A journal entry: ``coid`` moved to ``to_state``."""

    seq: int
    coid: str
    to_state: str
    ts_ms: int
    from_state: str = ""
    """The state the ledger script saw before it wrote (``""`` when not recorded)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    """A journal entry: an operator revoked ``token`` (kill --revoke) at ``ts_ms``."""

    seq: int
    token: int
    ts_ms: int
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class VenueOrder:
    """One order arrival at the venue, and what the venue did with it on arrival."""

    seq: int
    coid: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    received_ms: int
    outcome: str
    """``accepted`` (a new order), ``duplicate`` (the id was known: no new order),
    ``expired`` (arrived after its expiry: the venue-side fence), ``rejected``."""
    expiry_ms: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class VenueFill:
    seq: int
    fill_id: str
    coid: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    ts_ms: int
    fee: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class VenueEnd:
    """The venue ended an order's life (cancel, expiry, full fill): no more fills."""

    seq: int
    coid: str
    state: str
    ts_ms: int


@dataclass(frozen=True, slots=True)
class LedgerOrder:
    coid: str
    state: str
    symbol: str
    side: Side
    qty: Decimal
    filled: Decimal


@dataclass(frozen=True, slots=True)
class LedgerView:
    """The ledger after settling, read raw from Redis."""

    positions: dict[str, Decimal]
    fills: dict[str, str]
    """fill id -> client order id."""
    orders: dict[str, LedgerOrder]
    open_orders: frozenset[str]
    reserved: dict[str, Decimal]
    """``<symbol>:buy`` / ``<symbol>:sell`` -> reserved quantity of open orders;
    ``<symbol>:loss`` -> reserved worst-case loss (money units)."""


@dataclass(frozen=True, slots=True)
class Limits:
    max_position: dict[str, Decimal]
    daily_loss_limit: Decimal
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class AggregateView:
    """The ``agg`` hash and the raw integers it summarises, read from Redis."""

    agg: dict[str, str]
    positions: dict[str, int]
    """``<sym>:qty`` / ``<sym>:cost`` -> stored integer."""
    reservations: dict[str, int]
    marks: dict[str, int]
    k: dict[str, int]
    """money units per lot per tick, from the run's config (not from Redis)."""


@dataclass
class CheckInput:
    admissions: list[Admission]
    transitions: list[Transition]
    venue_orders: list[VenueOrder]
    venue_fills: list[VenueFill]
    limits: Limits
    ledger: LedgerView | None
    venue_ends: list[VenueEnd] = field(default_factory=list)
    revocations: list[Revocation] = field(default_factory=list)
    denied: dict[str, int] = field(default_factory=dict)
    admitted_counter: int | None = None
    journal_entries: int = 0
    checked_at_ms: int | None = None
    """When the sources were read (Unix ms); enables the stranded-reservation check."""
    venue_other: dict[str, int] = field(default_factory=dict)
    """Venue record rows that are neither orders, fills nor cancels, by type."""
    journal_added: int | None = None
    """Entries ever appended to the journal (Redis >= 7); more than were read = trimmed."""
    aggregates: AggregateView | None = None
    histories: list[dict[str, Any]] = field(default_factory=list)
    """One row per history read (oldest first): its epoch key and journal size."""


SEQ_SPAN = 10**9
"""Journal sequence numbers of history ``e`` start at ``e * SEQ_SPAN``: one order over
every history, oldest first."""


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "name": INVARIANTS[self.invariant],
            "detail": self.detail,
        }


@dataclass
class CheckResult:
    violations: list[Violation]
    stats: dict[str, Any]
    late_sends: dict[str, Any]

    def by_invariant(self) -> dict[int, list[Violation]]:
        out: dict[int, list[Violation]] = {n: [] for n in INVARIANTS}
        for v in self.violations:
            out[v.invariant].append(v)
        return out


# -- the checks ----------------------------------------------------------------------


def check(data: CheckInput) -> CheckResult:
    """Run every check over ``data``; never raises for a finding, only for bad input."""
    violations: list[Violation] = []
    if data.journal_added is not None and data.journal_added > data.journal_entries:
        # Fail closed: with entries missing, no admission-based check can be trusted.
        violations.append(
            Violation(
                1,
                f"journal was trimmed ({data.journal_added} appended, {data.journal_entries} "
                "left): the admission history cannot be checked",
            )
        )
    violations += check_fencing(data.admissions)
    effective, readmitted, readmit_violations = resolve_readmissions(
        data.admissions, data.venue_orders
    )
    violations += readmit_violations
    violations += check_admitted_once(effective, data.venue_orders, data.venue_fills)
    violations += check_limits(data.venue_fills, data.limits)
    if data.ledger is not None:
        violations += check_ledger_matches_venue(
            data.ledger,
            data.venue_orders,
            data.venue_fills,
            data.venue_ends,
            deadlines={a.coid: a.deadline_ms for a in data.admissions},
            now_ms=data.checked_at_ms,
        )
    if data.aggregates is not None:
        violations += check_aggregates(data.aggregates)
    violations += check_terminal(data.transitions, data.ledger)
    late, late_violations = check_late_sends(
        data.admissions, data.venue_orders, data.venue_fills, data.revocations, data.ledger,
        effective=effective,
    )
    violations += late_violations
    outcomes = Counter(v.outcome for v in data.venue_orders)
    stats: dict[str, Any] = {
        "admitted": len(data.admissions),
        "readmitted_after_lost_history": len(readmitted),
        "admitted_counter": data.admitted_counter,
        "denied": dict(sorted(data.denied.items())),
        "venue_orders": len(data.venue_orders),
        "venue_accepted": outcomes.get("accepted", 0),
        "venue_duplicates": outcomes.get("duplicate", 0),
        "venue_expired": outcomes.get("expired", 0),
        "venue_rejected": outcomes.get("rejected", 0),
        "venue_fills": len(data.venue_fills),
        "transitions": len(data.transitions),
        "journal_entries": data.journal_entries,
        "ledger_checked": data.ledger is not None,
        "venue_other_rows": dict(data.venue_other),
        "histories": data.histories,
    }
    return CheckResult(violations, stats, late)


def check_fencing(admissions: Iterable[Admission]) -> list[Violation]:
    """1. In journal order (histories oldest first) the admitting (epoch, token) never
    goes back; a history's tokens are all above every token of the histories before it;
    one (epoch, token) admits for one holder only."""
    out: list[Violation] = []
    highest: Admission | None = None
    before: dict[int, int] = {}
    """epoch -> the highest token admitted in every earlier history."""
    top = 0
    holders: dict[tuple[int, int], str] = {}
    reported: set[tuple[int, int]] = set()
    for a in sorted(admissions, key=lambda a: a.seq):
        if a.epoch not in before:
            before[a.epoch] = top
        if highest is not None and (a.epoch, a.token) < (highest.epoch, highest.token):
            out.append(
                Violation(
                    1,
                    f"{a.coid} admitted under token {a.token} after {highest.coid} was "
                    f"admitted under token {highest.token}"
                    + (f" (histories {highest.epoch} -> {a.epoch})" if a.epoch != highest.epoch
                       else ""),
                )
            )
        elif a.token <= before[a.epoch] and (a.epoch, -1) not in reported:
            reported.add((a.epoch, -1))
            out.append(
                Violation(
                    1,
                    f"{a.coid} admitted under token {a.token} in history {a.epoch}, not above "
                    f"token {before[a.epoch]} admitted before the history was lost",
                )
            )
        pair = (a.epoch, a.token)
        if a.holder:
            first = holders.setdefault(pair, a.holder)
            if first != a.holder and pair not in reported:
                reported.add(pair)
                out.append(
                    Violation(
                        1,
                        f"token {a.token} of history {a.epoch} admitted for two holders "
                        f"({first}, then {a.holder} with {a.coid}): a reused (epoch, token)",
                    )
                )
        top = max(top, a.token)
        if highest is None or (a.epoch, a.token) > (highest.epoch, highest.token):
            highest = a
    return out


def resolve_readmissions(
    admissions: Iterable[Admission], venue_orders: Iterable[VenueOrder]
) -> tuple[list[Admission], list[str], list[Violation]]:
    """2, across lost histories: which admission of each client order id the venue's
    orders answer to.

    Within one history an order id is admitted once (a second admission is a violation).
    A history that was lost (FLUSHALL, empty restart) takes its intents with it: an
    admission the venue never received cannot be known to anyone, and the same intent
    may be admitted again in a later history (docs/architecture.md, "what epochs cannot
    restore"). That re-admission is allowed — and then it is the admission the venue's
    order must match — only when the venue had received nothing under that id before
    it; one the venue had seen must have been restored by ``fence recover`` from the
    venue's records, so admitting it again is a violation. Executing it twice at the
    venue stays one too (``check_admitted_once``). Returns (the admission per id, the
    ids re-admitted after a lost history, the violations)."""
    first_at_venue: dict[str, int] = {}
    for v in venue_orders:
        seen = first_at_venue.get(v.coid)
        first_at_venue[v.coid] = v.received_ms if seen is None else min(seen, v.received_ms)
    current: dict[str, Admission] = {}
    readmitted: list[str] = []
    out: list[Violation] = []
    for a in sorted(admissions, key=lambda a: a.seq):
        prev = current.get(a.coid)
        if prev is None:
            current[a.coid] = a
            continue
        if prev.epoch == a.epoch:
            out.append(Violation(2, f"{a.coid} admitted twice (tokens {prev.token}, {a.token})"))
            continue
        seen = first_at_venue.get(a.coid)
        if seen is not None and seen <= a.ts_ms:
            out.append(
                Violation(
                    2,
                    f"{a.coid} admitted again in history {a.epoch} (token {a.token}) although "
                    f"the venue had received it at {seen} ms, before the re-admission at "
                    f"{a.ts_ms} ms: the recovery forgot an order the venue saw",
                )
            )
            continue
        readmitted.append(a.coid)
        current[a.coid] = a
    return list(current.values()), readmitted, out


def check_admitted_once(
    admissions: Iterable[Admission], venue_orders: Iterable[VenueOrder], fills: Iterable[VenueFill]
) -> list[Violation]:
    """2. Venue orders were admitted (same fields); once; executed once. ``admissions``
    holds one admission per order id (``resolve_readmissions``); a second one here is
    still reported."""
    out: list[Violation] = []
    by_coid: dict[str, Admission] = {}
    for a in sorted(admissions, key=lambda a: a.seq):
        if a.coid in by_coid:
            out.append(Violation(2, f"{a.coid} admitted twice (tokens {by_coid[a.coid].token}, {a.token})"))
            continue
        by_coid[a.coid] = a
    accepted: Counter[str] = Counter()
    for v in sorted(venue_orders, key=lambda v: v.seq):
        adm = by_coid.get(v.coid)
        if adm is None:
            out.append(
                Violation(
                    2,
                    f"venue received {v.coid} ({v.side} {v.qty} {v.symbol} @ {v.price}) "
                    "that the gate never admitted",
                )
            )
            continue
        diffs = [
            f"{name} {got} != admitted {want}"
            for name, got, want in (
                ("symbol", v.symbol, adm.symbol),
                ("side", v.side, adm.side),
                ("qty", v.qty, adm.qty),
                ("price", v.price, adm.price),
            )
            if got != want
        ]
        if diffs:
            out.append(Violation(2, f"venue order {v.coid} differs from its admission: {'; '.join(diffs)}"))
        if v.outcome == "accepted":
            accepted[v.coid] += 1
    for coid, n in accepted.items():
        if n > 1:
            out.append(Violation(2, f"{coid} accepted as a new order {n} times at the venue"))
    filled: dict[str, Decimal] = defaultdict(Decimal)
    seen: set[str] = set()
    for f in sorted(fills, key=lambda f: f.seq):
        if f.fill_id in seen:
            out.append(Violation(2, f"fill {f.fill_id} of {f.coid} recorded twice by the venue"))
            continue
        seen.add(f.fill_id)
        filled[f.coid] += f.qty
    for coid, qty in filled.items():
        adm = by_coid.get(coid)
        if adm is None:
            out.append(Violation(2, f"venue filled {coid}, which the gate never admitted"))
        elif qty > adm.qty:
            out.append(Violation(2, f"{coid} executed {qty} at the venue, more than its quantity {adm.qty}"))
    return out


def _trading_day(ts_ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).astimezone(tz).date().isoformat()


def check_limits(fills: Iterable[VenueFill], limits: Limits) -> list[Violation]:
    """3. Replay the venue's fills: position within max_position, day loss within budget."""
    out: list[Violation] = []
    tz = ZoneInfo(limits.timezone)
    pos: dict[str, Decimal] = defaultdict(Decimal)
    cost: dict[str, Decimal] = defaultdict(Decimal)
    """Average entry price of the open position per symbol."""
    day_pnl: dict[str, Decimal] = defaultdict(Decimal)
    reported_pos: set[str] = set()
    reported_day: set[str] = set()
    for f in sorted(fills, key=lambda f: f.seq):
        signed = f.qty * f.side.sign
        before = pos[f.symbol]
        realized = Decimal(0)
        if before == 0 or (before > 0) == (signed > 0):
            total = before + signed
            cost[f.symbol] = (cost[f.symbol] * abs(before) + f.price * f.qty) / abs(total)
            pos[f.symbol] = total
        else:
            closing = min(abs(before), f.qty)
            direction = 1 if before > 0 else -1
            realized = (f.price - cost[f.symbol]) * closing * direction
            total = before + signed
            pos[f.symbol] = total
            if total == 0:
                cost[f.symbol] = Decimal(0)
            elif (total > 0) != (before > 0):
                cost[f.symbol] = f.price  # flipped: the remainder opened at this price
        day = _trading_day(f.ts_ms, tz)
        day_pnl[day] += realized - f.fee
        cap = limits.max_position.get(f.symbol)
        if cap is None:
            out.append(Violation(3, f"venue filled {f.coid} in {f.symbol}, which has no configured limit"))
        elif abs(pos[f.symbol]) > cap and f.symbol not in reported_pos:
            reported_pos.add(f.symbol)
            out.append(
                Violation(
                    3,
                    f"venue position {pos[f.symbol]} {f.symbol} exceeds max_position {cap} "
                    f"after fill {f.fill_id}",
                )
            )
        loss = -day_pnl[day]
        if loss > limits.daily_loss_limit and day not in reported_day:
            reported_day.add(day)
            out.append(
                Violation(
                    3,
                    f"realized loss {loss} on {day} exceeds daily_loss_limit "
                    f"{limits.daily_loss_limit} after fill {f.fill_id}",
                )
            )
    return out


def venue_positions(fills: Iterable[VenueFill]) -> dict[str, Decimal]:
    pos: dict[str, Decimal] = defaultdict(Decimal)
    for f in fills:
        pos[f.symbol] += f.qty * f.side.sign
    return dict(pos)


def check_ledger_matches_venue(
    ledger: LedgerView,
    venue_orders: Iterable[VenueOrder],
    fills: list[VenueFill],
    ends: Iterable[VenueEnd],
    *,
    deadlines: dict[str, int] | None = None,
    now_ms: int | None = None,
) -> list[Violation]:
    """4. After settling: positions and fills equal; reservations belong to live orders.

    With ``deadlines`` (client order id -> permit deadline) and ``now_ms``: an order the
    ledger still holds open must be live at the venue, or still able to arrive there
    (its deadline not yet passed); otherwise its reservation belongs to a dead order.
    """
    out: list[Violation] = []
    vpos = venue_positions(fills)
    for sym in sorted(set(vpos) | set(ledger.positions)):
        v, lg = vpos.get(sym, Decimal(0)), ledger.positions.get(sym, Decimal(0))
        if v != lg:
            out.append(Violation(4, f"position {sym}: ledger {lg}, venue {v}"))
    vfills = {f.fill_id: f.coid for f in fills}
    missing = sorted(set(vfills) - set(ledger.fills))
    extra = sorted(set(ledger.fills) - set(vfills))
    if missing:
        out.append(Violation(4, f"{len(missing)} venue fill(s) missing from the ledger, e.g. {missing[:3]}"))
    if extra:
        out.append(Violation(4, f"{len(extra)} ledger fill(s) the venue never made, e.g. {extra[:3]}"))
    for fid in sorted(set(vfills) & set(ledger.fills)):
        if vfills[fid] != ledger.fills[fid]:
            out.append(
                Violation(
                    4,
                    f"fill {fid}: ledger says order {ledger.fills[fid]}, venue says {vfills[fid]}",
                )
            )
    # An order the venue filled cannot have ended any other way in the ledger.
    for coid in sorted({f.coid for f in fills}):
        rec = ledger.orders.get(coid)
        if rec is not None and rec.state in TERMINAL - {"FILLED"}:
            out.append(Violation(4, f"{coid} is {rec.state} in the ledger but the venue filled it"))
    # Orders still live at the venue (accepted, never ended) must not be terminal here.
    venue_orders = list(venue_orders)
    accepted = {v.coid for v in venue_orders if v.outcome == "accepted"}
    ended = {e.coid for e in ends}
    seen = {v.coid for v in venue_orders}
    if deadlines is not None and now_ms is not None:
        for coid in sorted(ledger.open_orders):
            rec = ledger.orders.get(coid)
            if rec is None or rec.state in TERMINAL:
                continue  # reported below
            if coid in ended:
                out.append(Violation(4, f"{coid} is {rec.state} in the ledger but ended at the venue"))
            elif coid not in seen and deadlines.get(coid, now_ms) < now_ms - STRANDED_GRACE_MS:
                out.append(
                    Violation(
                        4,
                        f"{coid} is {rec.state} and holds its reservation, but the venue never "
                        "received it and its deadline has passed (stranded)",
                    )
                )
    for coid in sorted(accepted - ended):
        rec = ledger.orders.get(coid)
        if rec is not None and rec.state in TERMINAL:
            out.append(Violation(4, f"{coid} is {rec.state} in the ledger but still live at the venue"))
    # Every reservation belongs to a live order, and every open-set member is live.
    live: dict[str, Decimal] = defaultdict(Decimal)
    for coid in sorted(ledger.open_orders):
        rec = ledger.orders.get(coid)
        if rec is None:
            out.append(Violation(4, f"{coid} is in the open set but has no order record"))
            continue
        if rec.state in TERMINAL:
            out.append(Violation(4, f"{coid} is in the open set but {rec.state}"))
            continue
        live[f"{rec.symbol}:{rec.side.value}"] += rec.qty - rec.filled
    for coid, rec in sorted(ledger.orders.items()):
        if rec.state not in TERMINAL and coid not in ledger.open_orders:
            out.append(Violation(4, f"{coid} is {rec.state} but missing from the open set"))
    for key in sorted(set(ledger.reserved) | set(live)):
        sym, _, part = key.rpartition(":")
        r = ledger.reserved.get(key, Decimal(0))
        if part == "loss":
            has_live = live.get(f"{sym}:buy", Decimal(0)) + live.get(f"{sym}:sell", Decimal(0))
            if r != 0 and has_live == 0:
                out.append(Violation(4, f"reserved loss {r} units in {sym} with no live order"))
            elif r < 0:
                out.append(Violation(4, f"reserved loss {r} units in {sym} is negative"))
            continue
        want = live.get(key, Decimal(0))
        if r != want:
            out.append(Violation(4, f"reserved {r} {key}, but live orders account for {want}"))
    return out


def check_aggregates(view: AggregateView) -> list[Violation]:
    """4. The maintained aggregates equal the book they summarise (absent is fine: the
    gate rebuilds them; present and wrong would let it admit past a limit)."""
    agg = view.agg
    if not agg:
        return []
    out: list[Violation] = []
    syms = {f.rsplit(":", 1)[0] for f in (*view.positions, *view.reservations)}
    syms |= {f[2:] for f in agg if f[:2] in ("g:", "u:")}
    gross = uloss = rloss = 0
    for sym in sorted(syms):
        p, c = view.positions.get(f"{sym}:qty", 0), view.positions.get(f"{sym}:cost", 0)
        b, sl = view.reservations.get(f"{sym}:buy", 0), view.reservations.get(f"{sym}:sell", 0)
        rloss += view.reservations.get(f"{sym}:loss", 0)
        w = max(abs(p + b), abs(p - sl))
        g = u = 0
        if w or p or c:
            mark, k = view.marks.get(sym), view.k.get(sym)
            if mark is None or k is None:
                out.append(Violation(4, f"aggregates kept for {sym} without a mark or config"))
                continue
            g = w * mark * k
            u = max(0, c - p * mark * k)
        have = (_int(agg.get(f"g:{sym}", 0), f"agg g:{sym}"),
                _int(agg.get(f"u:{sym}", 0), f"agg u:{sym}"))
        if have != (g, u):
            out.append(Violation(4, f"aggregates g/u:{sym} = {have}, the book gives {(g, u)}"))
        gross, uloss = gross + g, uloss + u
    totals = tuple(_int(agg.get(f, 0), f"agg {f}") for f in ("gross", "uloss", "rloss"))
    if totals != (gross, uloss, rloss):
        out.append(Violation(4, f"aggregate totals (gross, uloss, rloss) = {totals}, the "
                                f"book gives {(gross, uloss, rloss)}"))
    return out


def check_terminal(transitions: Iterable[Transition], ledger: LedgerView | None) -> list[Violation]:
    """5. Once terminal (in journal order), an order never moves again — within each
    history: an order a lost history had ended may be admitted again in a later one
    (``resolve_readmissions``) and live a new life there. The ledger is compared with
    each order's end in the latest history that ended it."""
    out: list[Violation] = []
    final: dict[tuple[int, str], Transition] = {}
    for t in sorted(transitions, key=lambda t: t.seq):
        if t.from_state in TERMINAL and t.to_state != t.from_state:
            out.append(Violation(5, f"{t.coid} moved {t.from_state} -> {t.to_state} (journal seq {t.seq})"))
            continue
        key = (t.seq // SEQ_SPAN, t.coid)
        first = final.get(key)
        if first is not None:
            if t.to_state != first.to_state or t.to_state not in TERMINAL:
                out.append(
                    Violation(5, f"{t.coid} moved {first.to_state} -> {t.to_state} (journal seq {t.seq})")
                )
            continue
        if t.to_state in TERMINAL:
            final[key] = t
    latest: dict[str, Transition] = {}
    for (_, coid), t in sorted(final.items()):
        latest[coid] = t  # sorted by (history, id): the latest history's end wins
    if ledger is not None:
        for coid, t in sorted(latest.items()):
            rec = ledger.orders.get(coid)
            if rec is not None and rec.state != t.to_state:
                out.append(
                    Violation(
                        5,
                        f"{coid} was {t.to_state} in the journal, its record now says {rec.state}",
                    )
                )
    return out


def check_late_sends(
    admissions: Iterable[Admission],
    venue_orders: Iterable[VenueOrder],
    fills: Iterable[VenueFill],
    revocations: Iterable[Revocation],
    ledger: LedgerView | None = None,
    *,
    effective: Iterable[Admission] | None = None,
) -> tuple[dict[str, Any], list[Violation]]:
    """6. Orders that reached the venue after their sender lost the lease: fenced or bounded.

    "Within its reservation": filled no more than its quantity, no worse than its limit,
    and — when the ledger is known — not filled after the ledger released it (an order
    the ledger cancelled or expired no longer holds a reservation)."""
    adms = sorted(admissions, key=lambda a: a.seq)
    if effective is None:
        by_coid = {a.coid: a for a in reversed(adms)}  # first admission wins
    else:  # the admission each venue order answers to (resolve_readmissions)
        by_coid = {a.coid: a for a in effective}
    # First moment a token above N was used to admit: from then on, N had lost the lease.
    first_above: list[tuple[tuple[int, int], int]] = []
    """((epoch, token), ts_ms of its first admission)"""
    for a in adms:
        if not first_above or (a.epoch, a.token) > first_above[-1][0]:
            first_above.append(((a.epoch, a.token), a.ts_ms))
    revoked = {(r.epoch, r.token): r.ts_ms for r in revocations}
    filled: dict[str, Decimal] = defaultdict(Decimal)
    bad_price: dict[str, str] = {}
    for f in fills:
        filled[f.coid] += f.qty
        adm = by_coid.get(f.coid)
        if adm is not None and (
            (adm.side is Side.BUY and f.price > adm.price) or (adm.side is Side.SELL and f.price < adm.price)
        ):
            bad_price[f.coid] = f"filled at {f.price} beyond its limit {adm.price}"
    released: dict[str, str] = {}
    if ledger is not None:
        for coid in filled:
            rec = ledger.orders.get(coid)
            if rec is not None and rec.state in TERMINAL - {"FILLED"}:
                released[coid] = f"filled at the venue after the ledger made it {rec.state}"
    total = fenced = within = 0
    out: list[Violation] = []
    examples: list[dict[str, Any]] = []
    for v in sorted(venue_orders, key=lambda v: v.seq):
        adm = by_coid.get(v.coid)
        if adm is None:
            continue  # invariant 2 reports it
        lost_at = min(
            [adm.deadline_ms]
            + [ts for tok, ts in first_above if tok > (adm.epoch, adm.token)]
            + [ts for tok, ts in revoked.items() if tok == (adm.epoch, adm.token)]
        )
        if v.received_ms <= lost_at:
            continue
        total += 1
        why = "permit deadline passed" if v.received_ms > adm.deadline_ms else "lease lost"
        if v.outcome in ("expired", "rejected"):
            fenced += 1
            how = "venue_fenced"
        elif v.outcome == "duplicate" or (
            filled[v.coid] <= adm.qty and v.coid not in bad_price and v.coid not in released
        ):
            within += 1
            how = "within_reservation"
        else:
            how = "escaped"
            extra = (
                bad_price.get(v.coid)
                or released.get(v.coid)
                or (f"filled {filled[v.coid]} > reserved {adm.qty}")
            )
            out.append(
                Violation(
                    6,
                    f"late send {v.coid} (token {adm.token}, {why}, "
                    f"{v.received_ms - lost_at} ms late): {extra}",
                )
            )
        if len(examples) < 20:
            examples.append(
                {
                    "coid": v.coid,
                    "token": adm.token,
                    "late_ms": v.received_ms - lost_at,
                    "why": why,
                    "stopped": how,
                }
            )
    return (
        {
            "total": total,
            "venue_fenced": fenced,
            "within_reservation": within,
            "escaped": total - fenced - within,
            "examples": examples,
        },
        out,
    )


# -- loading the raw sources ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Units:
    """An instrument's tick and lot, from the run's own config (not from Redis)."""

    tick: Decimal
    lot: Decimal


def _dec(text: str | None, what: str) -> Decimal:
    if text is None or text == "":
        raise ValueError(f"{what}: missing")
    return Decimal(text)


def _stream_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def parse_venue_rows(
    rows: Iterable[dict[str, Any]],
) -> tuple[list[VenueOrder], list[VenueFill], list[VenueEnd], dict[str, int]]:
    """The venue's record (JSON objects, oldest first) as orders, fills and order ends.

    Row shapes (``docs/venues.md``): ``type=order`` (coid, symbol, side, qty, price,
    deadline_ms, arrival_ms, result accepted|rejected|duplicate, reason), ``type=fill``
    (fill_id, coid, symbol, side, qty, price, ts_ms), ``type=cancel`` (coid, result
    canceled|final|not_found), ``type=expire`` (coid), anything else is counted and
    otherwise ignored.
    """
    orders: list[VenueOrder] = []
    fills: list[VenueFill] = []
    ends: list[VenueEnd] = []
    other: Counter[str] = Counter()
    for seq, row in enumerate(rows):
        kind = str(row.get("type", ""))
        if kind == "order" and "symbol" not in row:
            # A request the venue could not even parse (no order fields): refused at the
            # door, it created nothing. Counted, not checked.
            other["order_unparsed"] += 1
        elif kind == "order":
            result = str(row.get("result", ""))
            reason = str(row.get("reason", "") or "")
            if result == "rejected" and reason == "expired":
                outcome = "expired"
            elif result in ("accepted", "rejected", "duplicate"):
                outcome = result
            else:
                raise ValueError(f"venue record row {seq}: unknown order result {result!r}")
            received = int(row.get("arrival_ms") or row.get("ts_ms") or 0)
            deadline = row.get("deadline_ms")
            orders.append(
                VenueOrder(
                    seq=seq,
                    coid=str(row["coid"]),
                    symbol=str(row["symbol"]),
                    side=Side(str(row["side"])),
                    qty=_dec(str(row["qty"]), "qty"),
                    price=_dec(str(row["price"]), "price"),
                    received_ms=received,
                    outcome=outcome,
                    expiry_ms=int(deadline) if deadline not in (None, "") else None,
                    reason=reason,
                )
            )
            if outcome in ("rejected", "expired"):
                ends.append(VenueEnd(seq, str(row["coid"]), outcome, received))
        elif kind == "fill":
            ts = int(row.get("ts_ms") or 0)
            fills.append(
                VenueFill(
                    seq=seq,
                    fill_id=str(row["fill_id"]),
                    coid=str(row["coid"]),
                    symbol=str(row["symbol"]),
                    side=Side(str(row["side"])),
                    qty=_dec(str(row["qty"]), "qty"),
                    price=_dec(str(row["price"]), "price"),
                    ts_ms=ts,
                    fee=Decimal(str(row.get("fee") or "0")),
                )
            )
            # Fills are whole at this venue (docs/venues.md): a fill ends the order.
            if str(row.get("final", "1")) in ("1", "true", "True"):
                ends.append(VenueEnd(seq, str(row["coid"]), "filled", ts))
        elif kind == "cancel":
            if str(row.get("result", "")) == "canceled":
                ends.append(VenueEnd(seq, str(row["coid"]), "canceled", int(row.get("arrival_ms") or 0)))
        elif kind == "expire":
            ends.append(VenueEnd(seq, str(row["coid"]), "expired", int(row.get("ts_ms") or 0)))
        else:
            other[kind or "?"] += 1
    return orders, fills, ends, dict(other)


def read_jsonl(path: Any) -> list[dict[str, Any]]:
    """The simulator's JSONL record. A torn last line (process killed mid-write) is skipped."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if n >= len(lines) - 2:
                continue  # torn tail
            raise
        if isinstance(obj, dict):
            rows.append(obj)
    return rows


def parse_journal(
    entries: Iterable[tuple[str, dict[str, str]]], units: dict[str, Units], *, epoch: int = 0
) -> tuple[list[Admission], list[Transition], list[Revocation]]:
    """The account's journal stream (``docs/keys.md``), oldest first; ``epoch`` is the
    history it was read from (0 = the oldest)."""
    admissions: list[Admission] = []
    transitions: list[Transition] = []
    revocations: list[Revocation] = []
    for n, (entry_id, f) in enumerate(entries):
        seq = epoch * SEQ_SPAN + n
        kind = f.get("ev") or f.get("type") or ""
        ts = _stream_ms(entry_id)
        if kind == "admit":
            sym = f["symbol"]
            u = units.get(sym)
            if u is None:
                raise ValueError(f"journal {entry_id}: admission in unconfigured symbol {sym}")
            admissions.append(
                Admission(
                    seq=seq,
                    coid=f["coid"],
                    token=_int(f["token"], f"journal {entry_id} token"),
                    symbol=sym,
                    side=Side(f["side"]),
                    qty=(Decimal(f["qty"]) if "qty" in f
                         else u.lot * _int(f["lots"], f"journal {entry_id} lots")),
                    price=(Decimal(f["price"]) if "price" in f
                           else u.tick * _int(f["ticks"], f"journal {entry_id} ticks")),
                    deadline_ms=_int(f["deadline_ms"], f"journal {entry_id} deadline_ms"),
                    ts_ms=ts,
                    epoch=epoch,
                    holder=f.get("holder", ""),
                )
            )
        elif kind == "trading_state":
            tok = f.get("revoked_token", "")
            if tok:
                at = _int(f["at_ms"], f"journal {entry_id} at_ms") if f.get("at_ms") else ts
                revocations.append(Revocation(
                    seq, _int(tok, f"journal {entry_id} revoked_token"), at, epoch))
        elif kind in ("transition", "fill"):
            # Applied state changes only: ``refused_*`` entries record what the ledger
            # script refused to do, which is the invariant working, not a move.
            transitions.append(Transition(seq, f["coid"], f["to"], ts, f.get("from", "")))
    return admissions, transitions, revocations


def read_archive_rows(path: Any) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The prune archive (docs/operations.md, Pruning), read raw: order records by client
    order id and fill id -> client order id of what the prune sweep removed from Redis.
    Missing file = nothing pruned; a torn last line (a crash mid-write) is skipped."""
    orders: dict[str, dict[str, str]] = {}
    fills: dict[str, str] = {}
    if path is None:
        return orders, fills
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return orders, fills
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) - 1:
                continue
            raise
        if row.get("kind") == "order":
            orders[str(row["coid"])] = {str(k): str(v) for k, v in row["order"].items()}
        elif row.get("kind") == "fill":
            fills[str(row["fill_id"])] = str(row["coid"])
    return orders, fills


def _ledger_order(coid: str, h: dict[str, str], units: dict[str, Units]) -> LedgerOrder:
    sym = h["symbol"]
    lot = units[sym].lot
    qty = Decimal(h["qty"]) if "qty" in h else lot * _int(h["lots"], f"order {coid} lots")
    filled = (lot * _int(h["filled_lots"], f"order {coid} filled_lots") if "filled_lots" in h
              else Decimal(h.get("filled", "0")))
    return LedgerOrder(coid, h["state"], sym, Side(h["side"]), qty, filled)


def read_ledger(
    client: Any, keys: AccountKeys, units: dict[str, Units], archive: Any = None
) -> LedgerView:
    """Positions, fills, orders, open set and reservations, read raw (docs/keys.md), with
    the orders and fills the prune sweep moved to ``archive`` (a path) merged back in."""
    positions: dict[str, Decimal] = {}
    for fld, val in (client.hgetall(keys.positions) or {}).items():
        if fld.endswith(":qty"):
            sym = fld[: -len(":qty")]
            positions[sym] = units[sym].lot * _int(val, f"{keys.positions} field {fld}")
    fills = dict(client.hgetall(keys.fills) or {})
    open_orders = frozenset(client.smembers(keys.open_orders) or ())
    orders: dict[str, LedgerOrder] = {}
    pattern = keys.order("*")
    for name in client.scan_iter(match=pattern, count=1000):
        h = client.hgetall(name)
        if not h or "state" not in h:
            continue
        coid = h.get("coid") or name.rsplit("order:", 1)[1]
        orders[coid] = _ledger_order(coid, h, units)
    archived_orders, archived_fills = read_archive_rows(archive)
    for coid, h in archived_orders.items():
        if coid not in orders and "state" in h:
            orders[coid] = _ledger_order(coid, h, units)
    for fid, coid in archived_fills.items():
        fills.setdefault(fid, coid)
    reserved: dict[str, Decimal] = {}
    for fld, val in (client.hgetall(keys.reservations) or {}).items():
        sym, _, part = fld.rpartition(":")
        if part in ("buy", "sell") and sym in units:
            reserved[fld] = units[sym].lot * _int(val, f"{keys.reservations} field {fld}")
        elif part == "loss":
            reserved[fld] = Decimal(_int(val, f"{keys.reservations} field {fld}"))
    return LedgerView(positions, fills, orders, open_orders, reserved)


def read_journal(client: Any, keys: AccountKeys) -> tuple[list[tuple[str, dict[str, str]]], int | None]:
    """The journal's entries, oldest first, and how many were ever appended (Redis >= 7;
    None before, or for an empty journal)."""
    entries: list[tuple[str, dict[str, str]]] = []
    start = "-"
    while True:
        page = client.xrange(keys.journal, min=start, max="+", count=2000)
        if not page:
            break
        entries.extend(page)
        last = page[-1][0]
        ms, _, n = last.partition("-")
        start = f"{ms}-{int(n) + 1}"
        if len(page) < 2000:
            break
    added: int | None = None
    if entries:
        info = client.xinfo_stream(keys.journal)
        raw_added = info.get("entries-added")  # Redis >= 7.0 only
        added = int(raw_added) if raw_added is not None else None
    return entries, added


def load(client: Any, keys: AccountKeys, risk: RiskConfig, record_path: Any,
         archive: Any = None, lost_histories: Iterable[Any] = ()) -> CheckInput:
    """Everything the checker needs, from a (sync, decode_responses) Redis client and the
    venue's JSONL record. ``risk`` is the run's own config: instrument units and limits.
    ``lost_histories``: clients of every history the account lost before the live one,
    oldest first (their journals count; the ledger compared with the venue is the live one);
    ``archive``: the prune sweep's archive (a path), merged into the ledger view."""
    units = {s: Units(i.tick, i.lot) for s, i in risk.instruments.items()}
    sec, usec = client.time()
    checked_at_ms = int(sec) * 1000 + int(usec) // 1000
    admissions: list[Admission] = []
    transitions: list[Transition] = []
    revocations: list[Revocation] = []
    histories: list[dict[str, Any]] = []
    total_entries = 0
    added_sum = 0
    known = False
    for epoch, c in enumerate([*lost_histories, client]):
        entries, h_added = read_journal(c, keys)
        a, t, r = parse_journal(entries, units, epoch=epoch)
        admissions += a
        transitions += t
        revocations += r
        histories.append({"epoch": c.get(keys.epoch) or "", "journal_entries": len(entries),
                          "admitted": len(a)})
        total_entries += len(entries)
        # Trimmed anywhere counts: entries ever appended beyond those read, over every
        # history (a history whose server cannot say counts what was read).
        if h_added is not None:
            known = True
        added_sum += h_added if h_added is not None else len(entries)
    added = added_sum if known else None
    entries_read = total_entries
    orders, fills, ends, other = parse_venue_rows(read_jsonl(record_path))
    stats = client.hgetall(keys.stats) or {}
    denied = {k.split(":", 1)[1]: _int(v, f"{keys.stats} field {k}")
              for k, v in stats.items() if k.startswith("denied:")}
    limits = Limits(
        max_position={s: i.max_position for s, i in risk.instruments.items()},
        daily_loss_limit=risk.daily_loss_limit,
        timezone=risk.timezone,
    )
    return CheckInput(
        admissions=admissions,
        transitions=transitions,
        venue_orders=orders,
        venue_fills=fills,
        limits=limits,
        ledger=read_ledger(client, keys, units, archive),
        venue_ends=ends,
        revocations=revocations,
        denied=denied,
        admitted_counter=(_int(stats["admitted"], f"{keys.stats} field admitted")
                          if "admitted" in stats else None),
        journal_entries=entries_read,
        journal_added=added,
        histories=histories,
        venue_other=other,
        checked_at_ms=checked_at_ms,
        aggregates=read_aggregates(client, keys, risk),
    )


def read_aggregates(client: Any, keys: AccountKeys, risk: RiskConfig) -> AggregateView:
    """The ``agg`` hash and the integers it summarises, raw (docs/keys.md)."""
    scale = Decimal(10) ** risk.quote_decimals
    return AggregateView(
        agg=dict(client.hgetall(keys.aggregates) or {}),
        positions={f: _int(v, f"{keys.positions} field {f}")
                   for f, v in (client.hgetall(keys.positions) or {}).items()
                   if not f.endswith(":rpnl")},
        reservations={f: _int(v, f"{keys.reservations} field {f}")
                      for f, v in (client.hgetall(keys.reservations) or {}).items()},
        marks={f: _int(v, f"{keys.marks} field {f}")
               for f, v in (client.hgetall(keys.marks) or {}).items()},
        k={s: int(i.tick * i.lot * scale) for s, i in risk.instruments.items()},
    )
