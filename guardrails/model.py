"""Value types shared by the gate, the ledger, the venues and strategies.

Money is exact: prices, quantities and amounts are ``decimal.Decimal`` in Python and
never pass through a binary float on their way to Redis (see ``docs/keys.md`` for the
representation in Redis). Outcomes are values: the gate returns ``Admitted`` or
``Denied``; it raises only for broken infrastructure or programming errors.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class TradingState(StrEnum):
    """The account's trading state latch (NautilusTrader's ACTIVE / REDUCING / HALTED)."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class OrderState(StrEnum):
    """Order lifecycle. Terminal states never move again (enforced in the ledger script)."""

    PENDING_SUBMIT = "PENDING_SUBMIT"
    SUBMITTED = "SUBMITTED"
    UNKNOWN = "UNKNOWN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {OrderState.FILLED, OrderState.CANCELED, OrderState.REJECTED, OrderState.EXPIRED}
)


class DenyReason(StrEnum):
    """Why the gate refused an intent, in the order the checks run (docs/gate.md)."""

    SCHEMA_MISMATCH = "schema_mismatch"
    LATCH_LOST = "latch_lost"
    """The kill-switch latch in Redis is older than one this instance saw (Redis lost
    writes): nothing is admitted until an operator writes a new one (``kill``/``resume``)."""
    HALTED = "halted"
    REDUCE_ONLY = "reduce_only"
    STALE_TOKEN = "stale_token"
    LEASE_EXPIRED = "lease_expired"
    INTENT_CONFLICT = "intent_conflict"
    """The intent id was already admitted as a different order (another symbol, side,
    qty or price): nothing is reserved or sent; a different order needs a new id."""
    INTENT_PRUNED = "intent_pruned"
    """The intent id was decided long ago and its records were pruned (archived) after
    the retention window (``[prune]``): it is never admitted again; a new order needs a
    new intent id."""
    BAD_ORDER = "bad_order"
    UNKNOWN_SYMBOL = "unknown_symbol"
    OFF_TICK = "off_tick"
    OFF_LOT = "off_lot"
    MAX_NOTIONAL = "max_notional"
    PRICE_BAND = "price_band"
    THROTTLED = "throttled"
    POSITION_LIMIT = "position_limit"
    GROSS_EXPOSURE = "gross_exposure"
    DAILY_LOSS = "daily_loss"
    NOT_ACTIVE = "not_active"
    """Denied in-process: this instance does not hold the lease (or has self-fenced)."""
    REDIS_UNAVAILABLE = "redis_unavailable"
    """Denied in-process: Redis could not be reached, so nothing was admitted."""
    BAD_STATE = "bad_state"
    """A key of the account has an unexpected type or shape; fail closed."""


@dataclass(frozen=True, slots=True)
class Intent:
    """What a strategy wants: a limit order. ``intent_id`` makes it idempotent.

    If the strategy gives no ``intent_id``, one is derived deterministically from the
    order's fields and ``tag`` (so re-sending the *same* intent is deduplicated; give
    distinct ``tag``s or ids for deliberately repeated orders).
    """

    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    intent_id: str | None = None
    tag: str = ""

    def resolved_intent_id(self, strategy: str) -> str:
        if self.intent_id:
            return self.intent_id
        raw = f"{strategy}|{self.symbol}|{self.side.value}|{self.qty}|{self.price}|{self.tag}"
        return "i-" + hashlib.sha256(raw.encode()).hexdigest()[:24]


MAX_SYMBOL_LEN = 32
MAX_STRATEGY_LEN = 64
MAX_INTENT_ID_LEN = 128
MAX_TAG_LEN = 128
MAX_SIGNIFICANT_DIGITS = 15
"""The gate parses qty and price itself: at most 15 significant digits (exact in a double)."""
MAX_DECIMAL_CHARS = 40
"""... and at most 40 characters as a plain decimal string."""
try:  # CPython's own SHA-256 (3.12+: _sha2): for a short id it is ~2.5x faster than
    # OpenSSL's (hashlib.sha256), whose per-call setup dominates; the same digest. It is
    # outside OpenSSL's FIPS mode, which is fine here: an id, not a security function
    from _sha2 import sha256 as _sha256  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:  # pragma: no cover - a Python built without its own hashes
        _sha256 = hashlib.sha256
