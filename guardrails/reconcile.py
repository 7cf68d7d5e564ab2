"""Reconciliation and the sweep: the ledger catches up with what the venue knows.

Invariants upheld: *terminal is terminal* and *fail closed*. On every takeover (and on
demand, ``guardrails reconcile``) each non-terminal order of the account is looked up
at the venue by client order id and settled through the ledger's one table
(``Ledger.settle``: its fills applied once per fill id, then its state finalised; this
module decides nothing about states itself). An order the venue has never seen is
EXPIRED only when the venue guarantees it can no longer arrive
(``can_still_arrive=False``); until then its reservation is held. If any lookup fails
the report is not ``ok`` and the caller must stay fail-closed (the runtime does not start strategies).

The sweep finds orders stranded in a non-terminal state (the venue already finished
them), open-index entries that disagree with the order records, and reservation totals
that disagree with the open orders; with ``fix=True`` it reconciles the stranded orders
and rebuilds the index and reservations atomically (``lua/ledger_rebuild.lua``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from guardrails import scripts
from guardrails.ledger import FillOutcome, Ledger, LedgerError, OrderRecord, settle_step
from guardrails.model import Fill, Side
from guardrails.venues.base import Venue, VenueError, VenueOrderStatus


@dataclass
class ReconcileReport:
    checked: int = 0
    fills_applied: int = 0
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    """(client order id, from state, to state) of every state the ledger changed."""
    held: list[str] = field(default_factory=list)
    """Orders the venue has not seen but that can still arrive: reservation kept."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(client order id, why): the venue could not be asked or disagrees with the ledger."""

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        return (
            f"checked={self.checked} fills_applied={self.fills_applied} "
            f"transitions={len(self.transitions)} held={len(self.held)} "
            f"failures={len(self.failures)}"
        )


async def _lookup(venue: Venue, order: OrderRecord) -> VenueOrderStatus:
    """Look the order up, telling the venue the order's submit deadline (a venue that
    never saw the order uses it to decide whether the order can still arrive)."""
    return await venue.lookup(order.client_order_id, deadline_ms=order.deadline_ms)


async def reconcile_order(
    ledger: Ledger, venue: Venue, order: OrderRecord, report: ReconcileReport
) -> None:
    """Bring one non-terminal order up to date with the venue's record of it."""
    coid = order.client_order_id
    report.checked += 1
    try:
        status = await _lookup(venue, order)
    except VenueError as e:
        report.failures.append((coid, f"venue lookup failed: {e}"))
        return
    # The ledger's one table decides what the venue's record does (fills first; a fill
    # the ledger does not take leaves the order as it is, keeping the account fail-closed).
    settled = await ledger.settle(coid, status, source="reconcile")
    report.fills_applied += settled.fills_applied
    if settled.problem:
        report.failures.append((coid, settled.problem))
    if settled.held:
        report.held.append(coid)
    if settled.from_state is not None and settled.to_state is not None:
        report.transitions.append((coid, settled.from_state.value, settled.to_state.value))


async def reconcile(ledger: Ledger, venue: Venue, *, now_ms: int) -> ReconcileReport:
    """Look up every non-terminal order at the venue; apply fills; finalise states.

    ``now_ms`` is recorded for the caller's logs; whether a never-seen order can still
    arrive is the venue's call (``VenueOrderStatus.can_still_arrive``)."""
    report = ReconcileReport()
    for order in await ledger.open_orders():
        await reconcile_order(ledger, venue, order, report)
    return report


@dataclass
class SweepReport:
    stranded: list[str] = field(default_factory=list)
    """Non-terminal in the ledger, finished (or never-arriving) at the venue."""
    missing_from_index: list[str] = field(default_factory=list)
    """Non-terminal order records not in the open-order set."""
    terminal_in_index: list[str] = field(default_factory=list)
    dangling_in_index: list[str] = field(default_factory=list)
    """Open-order set members without an order record."""
    reservation_mismatches: list[str] = field(default_factory=list)
    """``field: stored X, expected Y`` of the reservations hash."""
    fixed: bool = False
    reconcile: ReconcileReport | None = None

    @property
    def clean(self) -> bool:
        return not (
            self.stranded or self.missing_from_index or self.terminal_in_index
            or self.dangling_in_index or self.reservation_mismatches
        )


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _all_orders(ledger: Ledger) -> dict[str, OrderRecord]:
    pattern = ledger.keys.order("*")
    prefix = pattern[:-1]
    out: dict[str, OrderRecord] = {}
    async for key in ledger.redis.scan_iter(match=pattern, count=500):
        coid = _s(key)[len(prefix):]
        rec = await ledger.order(coid)
        if rec is not None:
            out[coid] = rec
    return out


