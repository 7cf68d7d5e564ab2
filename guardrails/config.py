"""Configuration: TOML validated once, at load, by frozen pydantic models.

Unknown fields are refused, durations and money amounts are typed (TOML floats are
read as ``Decimal`` so no amount ever passes through a binary float), and cross-field
rules — above all ``ttl > renew_deadline > renew_interval`` — are enforced here, so a
bad setting stops the process before it can hold a lease. ``ConfigError`` names the
file, the field path and the reason; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from guardrails.keys import AccountId, InvalidAccountId

REDIS_URL_ENV = "GUARDRAILS_REDIS_URL"
EMBEDDED = "embedded"


class ConfigError(Exception):
    """A configuration that cannot be used. ``str()`` is the message for the operator."""


# -- typed scalars ------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}


class Millis(int):
    """An int that is already milliseconds: a default written with ``ms("3s")`` is not
    re-read as seconds when pydantic validates it."""

    def __str__(self) -> str:
        return f"{int(self)}ms"


def ms(text: str) -> int:
    """A typed duration default: ``ms("500ms")``, ``ms("3s")``."""
    return Millis(_parse_duration_ms(text))


def _parse_duration_ms(value: object) -> int:
    """``"250ms"``, ``"3s"``, ``"1.5s"``, ``"2m"``, ``"1h"`` or a number of seconds -> ms."""
    if isinstance(value, Millis):
        return int(value)
    if isinstance(value, bool):
        raise ValueError("a duration, like '500ms' or '3s', not a boolean")
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, Decimal | float):
        ms = Decimal(str(value)) * 1000
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"{value!r} is not a duration; write e.g. '500ms', '3s', '2m'")
        ms = Decimal(m.group(1)) * _UNIT_MS[m.group(2) or "s"]
    else:
        raise ValueError(f"{value!r} is not a duration; write e.g. '500ms', '3s', '2m'")
    if ms != ms.to_integral_value():
        raise ValueError(f"{value!r} is finer than a millisecond")
    return int(ms)


def _positive_ms(v: int) -> int:
    if v <= 0:
        raise ValueError("must be longer than 0")
    return v


DurationMs = Annotated[int, BeforeValidator(_parse_duration_ms), AfterValidator(_positive_ms)]
"""A positive duration, held as integer milliseconds."""


def _parse_decimal(value: object) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("a decimal amount, not a boolean")
    if isinstance(value, float):
        # tomllib is told to parse floats as Decimal; a float here came from code.
        raise ValueError("binary floats are not accepted for amounts; pass a string or Decimal")
    if isinstance(value, int | Decimal):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a decimal number") from None
    else:
        raise ValueError(f"{value!r} is not a decimal number")
    if not d.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return d


def _non_negative(d: Decimal) -> Decimal:
    if d < 0:
        raise ValueError(f"must not be negative (got {d})")
    return d


def _positive(d: Decimal) -> Decimal:
    if d <= 0:
        raise ValueError(f"must be greater than 0 (got {d})")
    return d


Amount = Annotated[Decimal, BeforeValidator(_parse_decimal), AfterValidator(_non_negative)]
"""A finite, non-negative exact decimal (money, sizes)."""
PositiveAmount = Annotated[Decimal, BeforeValidator(_parse_decimal), AfterValidator(_positive)]
"""A finite, strictly positive exact decimal (ticks, lots, prices)."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


# -- sections -----------------------------------------------------------------------


class AccountConfig(_Model):
    venue: str = Field(description="Venue name; part of the account identity (e.g. 'paper').")
    id: str = Field(description="Account id or wallet address at the venue.")

    @model_validator(mode="after")
    def _identity(self) -> AccountConfig:
        try:
            AccountId(self.venue, self.id)
        except InvalidAccountId as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def account_id(self) -> AccountId:
        return AccountId(self.venue, self.id)


