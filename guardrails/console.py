"""The console for people: what `guardrails run` prints on a terminal.

The machine formats (``kv``, ``json``) print every event as it happens; this one prints
what a person watching needs, rendered with ``rich``:

- **one line per order**, printed once when its lifecycle ends (admitted → sent →
  filled / canceled / rejected folded together), or once as *resting* when it has been
  open for ``resting_after_s`` (its end then prints as a short follow-up line);
- **lease events and denials highlighted**; repeated identical denials (same strategy and
  reason) collapsed: the first prints, the rest are counted and summarised once per
  ``collapse_s`` ("halted ×153 in the last 60 s");
- **a one-line summary** on every ``positions`` report: token, role, positions, the loss
  budget used, orders per minute;
- warnings and errors as one line each, in colour, with the event's fields.

Nothing here is a record: the key=value lines are (``--log-format kv``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from rich.console import Console
from rich.text import Text

from guardrails import redacted

_TERMINAL = {"order.canceled": "canceled", "order.rejected": "rejected", "order.not_sent": "not sent",
             "order.cancel_too_late": "filled before cancel"}
_LEASE_STYLE = {"lease.acquired": "bold green", "lease.released": "cyan", "lease.lost": "bold red",
                "lease.standby": "cyan", "runtime.active": "bold green", "runtime.standby": "cyan",
                "kill.state": "bold magenta", "kill.halted": "bold red", "lease.renewed_late": "yellow"}


@dataclass
class _Order:
    strategy: str
    side: str
    qty: str
    symbol: str
    price: str
    started: float
    steps: list[str] = field(default_factory=lambda: ["admitted"])
    filled: Decimal = Decimal(0)
    shown_resting: bool = False


@dataclass
class _Denials:
    first: float
    count: int = 0


def _s(v: object) -> str:
    if isinstance(v, Decimal):
        return format(v, "f")
    return "" if v is None else str(v)


class ConsoleHandler(logging.Handler):
    """A logging handler that renders guardrails' events for a person (see module doc)."""

    def __init__(self, console: Console | None = None, *, resting_after_s: float = 5.0,
                 collapse_s: float = 60.0) -> None:
        super().__init__()
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.resting_after_s = resting_after_s
        self.collapse_s = collapse_s
        self._now = time.monotonic
        self._orders: dict[str, _Order] = {}
        self._denials: dict[tuple[str, str], _Denials] = {}
        self._admits: deque[float] = deque()
        self._role = "starting"
        self._token = "-"

    # -- logging.Handler ---------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            name = getattr(record, "gr_event", None)
            fields = getattr(record, "gr_fields", None)
            if isinstance(name, str) and isinstance(fields, Mapping):
                masked = {k: redacted.mask_value(v) for k, v in fields.items()}
                self._event(record, name, masked)
            else:
                self._plain(record)
            self._flush_due()
        except Exception:  # logging must never take the process down (logging's own rule)
            self.handleError(record)

    # -- rendering ---------------------------------------------------------------------

    def _ts(self, record: logging.LogRecord) -> str:
        return time.strftime("%H:%M:%S", time.localtime(record.created))

    def _print(self, record: logging.LogRecord, text: Text) -> None:
        line = Text(self._ts(record) + " ", style="dim")
        line.append_text(text)
        self.console.print(line)

    def _plain(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.INFO:
            return
        style = ("red" if record.levelno >= logging.ERROR
                 else "yellow" if record.levelno >= logging.WARNING else "")
        self._print(record, Text(redacted.mask_text(record.getMessage()), style=style))

    def _kv(self, fields: Mapping[str, object], skip: tuple[str, ...] = ()) -> str:
        return " ".join(f"{k}={_s(v)}" for k, v in fields.items() if v is not None and k not in skip)

    def _event(self, record: logging.LogRecord, name: str, f: Mapping[str, object]) -> None:
        coid = _s(f.get("client_order_id"))
        if name == "order.admitted":
            self._admits.append(self._now())
            if coid and coid not in self._orders:
                self._orders[coid] = _Order(_s(f.get("strategy")), _s(f.get("side")).upper(),
                                            _s(f.get("qty")), _s(f.get("symbol")), _s(f.get("price")),
                                            self._now())
            return
        if name == "order.submitted" and coid in self._orders:
            self._orders[coid].steps.append("sent")
            return
        if name == "fill" and coid in self._orders:
            o = self._orders[coid]
            o.steps.append(f"filled {_s(f.get('qty'))}@{_s(f.get('price'))}")
            try:
                o.filled += Decimal(_s(f.get("qty")))
            except ArithmeticError:
                pass
            if o.filled >= Decimal(o.qty or "0") > 0:
                self._finish(record, coid)
            return
        if name in _TERMINAL and coid in self._orders:
            self._orders[coid].steps.append(_TERMINAL[name])
            self._finish(record, coid)
            return
        if name == "order.denied":
            self._denied(record, f)
            return
        if name == "positions":
            self._summary(record, f)
            return
        if name in ("runtime.active", "lease.acquired"):
            self._role, self._token = "active", _s(f.get("token")) or self._token
        elif name in ("runtime.standby", "lease.standby", "lease.lost", "lease.released"):
            self._role = "standby"
        style = _LEASE_STYLE.get(name)
        if style is None:
            if record.levelno < logging.WARNING:
                return  # routine events are for the machine formats
            style = "red" if record.levelno >= logging.ERROR else "yellow"
        self._print(record, Text(f"{name} ", style=style) + Text(self._kv(f)))

    def _finish(self, record: logging.LogRecord, coid: str) -> None:
        o = self._orders.pop(coid)
        if o.shown_resting:
            self._print(record, Text(f"  ↳ {o.strategy} {o.side} {o.qty} {o.symbol} {coid[-8:]}: "
                                     f"{o.steps[-1]}", style="dim"))
            return
        self._print(record, self._order_text(o, coid))

    def _order_text(self, o: _Order, coid: str) -> Text:
        colour = "green" if o.side == "BUY" else "red"
        t = Text(f"{o.strategy:<14} ", style="bold")
        t.append(f"{o.side:<4} ", style=colour)
        t.append(f"{o.qty} {o.symbol} @ {o.price}  ")
        t.append(" → ".join(o.steps), style="cyan")
        t.append(f"  {coid[-8:]}", style="dim")
        return t

    def _denied(self, record: logging.LogRecord, f: Mapping[str, object]) -> None:
        key = (_s(f.get("strategy")), _s(f.get("reason")))
        d = self._denials.get(key)
        if d is None:
            self._denials[key] = _Denials(self._now())
            t = Text(f"{key[0]:<14} ", style="bold")
            t.append(f"denied {key[1]}", style="bold yellow")
            t.append(f"  {_s(f.get('side')).upper()} {_s(f.get('qty'))} {_s(f.get('symbol'))} @ "
                     f"{_s(f.get('price'))}  {_s(f.get('detail'))}", style="dim")
            self._print(record, t)
        else:
            d.count += 1

    def _summary(self, record: logging.LogRecord, f: Mapping[str, object]) -> None:
        now = self._now()
        while self._admits and now - self._admits[0] > 60:
            self._admits.popleft()
        used, limit = f.get("budget_used"), f.get("budget_limit")
        budget = f"{_s(used)}/{_s(limit)}" if used is not None and limit is not None else "n/a"
        if isinstance(used, Decimal) and isinstance(limit, Decimal) and limit > 0:
            budget += f" ({(used * 100 / limit).quantize(Decimal(1))} %)"
        t = Text("── ", style="dim")
        t.append(f"token {_s(f.get('token')) or self._token} · {self._role} · ", style="bold")
        t.append(f"positions {_s(f.get('positions'))} · loss budget {budget} · "
                 f"{len(self._admits)} orders/min")
        self._print(record, t)

    def _flush_due(self) -> None:
        now = self._now()
        for key, d in list(self._denials.items()):
            if now - d.first >= self.collapse_s:
                del self._denials[key]
                if d.count:
                    self.console.print(Text(f"{time.strftime('%H:%M:%S')} {key[0]:<14} denied {key[1]} "
                                            f"×{d.count} in the last {int(self.collapse_s)} s",
                                            style="yellow"))
        for coid, o in self._orders.items():
            if not o.shown_resting and now - o.started >= self.resting_after_s:
                o.shown_resting = True
                o.steps.append("resting")
                stamp = Text(time.strftime("%H:%M:%S") + " ", style="dim")
                self.console.print(stamp + self._order_text(o, coid))