# whole-string patterns (fullmatch: "$" with match() would also take a trailing newline)
SYMBOL_RE = re.compile(r"[A-Za-z0-9_.\-/]{1,32}")
"""A symbol: what the gate, the config and the key layout accept (``fullmatch``)."""
ID_RE = re.compile(r"[\x21-\x7e]{1,128}")
"""An intent id (``fullmatch``): 1-128 printable ASCII characters, no space."""


def intent_problem(intent: object, strategy: str = "") -> str | None:
    """Why ``intent`` cannot be sent to the gate (None if it can): the shape checks that
    must hold *before* anything reaches Redis — types, lengths, and decimals the gate can
    hold exactly. Limits, ticks and lots are the gate's business. Never raises."""
    if not isinstance(intent, Intent):
        return f"not an Intent: {type(intent).__name__}"
    if strategy and len(strategy) > MAX_STRATEGY_LEN:
        return f"strategy name longer than {MAX_STRATEGY_LEN} characters"
    args = intent_args(intent)
    return args if isinstance(args, str) else None


def intent_args(intent: object) -> str | tuple[str, str]:
    """``intent_problem``'s checks (bar the strategy name) and, when they pass, the exact
    qty and price strings the gate sends (``decimal_text``): one pass over the intent, on
    the gate's path of every order. Returns the problem (a str) or (qty, price)."""
    if not isinstance(intent, Intent):
        return f"not an Intent: {type(intent).__name__}"
    if not isinstance(intent.symbol, str) or not SYMBOL_RE.fullmatch(intent.symbol):
        return (f"symbol must be a str of 1-{MAX_SYMBOL_LEN} of A-Z a-z 0-9 _ . - / "
                f"(got {_short(intent.symbol)})")
    if not isinstance(intent.side, Side):
        return f"side must be Side.BUY or Side.SELL (got {_short(intent.side)})"
    qty = decimal_text(intent.qty)
    if qty[1] is not None:
        return f"qty {qty[1]}"
    price = decimal_text(intent.price)
    if price[1] is not None:
        return f"price {price[1]}"
    if intent.intent_id is not None and (
        not isinstance(intent.intent_id, str) or not ID_RE.fullmatch(intent.intent_id)
    ):
        return (f"intent_id must be 1-{MAX_INTENT_ID_LEN} printable ASCII characters without "
                f"spaces (got {_short(intent.intent_id)})")
    if not isinstance(intent.tag, str) or len(intent.tag) > MAX_TAG_LEN:
        return f"tag must be a str of at most {MAX_TAG_LEN} characters (got {_short(intent.tag)})"
    return qty[0], price[0]


def decimal_problem(value: object) -> str | None:
    """Why ``value`` is not a qty/price the gate can hold (None if it can)."""
    return decimal_text(value)[1]


def decimal_text(value: object) -> tuple[str, None] | tuple[None, str]:
    """(the plain decimal string of ``value`` the gate sends, None), or (None, why
    ``value`` is not a qty/price the gate can hold): a Decimal, finite, > 0, at most
    ``MAX_SIGNIFICANT_DIGITS`` significant digits, and the string itself at most
    ``MAX_DECIMAL_CHARS`` characters — what the gate script accepts (docs/gate.md,
    step 5). Counted on the string, not through ``normalize()``, which rounds to the
    context's precision (28 digits by default: a 29-digit value would read as fewer)."""
    if isinstance(value, bool) or not isinstance(value, Decimal):
        return None, f"must be a Decimal (got {type(value).__name__} {_short(value)})"
    if not value.is_finite():
        return None, f"must be finite (got {value})"
    if value <= 0:
        return None, f"must be greater than 0 (got {_short(value)})"
    # Exponent first: formatting Decimal('1e10000000') would build a 10-MB string. Within
    # it the string is at most the value's own digits and 41 more characters.
    adjusted = value.adjusted()
    if adjusted >= MAX_DECIMAL_CHARS or adjusted < -MAX_DECIMAL_CHARS:
        return None, f"is out of range (got {_short(value)})"
    text = format(value, "f")  # digits and at most one "." (value > 0: no sign, exponent)
    # the digits the script's mantissa holds: all but leading zeros and the fraction's
    # trailing zeros ("0.0100" has 1, "1000" has 4)
    whole, _, frac = text.partition(".")
    if len((whole + frac.rstrip("0")).lstrip("0")) > MAX_SIGNIFICANT_DIGITS:
        return None, f"has more than {MAX_SIGNIFICANT_DIGITS} significant digits (got {_short(value)})"
    if len(text) > MAX_DECIMAL_CHARS:
        return None, f"is longer than {MAX_DECIMAL_CHARS} characters as a decimal (got {_short(value)})"
    return text, None