class RedisConfig(_Model):
    url: str = Field(
        default=EMBEDDED,
        description="redis://, rediss://, unix://, redis+sentinel://h:p,.../<master>/<db> or "
        "redis+cluster://h:p,... URL, or 'embedded' for the per-user embedded server.",
    )
    wait_replicas: int = Field(
        default=0, ge=0, description="Replicas that must acknowledge a new fencing token (WAIT)."
    )
    wait_timeout: DurationMs = Field(default=ms("100ms"), description="How long to WAIT for replicas.")
    socket_timeout: DurationMs = Field(
        default=ms("1s"), description="Per-command socket timeout; a slower reply is a failure."
    )
    allow_non_durable: bool = Field(
        default=False,
        description="Run even on a Redis without AOF, whose restart would lose the fencing "
        "counter (throwaway setups only; `run` refuses such a Redis otherwise).",
    )


class LeaseConfig(_Model):
    ttl: DurationMs = Field(default=ms("3s"), description="Lease time-to-live in Redis.")
    renew_deadline: DurationMs = Field(
        default=ms("2s"), description="Self-fence if no renew succeeded within this long."
    )
    renew_interval: DurationMs = Field(default=ms("500ms"), description="How often the holder renews.")
    drift_margin: DurationMs = Field(
        default=ms("50ms"), description="Clock-drift allowance subtracted from the local deadline."
    )

    @model_validator(mode="after")
    def _timing(self) -> LeaseConfig:
        if not self.ttl > self.renew_deadline:
            raise ValueError(
                f"ttl ({self.ttl}ms) must be greater than renew_deadline ({self.renew_deadline}ms)"
            )
        if not self.renew_deadline > self.renew_interval:
            raise ValueError(
                f"renew_deadline ({self.renew_deadline}ms) must be greater than "
                f"renew_interval ({self.renew_interval}ms)"
            )
        if self.drift_margin >= self.ttl - self.renew_deadline:
            raise ValueError(
                f"drift_margin ({self.drift_margin}ms) must be smaller than "
                f"ttl - renew_deadline ({self.ttl - self.renew_deadline}ms)"
            )
        return self


class InstrumentConfig(_Model):
    tick: PositiveAmount = Field(description="Price increment; prices must be a multiple.")
    lot: PositiveAmount = Field(description="Quantity increment; sizes must be a multiple.")
    max_position: Amount = Field(description="Max absolute position incl. open reservations.")


class RiskConfig(_Model):
    """The account's limits. One set per account: stored in Redis, compared at takeover."""

    quote_decimals: int = Field(
        default=6, ge=0, le=12, description="Decimal places of the account's money unit in Redis."
    )
    timezone: str = Field(default="UTC", description="IANA zone whose midnight starts a trading day.")
    max_order_notional: Amount = Field(description="Max price x size of one order.")
    max_gross_exposure: Amount = Field(description="Max sum over symbols of |position| x mark.")
    daily_loss_limit: Amount = Field(description="Max loss per trading day, realized + unrealized.")
    price_band: Amount = Field(
        default=Decimal("0.05"), description="Max relative distance of an order price from the mark."
    )
    orders_per_second: PositiveAmount = Field(
        default=Decimal(10), description="Sustained order rate of the account (token bucket)."
    )
    burst: int = Field(default=20, ge=1, description="Token bucket size.")
    instruments: dict[str, InstrumentConfig] = Field(
        description="Tradable symbols; anything else is denied as unknown."
    )

    @model_validator(mode="after")
    def _rules(self) -> RiskConfig:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA zone") from None
        if not self.instruments:
            raise ValueError("at least one instrument is required")
        unit = Decimal(1).scaleb(-self.quote_decimals)
        for sym, inst in self.instruments.items():
            if not re.match(r"^[A-Za-z0-9_.\-/]{1,32}$", sym):
                raise ValueError(f"instrument {sym!r}: symbol must be 1-32 of A-Z a-z 0-9 _ . - /")
            per = inst.tick * inst.lot / unit
            if per != per.to_integral_value():
                raise ValueError(
                    f"instrument {sym!r}: tick x lot ({inst.tick * inst.lot}) must be a whole "
                    f"number of money units (10^-{self.quote_decimals}); raise quote_decimals"
                )
            if inst.max_position % inst.lot != 0:
                raise ValueError(f"instrument {sym!r}: max_position must be a multiple of lot")
        return self

    def digest(self) -> str:
        """A stable digest of these limits: equal limits have equal digests."""
        return _digest(self.model_dump(mode="json"))


