"""The configuration reference (docs/config.md), generated from the pydantic models.

The models are the single source of truth for every field, its type, default and
one-line description; ``tests/test_docs.py`` fails when docs/config.md drifts from them.
Regenerate with ``python -m guardrails.configdoc > docs/config.md``.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from guardrails import config as c

_SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("[account]", c.AccountConfig, "The account identity: every Redis key derives from it."),
    ("[redis]", c.RedisConfig, "Where the shared state lives."),
    (
        "[lease]",
        c.LeaseConfig,
        "Timing of the fenced lease. Rule: ttl > renew_deadline > renew_interval, "
        "and drift_margin < ttl - renew_deadline.",
    ),
    (
        "[risk]",
        c.RiskConfig,
        "The account's one set of limits (stored in Redis; see `guardrails limits`).",
    ),
    (
        "[risk.instruments.SYMBOL]",
        c.InstrumentConfig,
        "One tradable symbol. tick x lot must be a whole number of money units "
        "(10^-quote_decimals).",
    ),
    (
        "[venue] kind = \"paper\"",
        c.PaperVenueConfig,
        "The paper venue: a simulated exchange whose state lives in Redis under venue:{name}:*.",
    ),
    (
        "[venue] kind = \"http\"",
        c.HttpVenueConfig,
        "An HTTP order book taking EIP-712 signed orders (or the bundled simulator).",
    ),
    (
        "[venue] kind = \"evm\"",
        c.EvmVenueConfig,
        "An EVM wallet: orders become signed transactions.",
    ),
    (
        "[venue] kind = \"ccxt\"",
        c.CcxtVenueConfig,
        "A real exchange through ccxt (credentials from env or a file), or the bundled "
        "Binance-protocol simulator (url = 'embedded').",
    ),
    (
        "[venue.orders.SYMBOL]",
        c.EvmOrderTemplate,
        "The transaction an EVM order for SYMBOL becomes.",
    ),
    (
        "[venue] kind = \"polymarket\"",
        c.PolymarketVenueConfig,
        "A Polymarket CLOB wallet through py-clob-client (or the bundled CLOB simulator): "
        "GTD orders expiring at the lease deadline plus the exchange's minimum window, "
        "heartbeats while active.",
    ),
    (
        "[[strategies]]",
        c.StrategyConfig,
        "One strategy instance; all strategies of a config share the account's lease and risk.",
    ),
    ("[runtime]", c.RuntimeConfig, "Per-process settings (not part of the account's limits)."),
    (
        "[prune]",
        c.PruneConfig,
        "Keeping Redis memory flat: terminal orders older than the retention window are "
        "archived to a file and removed by the active instance (docs/operations.md, Pruning).",
    ),
    (
        "[[notify]] kind = \"webhook\"",
        c.WebhookNotifyConfig,
        "Alerts as a JSON POST (docs/operations.md, \"Alerts\"). Delivery never blocks trading.",
    ),
    (
        "[[notify]] kind = \"telegram\"",
        c.TelegramNotifyConfig,
        "Alerts to a Telegram chat via the Bot API; the token comes from the environment.",
    ),
]

def _type_name(info: FieldInfo) -> str:
    meta = [type(m).__name__ for m in info.metadata]
    ann: Any = info.annotation
    bound = next((m for m in info.metadata if isinstance(m, c.DurationBound)), None)
    if bound is not None:
        return f"duration ≤ {c.Millis(bound.max_ms)}"
    window = next((m for m in info.metadata if isinstance(m, c.RetentionBound)), None)
    if window is not None:
        return f"duration {c.Millis(window.min_ms)}..{c.Millis(window.max_ms)}"
    if ann is int and any(m == "BeforeValidator" for m in meta):
        return "duration"
    if getattr(ann, "__name__", "") == "Decimal":
        return "decimal"
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_plain(a) for a in typing.get_args(ann))
    return _plain(ann)


def _plain(ann: Any) -> str:
    if ann is type(None):
        return "none"
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        base = typing.get_args(ann)[0]
        return "decimal" if getattr(base, "__name__", "") == "Decimal" else _plain(base)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if origin is not None:
        args = ", ".join(_plain(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return str(getattr(ann, "__name__", ann))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        made = info.default_factory()  # type: ignore[call-arg]
        if isinstance(made, list) and made and all(isinstance(x, str) for x in made):
            return "all of them"
        return "(empty)"
    value = info.default
    if value is None:
        return "none"
    return f"`{value}`"


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `guardrails/config.py` by",
        "`python -m guardrails.configdoc`; `tests/test_docs.py` keeps it true.",
        "",
        "A config is one TOML file. Unknown fields are refused; amounts are exact decimals",
        "(write them as strings, `\"0.01\"`; TOML floats are read as decimals, never as binary",
        "floats); durations are strings with a unit: `\"250ms\"`, `\"3s\"`, `\"2m\"`, `\"1h\"`",
        "(a bare number such as `ttl = 3000` is refused: write `\"3000ms\"` or `\"3s\"`), each at",
        "most the bound its type shows. Money limits must be below 2^53 money units",
        "(10^-quote_decimals) and `max_position` below 2^53 lots: the gate holds them exactly.",
        "An error names the file, the field path and the reason, and the command exits 2.",
        "",
        "`--redis-url` and then `$GUARDRAILS_REDIS_URL` override `[redis] url`.",
        "See `config/paper.toml` for a complete example.",
        "",
    ]
    for title, model, blurb in _SECTIONS:
        out += [f"## `{title}`", "", blurb, ""]
        out += ["| field | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            desc = (info.description or "").replace("|", "\\|")
            out.append(f"| `{name}` | {_type_name(info)} | {_default(info)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