def _short(value: object) -> str:
    """``repr`` cut to 40 characters: a denial detail never carries an unbounded string."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def client_order_id_for(intent_id: str) -> str:
    """The client order id of an intent: deterministic, so a retry re-sends the same id."""
    digest: str = _sha256(intent_id.encode()).hexdigest()
    return "c" + digest[:31]


@dataclass(frozen=True, slots=True)
class Admitted:
    """The gate admitted the intent and reserved its exposure.

    ``submit_deadline_ms`` (Unix ms) is the latest moment the order may reach the venue:
    no later than the lease's expiry. Venues that support it use it as the order's
    expiry so a paused instance's late order dies at the venue.
    """

    intent_id: str
    client_order_id: str
    token: int
    submit_deadline_ms: int
    duplicate: bool = False
    """True when the intent had already been admitted: nothing new was reserved."""
    nonce: int | None = None
    """EVM venues: the wallet nonce allocated to this order inside the gate."""
    order: Order | None = None
    """The order exactly as the gate recorded it (read back from Redis, never the
    caller's intent): what may be sent. None when the gate's answer was recovered
    after a lost reply, or the order record is gone; read the record then."""


@dataclass(frozen=True, slots=True)
class Denied:
    intent_id: str
    reason: DenyReason
    detail: str = ""


Decision = Admitted | Denied


@dataclass(frozen=True, slots=True)
class Order:
    """What the runtime hands a venue: an admitted intent and its permit."""

    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    token: int
    submit_deadline_ms: int
    nonce: int | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    """A venue fact: ``qty`` of ``client_order_id`` executed at ``price``. Applied once per ``fill_id``."""

    fill_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    ts_ms: int
    fee: Decimal = field(default=Decimal(0))
    """The fee in the account's quote currency, counted in realized PnL and the day's loss."""
    fees_uncounted: tuple[tuple[str, str], ...] = ()
    """Fees the venue could not value in the quote currency (ccxt: BNB fee payment), as
    ``(currency, amount)`` decimal text exactly as the venue reported them: NOT in ``fee``,
    so realized PnL and the loss budget undercount them. The ledger counts the fill in the
    trading day's ``fees_uncounted`` once, when it applies it (docs/keys.md)."""


# -- venue facts: what a venue answered (the ledger records them, venues/base.py produces them)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The venue acknowledged the order (it may rest, fill, or have filled already)."""

    venue_order_id: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The order certainly did not and will not execute."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """The outcome is unknown (timeout, dropped connection, ambiguous error). Reconcile."""

    reason: str


SubmitResult = Accepted | Rejected | Unknown


class VenueOrderState(StrEnum):
    OPEN = "open"
    """Live at the venue, may still execute."""
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    """The venue has no record of this client order id."""


@dataclass(frozen=True, slots=True)
class VenueOrderStatus:
    """A venue's answer to "what happened to this client order id?"."""

    client_order_id: str
    state: VenueOrderState
    filled_qty: Decimal = Decimal(0)
    fills: Sequence[Fill] = field(default_factory=tuple)
    can_still_arrive: bool = False
    """With ``NOT_FOUND``: True while an order sent earlier could still reach the venue
    (its deadline has not passed). Only when False may the ledger expire it."""
    detail: str = ""
