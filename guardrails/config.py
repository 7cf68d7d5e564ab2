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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from guardrails import redacted
from guardrails.keys import AccountId, InvalidAccountId
from guardrails.model import SYMBOL_RE
from guardrails.redacted import mask_url

REDIS_URL_ENV = "GUARDRAILS_REDIS_URL"
EMBEDDED = "embedded"


class ConfigError(Exception):
    """A configuration that cannot be used. ``str()`` is the message for the operator."""


# -- typed scalars ------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNIT_MS = {"ms": Decimal(1), "s": Decimal(1000), "m": Decimal(60_000), "h": Decimal(3_600_000)}
MAX_EXACT_INT = 2**53
"""Integers the gate and the ledger hold exactly (Lua numbers are doubles): |n| < 2^53."""


class Millis(int):
    """An int that is already milliseconds: a default written with ``ms("3s")`` is not
    refused as a bare number when pydantic validates it."""

    def __str__(self) -> str:
        return _spell_ms(int(self))


def _spell_ms(n: int) -> str:
    """``3000`` -> ``3s``, ``250`` -> ``250ms``, ``120000`` -> ``2m``: how docs write it."""
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}ms"


def ms(text: str) -> int:
    """A typed duration default: ``ms("500ms")``, ``ms("3s")``."""
    return Millis(_parse_duration_ms(text))


def _bare_number(value: object) -> str:
    seconds = (Decimal(str(value)) / 1000).normalize()
    return (
        f"{value} has no unit: write '{value}ms' or '{seconds:f}s' "
        "(a duration is a string with ms, s, m or h)"
    )


def _parse_duration_ms(value: object) -> int:
    """``"250ms"``, ``"3s"``, ``"1.5s"``, ``"2m"``, ``"1h"`` -> ms. A bare number is
    refused: ``3000`` could mean 3000 ms or 3000 s, and the difference is a lease that
    lives 50 minutes."""
    if isinstance(value, Millis):
        return int(value)
    if isinstance(value, bool):
        raise ValueError("a duration, like '500ms' or '3s', not a boolean")
    if isinstance(value, int | Decimal | float):
        raise ValueError(_bare_number(value))
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration; write e.g. '500ms', '3s', '2m'")
    if len(value) > 32:
        raise ValueError(f"{value[:32]!r}... is not a duration; write e.g. '500ms', '3s', '2m'")
    m = _DURATION_RE.match(value)
    if not m:
        if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*", value):
            raise ValueError(_bare_number(value.strip()))
        raise ValueError(f"{value!r} is not a duration; write e.g. '500ms', '3s', '2m'")
    ms = Decimal(m.group(1)) * _UNIT_MS[m.group(2)]
    if ms != ms.to_integral_value():
        raise ValueError(f"{value!r} is finer than a millisecond")
    return int(ms)


@dataclass(frozen=True, slots=True)
class DurationBound:
    """The longest a duration field may be (docs/config.md shows it)."""

    max_ms: int

    def __call__(self, v: int) -> int:
        if v <= 0:
            raise ValueError("must be longer than 0")
        if v > self.max_ms:
            raise ValueError(f"{_spell_ms(v)} is too long: at most {_spell_ms(self.max_ms)}")
        return v


_DAY = DurationBound(86_400_000)
_TEN_MINUTES = DurationBound(600_000)
_FIVE_MINUTES = DurationBound(300_000)
_MINUTE = DurationBound(60_000)


@dataclass(frozen=True, slots=True)
class RetentionBound:
    """A retention window: at least ``min_ms`` (every retry and reconciliation path
    must be over before a record may go), at most ``max_ms``."""

    min_ms: int
    max_ms: int

    def __call__(self, v: int) -> int:
        if v < self.min_ms:
            raise ValueError(f"{_spell_ms(v)} is too short: at least {_spell_ms(self.min_ms)} "
                             "(docs/operations.md, Pruning: what the window must cover)")
        if v > self.max_ms:
            raise ValueError(f"{_spell_ms(v)} is too long: at most {_spell_ms(self.max_ms)}")
        return v


_RETENTION = RetentionBound(3_600_000, 90 * 86_400_000)

