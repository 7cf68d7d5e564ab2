"""The simulated exchange counterparty: ``SimExchange``, one matching engine and record
behind every protocol front (``sim.server``: the EIP-712 HTTP API; ``sim.binance``;
``sim.clob``). It is not a venue adapter: adapters (``guardrails.venues``) talk to it over
real HTTP, so tests and the demo exercise the production code path. As an exchange it:

* recovers the signer of every order and cancel and refuses it unless it is the
  message's ``account`` (``bad_signature``);
* dedupes client order ids per account: a re-send returns the original outcome and
  never makes a second order;
* refuses an order arriving after its signed ``expiration`` (``expired``) — the
  venue-side fence that kills a paused instance's late order;
* matches against a simple book: marks follow the same seeded random walk as the paper
  venue (``market.walk_next``); an order that crosses the mark on arrival fills at the
  mark, a resting order fills at its limit price when a later mark crosses it; whole
  fills only, no fees;
* appends every order received (accepted, rejected with its reason, duplicate), cancel
  and fill to a JSONL record file, one JSON object per line (docs/venues.md).

State lives in the process's memory. Served plainly (``--record``), a restarted
simulator starts an empty book (its record file keeps growing). Served as the per-user
daemon (``sim.daemon``: ``url = "embedded"``), the record *is* its state: replayed at
start, fsynced before each answer.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from guardrails.config import (
    PaperVenueConfig,
    RiskConfig,
)
from guardrails.model import Fill, Order, Side
from guardrails.sim import market
from guardrails.venues.eip712 import (
    SignatureInvalid,
    order_from_message,
    recover,
    signable_cancel,
    signable_order,
)

log = logging.getLogger("guardrails.simulator")

DEFAULT_RISK = RiskConfig.model_validate(
    {
        "max_order_notional": "100000",
        "max_gross_exposure": "100000",
        "daily_loss_limit": "1000",
        "instruments": {
            "BTC-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "1"},
            "ETH-USD": {"tick": "0.01", "lot": "0.001", "max_position": "10"},
        },
    }
)
"""The market simulated when no config is given."""

DEFAULT_MARKET = PaperVenueConfig.model_validate(
    {"name": "sim", "start_prices": {"BTC-USD": "60000.00", "ETH-USD": "3000.00"}}
)


CHECKPOINT_MS = 2_000
"""With ``resume``: how often (at most) the marks are written to the record."""


class SimStateError(RuntimeError):
    """The simulator's record cannot be replayed (another market's, or corrupt)."""


CANCELED_BEFORE_ARRIVAL = "canceled_before_arrival"
"""Reason of an order refused because its cancel arrived first (a tombstone)."""


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SimOrder:
    account: str
    order: Order
    lots: int
    ticks: int
    arrival_ms: int
    venue_order_id: str
    state: str = "open"
    reason: str = ""
    fills: list[Fill] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        o = self.order
        return {
            "client_order_id": o.client_order_id,
            "venue_order_id": self.venue_order_id,
            "account": self.account,
            "symbol": o.symbol,
            "side": o.side.value,
            "qty": str(o.qty),
            "price": str(o.price),
            "token": o.token,
            "expiration": o.submit_deadline_ms,
            "arrival_ms": self.arrival_ms,
            "state": self.state,
            "reason": self.reason,
            "filled_qty": str(sum((f.qty for f in self.fills), Decimal(0))),
            "fills": [fill_json(f) for f in self.fills],
        }


def fill_json(f: Fill) -> dict[str, Any]:
    return {
        "fill_id": f.fill_id,
        "client_order_id": f.client_order_id,
        "symbol": f.symbol,
        "side": f.side.value,
        "qty": str(f.qty),
        "price": str(f.price),
        "ts_ms": f.ts_ms,
    }


class SimExchange:
    """The matching engine: one asyncio thread, so every method is atomic."""

    def __init__(
        self,
        market_cfg: PaperVenueConfig,
        risk: RiskConfig,
        *,
        chain_id: int = 1,
        record_path: Path | None = None,
        clock_ms: Callable[[], int] = _wall_ms,
        resume: bool = False,
        market_digest: str = "",
        fill_prefix: Callable[[str], str] | None = None,
    ) -> None:
        """``resume=True`` (the per-user daemon) makes the record the exchange's state: it
        is replayed at start (orders, tombstones, fills, balances, marks), each line is
        fsynced before the request is answered, and a ``genesis`` line binds the record
        to ``market_digest`` (a record of another market is refused, ``SimStateError``)."""
        self.chain_id = chain_id
        self.market_digest = market_digest
        self._fill_prefix = fill_prefix or (lambda _symbol: "sf")
        """Fill ids are ``<prefix(symbol)>-<seq>`` (a protocol may name them per symbol)."""
        self._cfg = market_cfg
        self._instruments = market.instruments_for(market_cfg, risk)
        self._clock_ms = clock_ms
        self._origin_ms = clock_ms()
        self._step = 0
        self._marks = {s: market.start_ticks(market_cfg, i) for s, i in self._instruments.items()}
        self._orders: dict[tuple[str, str], SimOrder] = {}
        self._tombstones: dict[tuple[str, str], int] = {}
        """Client order ids canceled before they arrived (arrival ms of the cancel)."""
        self._open: dict[tuple[str, str], SimOrder] = {}
        self._fills: list[tuple[int, str, Fill]] = []
        self._seq = 0
        self._balances: dict[tuple[str, str], int] = {}
        self._record_seq = 0
        self._record: IO[str] | None = None
        self._durable = resume
        self._checkpoint_ms = 0
        self.replayed = 0
        if resume:
            if record_path is None:
                raise ValueError("resume needs a record_path")
            self._resume(record_path, market_digest)
        if record_path is not None:
            record_path.parent.mkdir(parents=True, exist_ok=True)
            self._record = record_path.open("a", encoding="utf-8")
        if resume and self._record_seq == 0:
            self._write({"type": "genesis", "market_digest": market_digest,
                         "origin_ms": self._origin_ms, "chain_id": chain_id})

    def close(self) -> None:
        if self._record is not None:
            if self._durable:
                self._write_checkpoint()
            self._record.close()
            self._record = None

    # -- the record as the exchange's state (resume) ------------------------------------

    def _resume(self, path: Path, market_digest: str) -> None:
        """Rebuild the exchange from its record. A torn last line (killed mid-write) is cut
        off the file so that the next line starts clean; any other bad line is refused."""
        if not path.exists():
            return
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        good_len = 0
        rows: list[dict[str, Any]] = []
        for n, line in enumerate(lines):
            if not line.strip():
                good_len += len(line) + (1 if n < len(lines) - 1 else 0)
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if n == len(lines) - 1:
                    break  # torn tail: never completed, never answered
                raise SimStateError(f"{path}: line {n + 1} is not JSON") from None
            if not isinstance(row, dict):
                raise SimStateError(f"{path}: line {n + 1} is not a JSON object")
            rows.append(row)
            good_len += len(line) + 1
        if good_len < len(raw):
            with path.open("r+b") as f:
                f.truncate(good_len)
        if rows and rows[0].get("type") != "genesis":
            raise SimStateError(f"{path}: not a simulator daemon record (no genesis line)")
        for row in rows:
            self._replay(row, market_digest, path)
        self.replayed = len(rows)
        # The market stood still while the exchange was down: marks resume where the last
        # checkpoint left them, at the current step (no orders fill for the downtime).
        self._step = max(self._step, (self.now_ms() - self._origin_ms) // self._cfg.step)

    def _replay(self, row: Mapping[str, Any], market_digest: str, path: Path) -> None:
        kind = row.get("type")
        self._record_seq = max(self._record_seq, int(row.get("seq", 0)))
        if kind == "genesis":
            if row.get("market_digest") != market_digest:
                raise SimStateError(
                    f"{path} is the record of another market (digest "
                    f"{row.get('market_digest')}, wanted {market_digest}); move it away to "
                    "start a fresh exchange"
                )
            self._origin_ms = int(row["origin_ms"])
        elif kind == "clock":
            self._step = int(row["step"])
            for sym, ticks in dict(row["marks"]).items():
                if sym in self._marks:
                    self._marks[sym] = int(ticks)
        elif kind == "order" and row.get("venue_order_id"):
            self._replay_order(row)
        elif kind == "fill":
            self._replay_fill(row)
        elif kind == "cancel" and row.get("result") == "canceled":
            key = (str(row["account"]), str(row["coid"]))
            so = self._orders.get(key)
            if so is None:
                self._tombstones[key] = int(row["arrival_ms"])
            else:
                so.state, so.reason = "canceled", "canceled"
                self._open.pop(key, None)

    def _bump_seq(self, ident: str) -> None:
        _, _, n = ident.rpartition("-")
        if n.isdigit():
            self._seq = max(self._seq, int(n))

    def _replay_order(self, row: Mapping[str, Any]) -> None:
        result = row.get("result")
        if result not in ("accepted", "rejected"):
            return  # a duplicate changed nothing
        account, venue_order_id = str(row["account"]), str(row["venue_order_id"])
        order = Order(
            client_order_id=str(row["coid"]), symbol=str(row["symbol"]),
            side=Side(str(row["side"])), qty=Decimal(str(row["qty"])),
            price=Decimal(str(row["price"])), token=int(row["token"]),
            submit_deadline_ms=int(row["deadline_ms"]),
        )
        self._bump_seq(venue_order_id)
        key = (account, order.client_order_id)
        if result == "rejected":
            self._orders[key] = SimOrder(account, order, 0, 0, int(row["arrival_ms"]),
                                         venue_order_id, "rejected", str(row.get("reason", "")))
            return
        inst = self._instruments[order.symbol]
        lots, ticks = inst.lots(order.qty), inst.ticks(order.price)
        if lots is None or ticks is None:
            raise SimStateError(f"record: accepted order {order.client_order_id} is off lot/tick")
        so = SimOrder(account, order, lots, ticks, int(row["arrival_ms"]), venue_order_id)
        self._orders[key] = so
        self._open[key] = so

    def _replay_fill(self, row: Mapping[str, Any]) -> None:
        account = str(row["account"])
        key = (account, str(row["coid"]))
        so = self._orders.get(key)
        if so is None:
            raise SimStateError(f"record: fill {row.get('fill_id')} of an unknown order {key}")
        fill = Fill(
            fill_id=str(row["fill_id"]), client_order_id=str(row["coid"]),
            symbol=str(row["symbol"]), side=Side(str(row["side"])),
            qty=Decimal(str(row["qty"])), price=Decimal(str(row["price"])),
            ts_ms=int(row["ts_ms"]),
        )
        self._bump_seq(fill.fill_id)
        inst = self._instruments[fill.symbol]
        ticks = inst.ticks(fill.price)
        if ticks is None:
            raise SimStateError(f"record: fill {fill.fill_id} price is off tick")
        self._book_fill(so, fill, ticks)

    def _write_checkpoint(self) -> None:
        self._checkpoint_ms = self.now_ms()
        self._write({"type": "clock", "step": self._step, "marks": dict(self._marks)})

    def now_ms(self) -> int:
        return self._clock_ms()

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self._seq}"

    def _write(self, entry: dict[str, Any]) -> None:
        self._record_seq += 1
        if self._record is not None:
            line = {"seq": self._record_seq, **entry}
            self._record.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._record.flush()
            if self._durable:
                # The record is the exchange's state: on disk before anyone is answered.
                os.fsync(self._record.fileno())

    # -- clock and matching -------------------------------------------------------------

    def advance(self) -> None:
        """Move the marks to the wall clock's step, filling crossed resting orders."""
        step = (self.now_ms() - self._origin_ms) // self._cfg.step
        if step <= self._step:
            return
        for sym in self._marks:
            self._marks[sym] = market.walk(
                self._marks[sym], self._step, step, seed=self._cfg.seed, symbol=sym,
                volatility=self._cfg.volatility,
            )
        self._step = step
        self._match()
        if self._durable and self.now_ms() - self._checkpoint_ms >= CHECKPOINT_MS:
            self._write_checkpoint()

    def set_mark(self, symbol: str, price: Decimal) -> None:
        """Test hook: put the mark of ``symbol`` at ``price`` now, and match."""
        inst = self._instruments[symbol]
        ticks = inst.ticks(price)
        if ticks is None:
            raise ValueError(f"{price} is not on {symbol}'s tick {inst.tick}")
        self._marks[symbol] = ticks
        self._match()

    def _crossed(self, side: Side, limit_ticks: int, mark_ticks: int) -> bool:
        return mark_ticks <= limit_ticks if side is Side.BUY else mark_ticks >= limit_ticks

    def _match(self) -> None:
        for so in list(self._open.values()):
            o = so.order
            if self._crossed(o.side, so.ticks, self._marks[o.symbol]):
                self._fill(so, so.ticks, "maker")

    def _fill(self, so: SimOrder, ticks: int, liquidity: str) -> None:
        o = so.order
        inst = self._instruments[o.symbol]
        now = self.now_ms()
        fill = Fill(
            fill_id=self._next_id(self._fill_prefix(o.symbol)),
            client_order_id=o.client_order_id,
            symbol=o.symbol,
            side=o.side,
            qty=o.qty,
            price=inst.price(ticks),
            ts_ms=now,
        )
        self._book_fill(so, fill, ticks)
        self._write(
            {
                "type": "fill", **fill_json(fill), "coid": o.client_order_id,
                "account": so.account, "venue_order_id": so.venue_order_id,
                "liquidity": liquidity,
            }
        )

    def _book_fill(self, so: SimOrder, fill: Fill, ticks: int) -> None:
        o = so.order
        inst = self._instruments[o.symbol]
        pos = (so.account, o.symbol)
        cash = (so.account, "cash")
        self._balances[pos] = self._balances.get(pos, 0) + o.side.sign * so.lots
        self._balances[cash] = self._balances.get(cash, 0) - o.side.sign * so.lots * ticks * inst.k
        so.fills.append(fill)
        so.state = "filled"
        self._open.pop((so.account, o.client_order_id), None)
        self._fills.append((len(self._fills) + 1, so.account, fill))

    # -- requests -----------------------------------------------------------------------

    def submit(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """One signed order arrives. Returns (HTTP status, JSON body)."""
        self.advance()
        now = self.now_ms()
        msg = body.get("order")
        signature = body.get("signature")
        if not isinstance(msg, dict) or not isinstance(signature, str):
            return self._reject_unparsed(now, "bad_request: expected {order, signature}", 400)
        try:
            order = order_from_message(msg)
            claimed = str(msg["account"]).lower()
            signer = recover(signable_order(msg, self.chain_id), signature)
        except (ValueError, SignatureInvalid) as e:
            return self._reject_unparsed(now, f"bad_request: {e}", 400, msg)
        except Exception as e:  # eth-abi raises many types for values off their type
            return self._reject_unparsed(now, f"bad_request: {type(e).__name__}", 400, msg)
        if signer != claimed:
            return self._reject(order, claimed, now, "bad_signature", 401, stored=False)
        return self.place(order, claimed, now)

    def place(self, order: Order, claimed: str, now: int) -> tuple[int, dict[str, Any]]:
        """The matching engine's half of a submit, whatever protocol carried it: the order
        of ``claimed`` (an authenticated account) arrives at ``now``. Dedupes the client
        order id, refuses a tombstoned id, an order past its ``submit_deadline_ms`` or a
        malformed one, else books it and fills it at once if it crosses the mark."""
        key = (claimed, order.client_order_id)
        if key in self._tombstones:
            # Its cancel came first: the order is refused, so a cancel is never overtaken.
            self._write(self._order_entry(order, claimed, now, "rejected", CANCELED_BEFORE_ARRIVAL,
                                          ""))
            return 422, {"status": "rejected", "reason": CANCELED_BEFORE_ARRIVAL,
                         "client_order_id": order.client_order_id}
        original = self._orders.get(key)
        if original is not None:
            self._write(self._order_entry(order, claimed, now, "duplicate", original.state,
                                          original.venue_order_id))
            out = original.status()
            out["status"] = "rejected" if original.state == "rejected" else "accepted"
            out["duplicate"] = True
            return (422 if original.state == "rejected" else 200), out
        if now > order.submit_deadline_ms:
            return self._reject(order, claimed, now, "expired", 422)
        invalid = market.validate_order(order, self._instruments)
        if invalid:
            return self._reject(order, claimed, now, invalid, 422)
        inst = self._instruments[order.symbol]
        lots, ticks = inst.lots(order.qty), inst.ticks(order.price)
        assert lots is not None and ticks is not None  # validate_order checked both
        so = SimOrder(claimed, order, lots, ticks, now, self._next_id("so"))
        self._orders[key] = so
        self._write(self._order_entry(order, claimed, now, "accepted", "", so.venue_order_id))
        mark = self._marks[order.symbol]
        if self._crossed(order.side, ticks, mark):
            self._fill(so, mark, "taker")
        else:
            self._open[key] = so
        out = so.status()
        out["status"] = "accepted"
        out["duplicate"] = False
        return 200, out

    def _order_entry(self, order: Order, account: str, now: int, result: str, reason: str,
                     venue_order_id: str) -> dict[str, Any]:
        return {
            "type": "order", "coid": order.client_order_id, "account": account,
            "symbol": order.symbol, "side": order.side.value, "qty": str(order.qty),
            "price": str(order.price), "token": order.token,
            "deadline_ms": order.submit_deadline_ms, "arrival_ms": now, "result": result,
            "reason": reason, "venue_order_id": venue_order_id,
        }

    def refuse(self, order: Order, account: str, reason: str, **extra: Any) -> None:
        """Record an order refused at the door (nothing stored: a later send of the same id
        is decided afresh), with protocol-specific ``extra`` fields in its record row."""
        self.advance()
        entry = self._order_entry(order, account, self.now_ms(), "rejected", reason, "")
        self._write({**entry, **extra})

    def refuse_request(self, coid: str, account: str, reason: str) -> None:
        """Record an order request refused before it could even be read as an order."""
        self.advance()
        self._reject_unparsed(self.now_ms(), reason, 400,
                              {"clientOrderId": coid, "account": account})

    def _reject(self, order: Order, account: str, now: int, reason: str, status: int, *,
                stored: bool = True) -> tuple[int, dict[str, Any]]:
        venue_order_id = ""
        if stored:
            # A decided client order id stays decided: a re-send gets this rejection again.
            so = SimOrder(account, order, 0, 0, now, self._next_id("so"), "rejected", reason)
            self._orders[(account, order.client_order_id)] = so
            venue_order_id = so.venue_order_id
        self._write(self._order_entry(order, account, now, "rejected", reason, venue_order_id))
        return status, {"status": "rejected", "reason": reason,
                        "client_order_id": order.client_order_id}

    def _reject_unparsed(self, now: int, reason: str, status: int,
                         msg: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        msg = msg or {}
        self._write({"type": "order", "coid": str(msg.get("clientOrderId", "")),
                     "account": str(msg.get("account", "")).lower(), "arrival_ms": now,
                     "result": "rejected", "reason": reason})
        return status, {"status": "rejected", "reason": reason}

    def cancel(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        self.advance()
        now = self.now_ms()
        msg = body.get("cancel")
        signature = body.get("signature")
        try:
            if not isinstance(msg, dict) or not isinstance(signature, str):
                raise ValueError("expected {cancel, signature}")
            coid = str(msg["clientOrderId"])
            claimed = str(msg["account"]).lower()
            signer = recover(signable_cancel(msg, self.chain_id), signature)
        except Exception as e:
            return 400, {"status": "rejected", "reason": f"bad_request: {type(e).__name__}"}
        if signer != claimed:
            return 401, {"status": "rejected", "reason": "bad_signature"}
        return self.cancel_order(claimed, coid, now)

    def cancel_order(self, claimed: str, coid: str, now: int) -> tuple[int, dict[str, Any]]:
        """The engine's half of a cancel by an authenticated account: cancel a resting
        order, answer ``final`` for a decided one, tombstone an id not seen yet."""
        so = self._orders.get((claimed, coid))
        entry: dict[str, Any] = {"type": "cancel", "coid": coid, "account": claimed,
                                 "arrival_ms": now}
        if so is None:
            if (claimed, coid) in self._tombstones:
                self._write({**entry, "result": "final", "state": "canceled"})
                return 200, {"status": "final", **self._tombstone_status(claimed, coid)}
            # Not seen yet: a tombstone, so the order is refused if it still arrives.
            self._tombstones[(claimed, coid)] = now
            self._write({**entry, "result": "canceled", "state": "canceled",
                         "reason": CANCELED_BEFORE_ARRIVAL})
            return 200, {"status": "canceled", **self._tombstone_status(claimed, coid)}
        if so.state != "open":
            self._write({**entry, "result": "final", "state": so.state})
            return 200, {"status": "final", **so.status()}
        so.state = "canceled"
        so.reason = "canceled"
        self._open.pop((claimed, coid), None)
        self._write({**entry, "result": "canceled", "state": "canceled"})
        return 200, {"status": "canceled", **so.status()}

    def _tombstone_status(self, account: str, coid: str) -> dict[str, Any]:
        return {
            "client_order_id": coid, "venue_order_id": "", "account": account,
            "arrival_ms": self._tombstones[(account, coid)], "state": "canceled",
            "reason": CANCELED_BEFORE_ARRIVAL, "filled_qty": "0", "fills": [],
        }

    # -- read access for protocol front ends (guardrails.sim) ---------------------------

    @property
    def instruments(self) -> Mapping[str, market.Instrument]:
        return self._instruments

    def order(self, account: str, coid: str) -> SimOrder | None:
        self.advance()
        return self._orders.get((account, coid))

    def orders_of(self, account: str) -> list[SimOrder]:
        """Every order of ``account`` the engine holds, oldest first."""
        self.advance()
        return [so for (acct, _), so in self._orders.items() if acct == account]

    def fills_of(self, account: str) -> list[tuple[SimOrder, Fill]]:
        """Every fill of ``account`` with its order, oldest first."""
        self.advance()
        return [(self._orders[(acct, f.client_order_id)], f)
                for _, acct, f in self._fills if acct == account]

    def mark(self, symbol: str) -> Decimal:
        self.advance()
        return self._instruments[symbol].price(self._marks[symbol])

    def lookup(self, account: str, coid: str) -> tuple[int, dict[str, Any]]:
        self.advance()
        so = self._orders.get((account.lower(), coid))
        if so is None and (account.lower(), coid) in self._tombstones:
            return 200, self._tombstone_status(account.lower(), coid)
        if so is None:
            return 404, {"state": "not_found", "client_order_id": coid, "now_ms": self.now_ms()}
        return 200, so.status()

    def fills_after(self, account: str, after: int) -> dict[str, Any]:
        self.advance()
        account = account.lower()
        fills = [fill_json(f) for seq, acct, f in self._fills[after:] if acct == account]
        return {"fills": fills, "cursor": str(len(self._fills))}

    def marks(self, symbols: Sequence[str]) -> dict[str, Any]:
        self.advance()
        return {
            "marks": {
                s: str(self._instruments[s].price(self._marks[s]))
                for s in symbols if s in self._marks
            },
            "step": self._step,
        }

    def info(self) -> dict[str, Any]:
        """Who is serving, and how much state it holds (health checks, ``venue status``)."""
        return {
            "pid": os.getpid(), "chain_id": self.chain_id, "market_digest": self.market_digest,
            "now_ms": self.now_ms(), "step": self._step, "orders": len(self._orders),
            "open_orders": len(self._open), "tombstones": len(self._tombstones),
            "fills": len(self._fills), "replayed": self.replayed,
        }

    def balances(self, account: str) -> dict[str, Any]:
        self.advance()
        account = account.lower()
        out: dict[str, str] = {}
        unit = next(iter(self._instruments.values()))
        for (acct, name), units in self._balances.items():
            if acct != account:
                continue
            if name == "cash":
                out["cash"] = str(unit.money(units))
            elif name in self._instruments:
                out[name] = str(self._instruments[name].qty(units))
        return {"balances": out}


def read_record(path: Path) -> list[dict[str, Any]]:
    """The simulator's JSONL record, oldest first (fields: docs/venues.md)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