async def _expected_reservations(ledger: Ledger, orders: dict[str, OrderRecord]) -> dict[str, int]:
    exp: dict[str, int] = {}
    for coid, rec in orders.items():
        if rec.state.terminal:
            continue
        key = ledger.keys.order(coid)
        raw = await ledger.redis.hmget(key, ["open_lots", "wl"])
        # lua/ledger_rebuild.lua reads these two as stored_nat: the same values fail here
        try:
            lots = scripts.stored_nat(raw[0], f"order {coid} ({key}) open_lots")
            wl = scripts.stored_nat(raw[1], f"order {coid} ({key}) wl")
        except ValueError as e:
            raise LedgerError(str(e)) from None
        sk, lk = f"{rec.symbol}:{rec.side.value}", f"{rec.symbol}:loss"
        exp[sk] = exp.get(sk, 0) + lots
        exp[lk] = exp.get(lk, 0) + lots * wl
    return exp


async def _inspect(ledger: Ledger, venue: Venue) -> tuple[SweepReport, dict[str, OrderRecord]]:
    report = SweepReport()
    orders = await _all_orders(ledger)
    index = {_s(m) for m in await ledger.redis.smembers(ledger.keys.open_orders)}
    for coid, rec in sorted(orders.items()):
        if not rec.state.terminal and coid not in index:
            report.missing_from_index.append(coid)
        if rec.state.terminal and coid in index:
            report.terminal_in_index.append(coid)
    report.dangling_in_index = sorted(index - set(orders))
    stored: dict[str, int] = {}
    malformed: set[str] = set()
    for k, v in (await ledger.redis.hgetall(ledger.keys.reservations)).items():
        try:  # the gate reads these as stored_int (lua/gate_admit.lua) and refuses a bad one
            stored[_s(k)] = scripts.stored_int(v, f"{ledger.keys.reservations} field {_s(k)}")
        except ValueError as e:
            # a mismatch, not a crash: --fix rebuilds the hash from the order records
            malformed.add(_s(k))
            report.reservation_mismatches.append(f"{_s(k)}: {e}")
    expected = await _expected_reservations(ledger, orders)
    for f in sorted((set(stored) | set(expected)) - malformed):
        if stored.get(f, 0) != expected.get(f, 0):
            report.reservation_mismatches.append(
                f"{f}: stored {stored.get(f, 0)}, expected {expected.get(f, 0)}"
            )
    for coid, rec in sorted(orders.items()):
        if rec.state.terminal:
            continue
        try:
            status = await _lookup(venue, rec)
        except VenueError:
            continue  # cannot tell; reconcile reports the failure
        # Stranded: the table would finish it (a terminal target), or the venue finished
        # it by filling it (the table's FILLED-but-not-in-the-ledger problem).
        step = settle_step(status, rec)
        if (step.target is not None and step.target.terminal) or step.problem:
            report.stranded.append(coid)
    return report, orders


async def _rebuild(ledger: Ledger) -> None:
    script = scripts.register(ledger.redis, "ledger_rebuild")
    k = ledger.keys
    for _ in range(20):
        orders = await _all_orders(ledger)
        index = sorted(_s(m) for m in await ledger.redis.smembers(k.open_orders))
        coids = sorted(set(orders) | set(index))
        raw = await script(
            keys=[k.open_orders, k.reservations, k.journal, k.aggregates,
                  *[k.order(c) for c in coids]],
            args=[len(index), *coids],
        )
        code = int(raw[0])
        if code == 0:
            return
        if code == 4:
            raise LedgerError(f"rebuild refused, nothing written: {_s(raw[1])}")
        if code != 1:
            raise LedgerError(f"ledger_rebuild returned unknown code {code}")
    raise RuntimeError("open orders kept changing; could not rebuild reservations")


async def sweep(ledger: Ledger, venue: Venue, *, fix: bool) -> SweepReport:
    """Report (and with ``fix`` repair) orders stranded in a non-terminal state, and
    index/reservation totals that disagree with the order records."""
    report, _orders = await _inspect(ledger, venue)
    if not fix or report.clean:
        return report
    rec_report = ReconcileReport()
    for coid in report.stranded + report.missing_from_index:
        rec = await ledger.order(coid)
        if rec is not None and not rec.state.terminal:
            await reconcile_order(ledger, venue, rec, rec_report)
    await _rebuild(ledger)
    report.fixed = True
    report.reconcile = rec_report
    return report


