"""The account every benchmark uses: its config, and seeding a lease for the gate benches.

Limits are generous on purpose — the gate benchmarks measure the cost of an *admitted*
decision (every check runs, the reservation and the order record are written), not of
an early denial — and the throttle is wide open so it never denies.
"""

from __future__ import annotations

import importlib.util
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

from guardrails.config import RiskConfig, parse_config
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import Intent, Side

SYMBOL = "BTC-USD"
MARK = Decimal("60000.00")
HOLDER = "bench-holder"

RISK: dict[str, Any] = {
    "quote_decimals": 6,
    "timezone": "UTC",
    "max_order_notional": "1000000000",
    "max_gross_exposure": "1000000000",
    "daily_loss_limit": "1000000000",
    "price_band": "0.05",
    "orders_per_second": "1000000000",
    "burst": 1_000_000_000,
    "instruments": {SYMBOL: {"tick": "0.01", "lot": "0.0001", "max_position": "100000000"}},
}


def risk_config() -> RiskConfig:
    return RiskConfig.model_validate(RISK)


def account(name: str = "bench") -> AccountId:
    return AccountId("paper", name)


def available(module: str) -> str | None:
    """None if ``module`` can be imported, else why not (for a NOT MEASURED row)."""
    try:
        if importlib.util.find_spec(module) is None:
            return f"{module} has not landed"
    except ImportError as e:
        return f"{module} cannot be found: {e}"
    try:
        importlib.import_module(module)
    except Exception as e:
        return f"{module} does not import: {type(e).__name__}: {e}"
    return None


def intents() -> itertools.count[int]:
    return itertools.count()


def intent(i: int) -> Intent:
    """The i-th distinct intent: alternating sides, so positions stay bounded."""
    side = Side.BUY if i % 2 == 0 else Side.SELL
    return Intent(SYMBOL, side, Decimal("0.0100"), MARK, intent_id=f"bench-{i}")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(x)}' for k, x in v.items()) + " }"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_run_config(
    path: Path,
    *,
    redis_url: str,
    acct: AccountId,
    ttl: str | None = "1s",
    renew_deadline: str = "700ms",
    renew_interval: str = "250ms",
    strategies: list[dict[str, Any]] | None = None,
) -> Path:
    """A config for ``guardrails run`` on the paper venue. Validated before it is written.

    ``ttl=None`` leaves the ``[lease]`` section out: the project's default timings."""
    lines = [
        "[account]",
        f'venue = "{acct.venue}"',
        f'id = "{acct.account}"',
        "",
        "[redis]",
        f'url = "{redis_url}"',
        "allow_non_durable = true",  # the bench's redis-server runs without AOF
        "",
    ]
    if ttl is not None:
        lines += [
            "[lease]",
            f'ttl = "{ttl}"',
            f'renew_deadline = "{renew_deadline}"',
            f'renew_interval = "{renew_interval}"',
            "",
        ]
    lines += ["[risk]"]
    for k, v in RISK.items():
        if k != "instruments":
            lines.append(f"{k} = {_toml_value(v)}")
    for sym, inst in RISK["instruments"].items():
        lines += ["", f'[risk.instruments."{sym}"]']
        lines += [f"{k} = {_toml_value(v)}" for k, v in inst.items()]
    lines += [
        "",
        "[venue]",
        'kind = "paper"',
        f'name = "bench-{acct.account}"',
        "seed = 7",
        'step = "250ms"',
        'volatility = "0.0008"',
        f'start_prices = {{ "{SYMBOL}" = "{MARK}" }}',
    ]
    for s in strategies or []:
        lines += ["", "[[strategies]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in s.items()]
    text = "\n".join(lines) + "\n"
    import tomllib

    parse_config(tomllib.loads(text, parse_float=Decimal), str(path))
    path.write_text(text)
    return path


__all__ = ["HOLDER", "MARK", "SYMBOL", "AccountKeys", "account", "risk_config"]