class StrategyConfig(_Model):
    name: str = Field(description="Unique name of this strategy instance within the account.")
    module: str = Field(description="'package.module:Class' or 'path/to/file.py:Class'.")
    params: dict[str, Any] = Field(default_factory=dict, description="Passed to the constructor.")


class PaperVenueConfig(_Model):
    kind: Literal["paper"] = "paper"
    name: str = Field(default="paper", description="Exchange namespace in Redis (venue:{name}:…).")
    seed: int = Field(default=7, description="Seed of the deterministic random walk.")
    step: DurationMs = Field(default=ms("250ms"), description="Time between price steps.")
    volatility: Amount = Field(
        default=Decimal("0.001"), description="Relative size of one random-walk step."
    )
    start_prices: dict[str, PositiveAmount] = Field(
        default_factory=dict, description="Starting mark price per symbol."
    )


class HttpVenueConfig(_Model):
    kind: Literal["http"] = "http"
    url: str = Field(description="Base URL of the order-book venue, or 'embedded' to start the simulator.")
    key_env: str = Field(
        default="GUARDRAILS_HTTP_KEY", description="Environment variable holding the signing key."
    )
    keystore: str | None = Field(default=None, description="Encrypted keystore file instead of env.")
    keystore_password_env: str = Field(
        default="GUARDRAILS_KEYSTORE_PASSWORD", description="Env var with the keystore password."
    )
    chain_id: int = Field(default=1, ge=1, description="EIP-712 domain chain id.")
    request_timeout: DurationMs = Field(default=ms("2s"), description="HTTP request timeout.")
    simulator: PaperVenueConfig | None = Field(
        default=None, description="Market of the embedded simulator (url = 'embedded')."
    )


class EvmOrderTemplate(_Model):
    kind: Literal["native", "erc20_transfer", "erc20_approve", "call"]
    to: str = Field(description="Recipient or contract address.")
    abi: list[dict[str, Any]] | None = Field(default=None, description="ABI for kind = 'call'.")
    function: str | None = Field(default=None, description="Function name for kind = 'call'.")
    args: list[Any] = Field(default_factory=list, description="Arguments for kind = 'call'.")
    token: str | None = Field(
        default=None,
        description="ERC-20 contract: of erc20_* kinds ('to' is then recipient/spender); "
        "for 'call', the asset whose balance the venue reports for the symbol.",
    )
    mark: PositiveAmount | None = Field(
        default=None, description="Mark price the venue reports for the symbol (chains quote none)."
    )

    @model_validator(mode="after")
    def _kind_fields(self) -> EvmOrderTemplate:
        if self.kind.startswith("erc20") and not self.token:
            raise ValueError(f"kind = {self.kind!r} needs 'token' (the ERC-20 contract address)")
        if self.kind == "call" and (not self.abi or not self.function):
            raise ValueError("kind = 'call' needs 'abi' and 'function'")
        return self


class EvmVenueConfig(_Model):
    kind: Literal["evm"] = "evm"
    rpc_url: str = Field(description="JSON-RPC URL of the chain node.")
    chain_id: int = Field(ge=1, description="Expected chain id; a mismatch refuses to start.")
    key_env: str = Field(default="GUARDRAILS_EVM_KEY", description="Env var with the private key.")
    keystore: str | None = Field(default=None, description="Encrypted keystore file instead of env.")
    keystore_password_env: str = Field(
        default="GUARDRAILS_KEYSTORE_PASSWORD", description="Env var with the keystore password."
    )
    gas_limit: int = Field(default=200_000, ge=21_000, description="Gas limit per transaction.")
    max_fee_per_gas: int = Field(gt=0, description="Fee cap (wei); never exceeded.")
    max_priority_fee_per_gas: int = Field(ge=0, description="Tip cap (wei).")
    orders: dict[str, EvmOrderTemplate] = Field(
        default_factory=dict, description="Per symbol: the transaction an order becomes."
    )

    @model_validator(mode="after")
    def _fees(self) -> EvmVenueConfig:
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise ValueError("max_priority_fee_per_gas must not exceed max_fee_per_gas")
        return self


