"""guardrails — a safety harness for trading bots.

One writer per account (a fenced Redis lease), risk shared in Redis and checked in one
atomic step, idempotent side effects, terminal order states, and fail-closed defaults.
See DESIGN.md's five invariants in README.md and docs/.

The public API is importable from here: ``Guard`` (put a bot under the harness,
``docs/embedding.md``), the strategy API (``Context``, ``Strategy``, ``param_*``,
``docs/strategies.md``) and the value types an order needs (``Intent``, ``Side``, the
gate's ``Admitted``/``Denied``/``DenyReason``). They are loaded on first use, so that
``import guardrails.keys`` (the CLI's operator commands, the chaos checker, which must
import no module it checks) does not pull in the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "Guard": "guardrails.runtime.guard",
    "GuardError": "guardrails.runtime.guard",
    "GuardStopped": "guardrails.runtime.guard",
    "TermEnded": "guardrails.runtime.guard",
    "Context": "guardrails.runtime.context",
    "ContextUnavailable": "guardrails.runtime.context",
    "Strategy": "guardrails.runtime.context",
    "param_choice": "guardrails.runtime.strategy_loader",
    "param_decimal": "guardrails.runtime.strategy_loader",
    "param_duration_s": "guardrails.runtime.strategy_loader",
    "Intent": "guardrails.model",
    "Side": "guardrails.model",
    "Admitted": "guardrails.model",
    "Denied": "guardrails.model",
    "DenyReason": "guardrails.model",
}

__all__ = [
    "Admitted", "Context", "ContextUnavailable", "Denied", "DenyReason", "Guard", "GuardError",
    "GuardStopped", "Intent", "Side", "Strategy", "TermEnded", "__version__", "param_choice",
    "param_decimal", "param_duration_s",
]

if TYPE_CHECKING:
    from guardrails.model import Admitted, Denied, DenyReason, Intent, Side
    from guardrails.runtime.context import Context, ContextUnavailable, Strategy
    from guardrails.runtime.guard import Guard, GuardError, GuardStopped, TermEnded
    from guardrails.runtime.strategy_loader import param_choice, param_decimal, param_duration_s


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'guardrails' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