_AS_TEXT = PlainSerializer(lambda v: f"{v}ms", return_type=str, when_used="json")
"""In JSON a duration is written as it is read (``"250ms"``), so a dumped config loads again."""

DurationMs = Annotated[int, BeforeValidator(_parse_duration_ms), AfterValidator(_DAY), _DAY, _AS_TEXT]
"""A positive duration of at most 24h, held as integer milliseconds."""
LeaseDurationMs = Annotated[
    int, BeforeValidator(_parse_duration_ms), AfterValidator(_TEN_MINUTES), _TEN_MINUTES, _AS_TEXT
]
"""A lease timing: at most 10m (a crashed holder blocks the account for up to one TTL)."""
RequestDurationMs = Annotated[
    int, BeforeValidator(_parse_duration_ms), AfterValidator(_FIVE_MINUTES), _FIVE_MINUTES, _AS_TEXT
]
"""A request timeout: at most 5m."""
SocketDurationMs = Annotated[
    int, BeforeValidator(_parse_duration_ms), AfterValidator(_MINUTE), _MINUTE, _AS_TEXT
]
"""A Redis timeout: at most 1m (a slower reply is a failure, not a wait)."""
RetentionMs = Annotated[
    int, BeforeValidator(_parse_duration_ms), AfterValidator(_RETENTION), _RETENTION, _AS_TEXT
]
"""A retention window: 1h to 2160h (90 days)."""


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


class _EndpointOnly:
    """Field metadata: a URL that may carry a credential anywhere (an API key in its path,
    a token in its query), so a repr shows it as ``redacted.endpoint`` (scheme://host)."""


ENDPOINT_ONLY = _EndpointOnly()


def _repr_masked(value: object, endpoint_only: bool) -> object:
    if isinstance(value, str):
        return redacted.endpoint(value) if endpoint_only else redacted.mask_text(value)
    if isinstance(value, dict):
        return {k: _repr_masked(v, endpoint_only) for k, v in value.items()}
    return value


def _endpoint_only(info: FieldInfo) -> bool:
    return any(isinstance(m, _EndpointOnly) for m in info.metadata)


def _mask_endpoints(model: BaseModel, data: dict[str, Any]) -> None:
    """In ``data`` (``model``'s JSON dump), every ``ENDPOINT_ONLY`` value as its endpoint."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if _endpoint_only(info):
            data[name] = _repr_masked(data[name], True)
        elif isinstance(value, BaseModel):
            _mask_endpoints(value, data[name])
        elif isinstance(value, list | dict):  # of sections: [[notify]], [venue.orders]
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(item, BaseModel):
                    _mask_endpoints(item, data[name][key])


class _Model(BaseModel):
    """Every config section: frozen, unknown fields refused. Secrets stay out of what it
    shows: a ``ValidationError`` never quotes the input (``hide_input_in_errors``: a
    section's error would otherwise print the whole section, URLs and all), and the repr
    masks URL credentials and registered secrets, and shows an ``ENDPOINT_ONLY`` field
    as scheme://host."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True,
                              hide_input_in_errors=True)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        fields = type(self).model_fields
        for name, value in super().__repr_args__():
            info = fields.get(name) if name is not None else None
            yield name, _repr_masked(value, info is not None and _endpoint_only(info))


_REDIS_SCHEMES = ("redis", "rediss", "unix")


_ENCODE_HINT = ("a '/', '?', '#', '@', '[' or ']' in a user name or password must be "
                "percent-encoded (%2F %3F %23 %40 %5B %5D)")


def _userinfo_unencoded(text: str) -> bool:
    """Whether the part of ``text`` before its last ``@`` has a character that ends a
    URL's authority (so a parser would cut the password short and read the rest as a
    path, a query, a fragment or a port)."""
    _, sep, rest = text.partition("://")
    userinfo, at, _ = rest.rpartition("@")
    return bool(sep and at and any(c in userinfo for c in "/?#[]"))


def redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Redis target (None if it can). Never echoes the URL: it
    may carry a password, and a malformed one is cut at the wrong place (an unencoded
    ``/`` in the password makes the rest of it "the path"; a ``#``, "the port"). So such
    a userinfo is refused first, and only the scheme and a database name are quoted."""
    if url == EMBEDDED:
        return None
    text = url.strip()
    if not text:
        return "empty; write redis://host:6379/0, unix:///path/to/redis.sock or 'embedded'"
    if text.split("://", 1)[0].lower() in ("redis+sentinel", "redis+cluster"):
        return None  # parsed (and refused, naming the fault) by infra.connect.parse_ha_url
    if _userinfo_unencoded(text):
        return f"not a Redis URL: {_ENCODE_HINT}"
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port that is not a number in range
    except ValueError as e:
        # urllib's message quotes what it took for the port: never repeat it.
        what = ("the port is out of range" if "range" in str(e)
                else "unbalanced '[' or ']' in the host" if "IPv6" in str(e)
                else "the port is not a number")
        return f"not a Redis URL: {what}" + (f" ({_ENCODE_HINT})" if "@" in text else "")
    scheme = parts.scheme.lower()
    if scheme not in _REDIS_SCHEMES:
        shown = (f"scheme {scheme!r}" if "://" in text and scheme and len(scheme) <= 16
                 else "no scheme")
        return (f"not a Redis URL ({shown}); write redis://host:6379/0, "
                "rediss://…, unix:///path/to/redis.sock or 'embedded'")
    dbs = parse_qs(parts.query).get("db", [])
    if scheme == "unix":
        if not (parts.path or parts.netloc):
            return "unix:// URL without a socket path"
    else:
        if port == 0:
            return "port 0 is not a Redis port"
        dbs.append(unquote(parts.path).strip("/"))
    bad = next((db for db in dbs if db and not db.isdigit()), None)
    if bad is not None:  # safe to quote: the whole userinfo was in the authority
        return f"database {bad[:16]!r} is not a number"
    if len({int(db) for db in dbs if db}) > 1:
        return "the path's database and ?db= disagree; name the database once"
    return None


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

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        problem = redis_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v
    wait_replicas: int = Field(
        default=0, ge=0, le=100,
        description="Replicas that must acknowledge a new fencing token (WAIT).",
    )
    wait_timeout: SocketDurationMs = Field(
        default=ms("100ms"), description="How long to WAIT for replicas."
    )
    socket_timeout: SocketDurationMs = Field(
        default=ms("1s"), description="Per-command socket timeout; a slower reply is a failure."
    )
    allow_non_durable: bool = Field(
        default=False,
        description="Run even on a Redis without AOF, whose restart would lose the fencing "
        "counter (throwaway setups only; `run` refuses such a Redis otherwise).",
    )


class LeaseConfig(_Model):
    ttl: LeaseDurationMs = Field(default=ms("3s"), description="Lease time-to-live in Redis.")
    renew_deadline: LeaseDurationMs = Field(
        default=ms("2s"), description="Self-fence if no renew succeeded within this long."
    )
    renew_interval: LeaseDurationMs = Field(default=ms("500ms"), description="How often the holder renews.")
    drift_margin: LeaseDurationMs = Field(
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
    burst: int = Field(
        default=20, ge=1, le=10**12,
        description="Token bucket size (the gate holds it x 1000, below 2^53).",
    )
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
        for name in ("max_order_notional", "max_gross_exposure", "daily_loss_limit"):
            amount: Decimal = getattr(self, name)
            units = amount.scaleb(self.quote_decimals).to_integral_value(rounding=ROUND_FLOOR)
            if units >= MAX_EXACT_INT:
                raise ValueError(
                    f"{name} ({amount}) is {int(units)} money units (10^-{self.quote_decimals}); "
                    "the gate holds amounts exactly only below 2^53 units: lower it or "
                    "quote_decimals"
                )
        if self.price_band > 1:
            raise ValueError(f"price_band ({self.price_band}) must be at most 1 (100% of the mark)")
        if self.orders_per_second < Decimal("0.001"):
            raise ValueError(f"orders_per_second ({self.orders_per_second}) must be at least 0.001")
        if self.orders_per_second * 1000 >= MAX_EXACT_INT:
            raise ValueError(f"orders_per_second ({self.orders_per_second}) is absurdly high")
        for sym, inst in self.instruments.items():
            if not isinstance(sym, str) or not SYMBOL_RE.fullmatch(sym):
                raise ValueError(f"instrument {sym!r}: symbol must be 1-32 of A-Z a-z 0-9 _ . - /")
            for what in ("tick", "lot"):
                problem = _increment_problem(getattr(inst, what))
                if problem:
                    raise ValueError(f"instrument {sym!r}: {what} {problem}")
            if (inst.tick * inst.lot / unit) >= MAX_EXACT_INT:
                raise ValueError(f"instrument {sym!r}: tick x lot is beyond 2^53 money units")
            if inst.max_position / inst.lot >= MAX_EXACT_INT:
                raise ValueError(
                    f"instrument {sym!r}: max_position ({inst.max_position}) is 2^53 lots or "
                    "more; the gate holds positions exactly only below 2^53 lots"
                )
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


def _increment_problem(d: Decimal) -> str | None:
    """A tick or a lot the gate can parse: at most 15 significant digits, at most 18
    decimal places, below 2^53 (the gate scales prices and sizes by it exactly)."""
    _sign, digits, exp = d.normalize().as_tuple()
    assert isinstance(exp, int)
    if len(digits) > 15:
        return f"({d}) has more than 15 significant digits"
    if exp < -18:
        return f"({d}) has more than 18 decimal places"
    if d >= MAX_EXACT_INT:
        return f"({d}) is 2^53 or more"
    return None


class StrategyConfig(_Model):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Unique name of this strategy instance within the account "
        "(1-64 of A-Z a-z 0-9 _ . -).",
    )
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
    request_timeout: RequestDurationMs = Field(default=ms("2s"), description="HTTP request timeout.")
    simulator: PaperVenueConfig | None = Field(
        default=None, description="Market of the embedded simulator (url = 'embedded')."
    )


class CcxtVenueConfig(_Model):
    kind: Literal["ccxt"] = "ccxt"
    exchange: str = Field(
        pattern=r"^[a-z][a-z0-9_]{1,31}$",
        description="ccxt exchange id (e.g. 'binance'); checked against ccxt at start.",
    )
    url: str | None = Field(
        default=None,
        description="'embedded' (the per-user Binance-protocol simulator) or a simulator's "
        "base URL; unset: the exchange's own URLs.",
    )
    sandbox: bool = Field(default=False, description="Use the exchange's testnet (ccxt set_sandbox_mode).")
    api_key_env: str = Field(
        default="GUARDRAILS_CCXT_API_KEY", description="Environment variable holding the API key."
    )
    secret_env: str = Field(
        default="GUARDRAILS_CCXT_SECRET", description="Environment variable holding the API secret."
    )
    password_env: str | None = Field(
        default=None, description="Env var with the API passphrase (exchanges that have one)."
    )
    credentials_file: str | None = Field(
        default=None,
        description="JSON file {apiKey, secret[, password]} (mode 0600) instead of env vars.",
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Merged into the ccxt exchange's options."
    )
    urls: Annotated[dict[str, str], ENDPOINT_ONLY] = Field(
        default_factory=dict, description="Overrides of the ccxt exchange's urls['api'] entries."
    )
    enable_rate_limit: bool = Field(
        default=True, description="ccxt's own per-process rate limiter (the gate's is account-wide)."
    )
    request_timeout: DurationMs = Field(default=ms("5s"), description="HTTP request timeout.")
    max_recv_window: DurationMs = Field(
        default=ms("60s"),
        description="Binance: ceiling of an order's recvWindow (the exchange allows 60s at most).",
    )
    simulator: PaperVenueConfig | None = Field(
        default=None, description="Market of the embedded simulator (url = 'embedded')."
    )
    symbols: dict[str, str] = Field(
        default_factory=dict,
        description="Instrument -> the exchange's ccxt symbol (e.g. 'BTC-USD' = 'BTC/USDT'); "
        "an instrument not listed is its own ccxt symbol. Checked against the markets at start.",
    )
    dead_man_switch: bool = Field(
        default=True,
        description="Arm the exchange's cancelAllOrdersAfter while active, where ccxt has it "
        "(Kraken, OKX, Bybit...; not Binance spot). See docs/venues.md.",
    )
    dead_man_timeout: DurationMs | None = Field(
        default=None,
        description="The dead-man switch's countdown (whole seconds at the exchange); unset: "
        "4 x lease ttl, rounded up to a second, at least the exchange's minimum.",
    )

    @model_validator(mode="after")
    def _embedded(self) -> CcxtVenueConfig:
        if self.url is not None and self.exchange != "binance":
            raise ValueError(
                f"url is for the Binance-protocol simulator: exchange must be 'binance' "
                f"(got {self.exchange!r}); use urls to point another exchange elsewhere"
            )
        if self.max_recv_window > 60_000:
            raise ValueError(f"max_recv_window ({self.max_recv_window}ms) must be at most 60s")
        return self


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
    rpc_url: Annotated[str, ENDPOINT_ONLY] = Field(
        description="JSON-RPC URL of the chain node (an API key in it is never shown).")
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


class PolymarketVenueConfig(_Model):
    kind: Literal["polymarket"] = "polymarket"
    url: str = Field(
        description="Base URL of the Polymarket CLOB, or 'embedded' for the per-user CLOB simulator."
    )
    chain_id: int = Field(
        default=137, description="Polygon chain id of the exchange contracts (137 or 80002)."
    )
    key_env: str = Field(
        default="GUARDRAILS_POLYMARKET_KEY", description="Env var holding the wallet's private key."
    )
    keystore: str | None = Field(default=None, description="Encrypted keystore file instead of env.")
    keystore_password_env: str = Field(
        default="GUARDRAILS_KEYSTORE_PASSWORD", description="Env var with the keystore password."
    )
    tokens: dict[str, str] = Field(
        description="Per instrument symbol: the outcome token id (decimal string) it trades."
    )
    expiry_window: DurationMs = Field(
        default=ms("180s"), ge=ms("1s"), le=ms("600s"),
        description="The exchange's minimum GTD window: an order's expiration is its submit "
        "deadline plus this, so one arriving after its deadline is refused as too soon. "
        "An order the venue has no record of holds its reservation until the latest "
        "expiration any window could give it (its deadline + 600s + 3s).",
    )
    heartbeat_interval: DurationMs = Field(
        default=ms("3s"),
        description="CLOB heartbeat period while active (the exchange cancels after ~10s).",
    )
    cancel_on_takeover: bool = Field(
        default=True, description="On taking the lease, cancel every resting order of the wallet."
    )
    request_timeout: DurationMs = Field(default=ms("5s"), description="Per-call time limit.")
    settlement_warn_after: DurationMs = Field(
        default=ms("5m"), ge=ms("1s"),
        description="A trade not yet CONFIRMED or FAILED this long after its match is logged "
        "once (venue.polymarket.trade_unsettled); it is still re-read until it settles.",
    )
    simulator: PaperVenueConfig | None = Field(
        default=None,
        description="Market of the CLOB simulator (guardrails.sim.clob): start prices per symbol.",
    )

    @model_validator(mode="after")
    def _tokens(self) -> PolymarketVenueConfig:
        if self.chain_id not in (137, 80002):
            raise ValueError("chain_id must be 137 (Polygon) or 80002 (Amoy): py-clob-client "
                             "knows the exchange contracts of those two only")
        for sym, tok in self.tokens.items():
            if not tok.isdigit():
                raise ValueError(f"tokens.{sym}: token id must be a decimal integer string")
        if len(set(self.tokens.values())) != len(self.tokens):
            raise ValueError("tokens: two symbols name the same token id")
        if self.url == "embedded" and self.simulator is None:
            raise ValueError("url = 'embedded' needs [venue.simulator] (the market to simulate)")
        return self


VenueConfig = Annotated[
    PaperVenueConfig | HttpVenueConfig | EvmVenueConfig | CcxtVenueConfig | PolymarketVenueConfig,
    Field(discriminator="kind"),
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
        default=None, description="An extra directory of the local single-instance lock, taken "
        "in addition to /run/guardrails and /tmp/guardrails-locks (never instead)."
    )
    foreign_activity_threshold: int = Field(
        default=1, ge=0, le=1_000_000,
        description="Halt the account (reason foreign_activity) after this many fills of orders "
        "the ledger never admitted, seen by the active instance; 0 only logs them.",
    )
    alert_redis_after: DurationMs = Field(
        default=ms("30s"),
        description="Alert `redis_unreachable` once Redis has been unreachable this long.",
    )
    strategy_stop_timeout: RequestDurationMs = Field(
        default=ms("5s"),
        description="How long a stopping strategy may take to end; one that is still running "
        "then (it swallowed the cancellation) is abandoned and the stop goes on.",
    )
    strategy_restart_backoff: DurationMs = Field(
        default=ms("1s"),
        description="First delay before restarting a strategy that failed on an "
        "infrastructure error (ContextUnavailable); doubles per failure.",
    )
    strategy_restart_backoff_max: DurationMs = Field(
        default=ms("30s"), description="Longest delay between such restarts."
    )

    @field_validator("lock_dir")
    @classmethod
    def _lock_dir(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip() or "\x00" in v:
            raise ValueError("must be a directory path")
        path = Path(v)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{v} exists and is not a directory")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> RuntimeConfig:
        if self.strategy_restart_backoff > self.strategy_restart_backoff_max:
            raise ValueError(
                f"strategy_restart_backoff ({_spell_ms(self.strategy_restart_backoff)}) must not "
                f"exceed strategy_restart_backoff_max "
                f"({_spell_ms(self.strategy_restart_backoff_max)})"
            )
        return self


NotifyEvent = Literal[
    "kill", "resume", "lease_lost", "self_fence", "takeover", "budget_80", "budget_100",
    "foreign_activity", "strategy_crashed", "redis_unreachable", "latch_lost", "doctor",
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


def _http_url(v: str) -> str:
    if not re.match(r"^https?://[^\s/]+", v):  # never quoted: a webhook URL holds its token
        raise ValueError("not an http(s) URL (write https://host/...)")
    return v


class _NotifyBase(_Model):
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        description="Which events to send (default: all of them; docs/operations.md, Alerts).",
    )
    timeout: DurationMs = Field(default=ms("5s"), description="Timeout of one delivery attempt.")


class WebhookNotifyConfig(_NotifyBase):
    kind: Literal["webhook"] = Field(description="A JSON POST of each alert to `url`.")
    url: Annotated[str, AfterValidator(_http_url), ENDPOINT_ONLY] = Field(
        description="Where to POST (a token in it is never shown).")


class TelegramNotifyConfig(_NotifyBase):
    kind: Literal["telegram"] = Field(description="Telegram Bot API sendMessage.")
    chat_id: str = Field(min_length=1, description="The chat to message.")
    token_env: str = Field(
        default="GUARDRAILS_TELEGRAM_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Environment variable holding the bot token (never the config file).",
    )
    api_url: Annotated[str, AfterValidator(_http_url)] = Field(
        default="https://api.telegram.org", description="Bot API base URL (tests point it at a local server)."
    )


NotifyConfig = Annotated[WebhookNotifyConfig | TelegramNotifyConfig, Field(discriminator="kind")]


class PruneConfig(_Model):
    enabled: bool = Field(
        default=True,
        description="The active instance archives and removes terminal orders older than "
        "`retention` from Redis (docs/operations.md, Pruning).",
    )
    retention: RetentionMs = Field(
        default=ms("24h"),
        description="How long a terminal order, its intent and its fills stay in Redis after "
        "their last change; it must outlast every retry and reconciliation path (1h..2160h).",
    )
    interval: DurationMs = Field(default=ms("5m"), description="Time between two sweeps.")
    batch: int = Field(
        default=25, ge=1, le=200,
        description="Orders (or fills) removed per script: bounds each script's Redis time "
        "(about 13 µs per order, measured in bench/memory.py).",
    )
    archive: str | None = Field(
        default=None,
        description="The archive file (JSON lines, 0600); default "
        "`<state dir>/archive/<venue>+<account>.jsonl`.",
    )


class Config(_Model):
    account: AccountConfig
    redis: RedisConfig = Field(default_factory=RedisConfig)
    lease: LeaseConfig = Field(default_factory=LeaseConfig)
    risk: RiskConfig
    venue: VenueConfig = Field(default_factory=PaperVenueConfig)
    strategies: list[StrategyConfig] = Field(default_factory=list)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    notify: list[NotifyConfig] = Field(default_factory=list)
    prune: PruneConfig = Field(default_factory=PruneConfig)
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
        if isinstance(self.venue, CcxtVenueConfig) and self.venue.url is not None:
            bad = sorted(s for s in self.risk.instruments if s.count("/") != 1)
            if bad:
                raise ValueError(
                    f"instruments traded through ccxt are ccxt symbols BASE/QUOTE: {', '.join(bad)}"
                )
            market = self.venue.simulator
            missing = sorted(set(self.risk.instruments) - set(market.start_prices if market else {}))
            if self.venue.url == EMBEDDED and missing:
                raise ValueError(
                    f"venue.simulator.start_prices lacks a price for: {', '.join(missing)}"
                )
        if isinstance(self.venue, EvmVenueConfig):
            # One wallet on one chain is one account: its label is fixed by the chain, so
            # the same wallet cannot be two leases under two labels (guardrails.runtime.identity).
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
        if isinstance(self.venue, PolymarketVenueConfig):
            if not re.fullmatch(r"0x[0-9a-fA-F]{40}", self.account.id):
                raise ValueError(
                    f"account.id must be the wallet's 0x address for a Polymarket venue "
                    f"(got {self.account.id!r})"
                )
            missing = sorted(set(self.risk.instruments) - set(self.venue.tokens))
            if missing:
                raise ValueError(f"venue.tokens lacks a token id for: {', '.join(missing)}")
        return self

    @property
    def account_id(self) -> AccountId:
        return self.account.account_id

    def digest(self) -> str:
        """Digest of the effective config (what doctor compares between instances).

        The Redis URL enters it masked, and every ``ENDPOINT_ONLY`` URL (the EVM
        rpc_url, a webhook's url, ccxt urls) as scheme://host: the digest is stored in
        the registry, and a short hash over a password or a key would be an offline
        guessing oracle for it."""
        data = self.model_dump(mode="json")
        data["redis"]["url"] = mask_url(str(data["redis"]["url"]))
        _mask_endpoints(self, data)
        return _digest(data)


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
    """One line: ``<file>: <field.path>: <reason>``, repeated after ``; `` when a config
    has several problems (an operator's terminal and a supervisor's journal show it whole)."""
    parts = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-after[_timing()]",))
        msg = " ".join(e["msg"].removeprefix("Value error, ").split())
        parts.append(f"{source}: {_format_loc(loc)}: {msg}")
    return "; ".join(parts) or f"{source}: invalid configuration"


def parse_config(data: Mapping[str, Any], source: str = "<config>") -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None
    cfg._source = source
    return cfg


def read_toml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """The TOML table in ``path`` (floats parsed as Decimal), or ``ConfigError`` naming the
    file and what is wrong with it (``what`` names the kind of file: "config file",
    "manifest")."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return tomllib.load(f, parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(f"{p}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a directory, not a {what}") from None
    except PermissionError:
        raise ConfigError(f"{p}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}: {e.reason}); "
                          f"save the {what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or type(e).__name__}") from None


def load_config(path: str | os.PathLike[str], redis_url: str | None = None) -> Config:
    """Load and validate ``path``. ``redis_url`` (the ``--redis-url`` flag) and then the
    ``GUARDRAILS_REDIS_URL`` environment variable override ``[redis] url``."""
    p = Path(path)
    data = read_toml(p)
    override = redis_url or os.environ.get(REDIS_URL_ENV)
    if override:
        problem = redis_url_problem(override)
        if problem:
            origin = "--redis-url" if redis_url else f"${REDIS_URL_ENV}"
            raise ConfigError(f"{origin}: {problem}")
        data.setdefault("redis", {})
        if not isinstance(data["redis"], dict):
            raise ConfigError(f"{p}: redis: must be a table")
        data["redis"]["url"] = override
    return parse_config(data, str(p))