# -- after a lost history ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VenueOrderRow:
    """One order as the venue's own records show it (an export, a UI listing)."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal


def read_venue_orders(path: str) -> list[VenueOrderRow]:
    """Orders from a JSON-lines export: objects with ``coid`` (or ``client_order_id``),
    ``symbol``, ``side``, ``qty``, ``price``. Rows with a ``type`` other than ``order``,
    or a ``result`` other than ``accepted`` (the venue refused the order at the door:
    it never existed there), are skipped — so the simulators' records can be given as
    they are. Raises ``ValueError`` naming the line of a malformed row."""
    out: list[VenueOrderRow] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row.get("type", "order") != "order" or row.get("result", "accepted") != "accepted":
                    continue
                coid = str(row.get("coid") or row["client_order_id"])
                if coid in seen:
                    continue
                seen.add(coid)
                out.append(VenueOrderRow(coid, str(row["symbol"]), Side(str(row["side"])),
                                         Decimal(str(row["qty"])), Decimal(str(row["price"]))))
            except (ValueError, KeyError, TypeError, AttributeError, InvalidOperation) as e:
                raise ValueError(f"{path}:{n}: not an order row ({type(e).__name__}: {e})") from None
    return out


@dataclass
class AdoptReport:
    """What ``adopt_venue_history`` did: the venue's fills of the account read, orders
    the ledger had no record of given one, fills applied (the rest were known), and the
    reconciliation of the listed orders."""

    venue_fills: int = 0
    adopted_orders: int = 0
    fills_applied: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)
    """(fill id or client order id, why): the history does not add up."""
    reconciled: ReconcileReport = field(default_factory=ReconcileReport)

    @property
    def ok(self) -> bool:
        return not self.refused and self.reconciled.ok


async def adopt_venue_history(ledger: Ledger, venue: Venue,
                              orders: Sequence[VenueOrderRow] = ()) -> AdoptReport:
    """After the ledger's history was lost (``guardrails fence recover``): make the
    ledger know what the venue knows, through the ledger scripts.

    1. Every order in ``orders`` (the venue's own listing of the account's orders) that
       has no record gets an adopted SUBMITTED record for its quantity and price.
    2. Every fill the venue has for the account (``fills_since(None)`` to the end) is
       applied once per fill id, as the fills pump does; an order of a fill with no
       record (not listed) is adopted for the quantity filled.
    3. Every listed order still non-terminal in the ledger is reconciled with the venue
       (``reconcile_order``: its state there — resting, cancelled, expired, filled).

    Positions, realized PnL per trading day and the applied-fill set then match the
    venue; a listed order keeps its intent from being admitted again (the gate finds
    its record); a resting one keeps its reservation, and its later fills apply.

    It cannot tell a fill the lost history made from another writer's: every fill on the
    account is adopted. An unfilled order the listing leaves out stays unknown. Raises
    ``VenueError`` when the venue's fills cannot be read."""
    rep = AdoptReport()
    listed = {o.client_order_id: o for o in orders}
    for o in orders:
        try:
            if await ledger.order(o.client_order_id) is None and await ledger.adopt_order(
                    o.client_order_id, o.symbol, o.side, o.qty, o.price):
                rep.adopted_orders += 1
        except LedgerError as e:
            rep.refused.append((o.client_order_id, str(e)))
    fills: list[Fill] = []
    cursor: str | None = None
    while True:
        batch = await venue.fills_since(cursor)
        fills.extend(batch.fills)
        if not batch.fills or batch.cursor == cursor:
            break
        cursor = batch.cursor
    rep.venue_fills = len(fills)
    by_order: dict[str, list[Fill]] = {}
    for f in fills:
        by_order.setdefault(f.client_order_id, []).append(f)
    for coid, group in by_order.items():
        try:
            if await ledger.order(coid) is None and await ledger.adopt(group):
                rep.adopted_orders += 1
            for f in group:
                outcome = await ledger.apply_fill(f)
                if outcome is FillOutcome.APPLIED:
                    rep.fills_applied += 1
                elif outcome is not FillOutcome.DUPLICATE:
                    rep.refused.append((f.fill_id, f"{coid}: {outcome.value}"))
        except LedgerError as e:
            rep.refused.append((group[0].fill_id, f"{coid}: {e}"))
    for coid in listed:
        rec = await ledger.order(coid)
        if rec is not None and not rec.state.terminal:
            await reconcile_order(ledger, venue, rec, rep.reconciled)
    return rep