VenueConfig = Annotated[
    PaperVenueConfig | HttpVenueConfig | EvmVenueConfig, Field(discriminator="kind")
]


class RuntimeConfig(_Model):
    heartbeat_interval: DurationMs = Field(default=ms("1s"), description="Registry heartbeat period.")
    heartbeat_ttl: DurationMs = Field(default=ms("5s"), description="A silent instance expires after.")
    standby_heartbeat_interval: DurationMs = Field(
        default=ms("15s"),
        description="Registry heartbeat period while standby (an idle standby's Redis cost; "
        "its record lives 3 periods).",
    )
    health_port: int | None = Field(
        default=None, ge=0, le=65535, description="Serve /health on 127.0.0.1:port (0 = any free)."
    )
    dashboard_port: int = Field(default=8765, ge=0, le=65535, description="Port of --dashboard.")
    lock_dir: str | None = Field(
        default=None, description="Directory of the local single-instance lock (default: /run/…)."
    )


class Config(_Model):
    account: AccountConfig
    redis: RedisConfig = Field(default_factory=RedisConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    risk: RiskConfig
    venue: VenueConfig = Field(default_factory=PaperVenueConfig)
    strategies: list[StrategyConfig] = Field(default_factory=list)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    _source: str = PrivateAttr(default="<config>")

    @property
    def source(self) -> str:
        """The file this config was loaded from (for messages), or ``<config>``."""
        return self._source

    @model_validator(mode="after")
    def _cross(self) -> Config:
        names = [s.name for s in self.strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"strategy names must be unique; repeated: {', '.join(dupes)}")
        if isinstance(self.venue, PaperVenueConfig):
            missing = sorted(set(self.risk.instruments) - set(self.venue.start_prices))
            if missing:
                raise ValueError(f"venue.start_prices lacks a price for: {', '.join(missing)}")
        if isinstance(self.venue, EvmVenueConfig):
            # One wallet on one chain is one account: its label is fixed by the chain, so
            # the same wallet cannot be two leases under two labels (guardrails.identity).
            label = f"evm-{self.venue.chain_id}"
            if self.account.venue != label:
                raise ValueError(
                    f"account.venue must be {label!r} for an EVM wallet on chain "
                    f"{self.venue.chain_id} (got {self.account.venue!r}): the account is the "
                    "wallet on its chain, so its label is derived from venue.chain_id"
                )
            if not re.fullmatch(r"0x[0-9a-fA-F]{40}", self.account.id):
                raise ValueError(
                    f"account.id must be the wallet's 0x address for an EVM venue "
                    f"(got {self.account.id!r})"
                )
        return self

    @property
    def account_id(self) -> AccountId:
        return self.account.account_id

    def digest(self) -> str:
        """Digest of the effective config (what doctor compares between instances)."""
        return _digest(self.model_dump(mode="json"))


def _digest(obj: object) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- loading ------------------------------------------------------------------------


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after[_timing()]",))
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"  {source}: {_format_loc(loc)}: {msg}")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None
    cfg._source = source
    return cfg


def load_config(path: str | os.PathLike[str], redis_url: str | None = None) -> Config:
    """Load and validate ``path``. ``redis_url`` (the ``--redis-url`` flag) and then the
    ``GUARDRAILS_REDIS_URL`` environment variable override ``[redis] url``."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    override = redis_url or os.environ.get(REDIS_URL_ENV)
    if override:
        data.setdefault("redis", {})
        if not isinstance(data["redis"], dict):
            raise ConfigError(f"{p}: redis: must be a table")
        data["redis"]["url"] = override
    return parse_config(data, str(p))
