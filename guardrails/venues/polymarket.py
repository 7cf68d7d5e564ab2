"""The Polymarket venue: the official ``py-clob-client`` against the CLOB, off the event loop.

Invariant upheld: *every side effect is idempotent, and a stale copy is fenced at the
exchange*. The account is the wallet (``[account] id`` = the signer's address,
``signing.check_signer_is_account``); instruments are outcome tokens (``[venue.tokens]``
maps each symbol to its token id) with the market's tick; prices are probabilities in
(0, 1) and money is USDC (6 decimals).

* **Exact amounts.** py-clob-client computes an order's maker/taker amounts from floats
  (and floors: 0.29 shares would be signed as 0.28). The adapter computes them in
  ``Decimal`` instead (``size x price x 10^6`` USDC, ``size x 10^6`` shares), within the
  library's precision for the tick, and signs them with the library's own order builder
  (py_order_utils); the signed order's amounts must equal them, or nothing is sent.
* **Idempotency.** The EIP-712 salt is derived from the client order id and every other
  field from the admitted order, so a re-send is the same signed order — the same order
  hash — and the exchange refuses it as a duplicate; the adapter then answers with the
  original order. The hash is written to Redis (``keys.clob_orders`` / ``clob_hashes``)
  before the order is sent, so any instance can ``lookup``, ``cancel`` and attribute
  fills by it.
* **Expiry fence.** Orders are GTD with ``expiration = floor(deadline_s) + expiry_window``
  (the exchange's minimum window, 180 s by default): the exchange refuses an expiration
  less than that far ahead, so an order arriving after its submit deadline (a paused
  instance's late send) is refused; one that arrived in time expires at most
  ``expiry_window - 60 s`` (the exchange's one-minute security threshold) after the lease
  deadline. The refusal is the exchange's policy, not a contract rule (its minimum has
  changed over time, and ``expiry_window`` may exceed it), so an order the venue has no
  record of is reported as one that can still arrive until its signed expiration
  (``arrival_limit_ms``: with the longest window any config may sign, 600 s), which the
  contract enforces: its reservation is held until then.
* **Heartbeat fence.** While active the runtime runs ``term_service``: a CLOB heartbeat
  every ``heartbeat_interval``. If this instance pauses, dies or is partitioned, the
  exchange cancels all of the wallet's resting orders ~10 s after the last heartbeat.
  ``begin_term`` (on taking the lease, before reconciliation) cancels every resting order
  the previous term left (``cancel_on_takeover``) and starts the heartbeats.
* **Classification.** py-clob-client raises ``PolyApiException`` with no status for any
  transport error (even one after the request was written): that is ``Unknown``; a 4xx
  answer is ``Rejected``; a 5xx is ``Unknown``.

Fills come from ``/data/trades``, each leg of its own order's token and with the
exchange's fee (``trade_legs``, ``fee_of``); a trade row with an impossible number is a
``VenueError``, never a fill. A trade is a fill only once its on-chain settlement is
CONFIRMED; a FAILED one never is (it did not happen), and one still MATCHED, MINED or
RETRYING is carried in the fills cursor (``TradeCursor``) and read again until it
settles — so it is applied once, neither early nor lost. ``lookup`` reports an order
with a trade still settling as OPEN, never final (a final order releases its reservation
and would refuse that trade's fill). Marks come from ``/midpoints``, balances from
``/balance-allowance``.
The private key reaches py-clob-client (which signs by itself) and nothing else: no
log line, repr, exception or Redis value holds it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, TypeVar

import redis.asyncio as aioredis
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from redis.exceptions import RedisError

from guardrails import logs, redacted
from guardrails.config import PolymarketVenueConfig, RiskConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.model import Fill, Order, Side
from guardrails.venues import signing
from guardrails.venues.base import (
    Accepted,
    FillBatch,
    Rejected,
    SubmitResult,
    Unknown,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
    venue_number,
)

log = logging.getLogger("guardrails.venue.polymarket")

T = TypeVar("T")

UNITS = Decimal(1_000_000)
"""USDC and outcome tokens both have 6 decimals on the exchange contracts."""

SIZE_STEP = Decimal("0.01")
"""py-clob-client rounds sizes to 2 decimals (``ROUNDING_CONFIG[...].size``)."""

_STATES = {
    "LIVE": VenueOrderState.OPEN, "DELAYED": VenueOrderState.OPEN,
    "UNMATCHED": VenueOrderState.OPEN, "MATCHED": VenueOrderState.FILLED,
    "CANCELED": VenueOrderState.CANCELED, "CANCELED_MARKET_RESOLVED": VenueOrderState.CANCELED,
    "INVALID": VenueOrderState.REJECTED, "EXPIRED": VenueOrderState.EXPIRED,
}


EMBEDDED = "embedded"


def demo_signer() -> signing.Signer:
    """The well-known demo wallet of the embedded CLOB simulator: anyone can derive it,
    so it is used only with ``url = "embedded"`` and no key configured."""
    return signing.Signer.demo("polymarket-demo")


def salt_for(client_order_id: str) -> int:
    """The order's EIP-712 salt: a function of the client order id alone (< 2^53, so it
    survives every JSON parser), so a re-send signs the same order."""
    digest = hashlib.sha256(f"guardrails clob salt|{client_order_id}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def expiration_for(deadline_ms: int, window_ms: int) -> int:
    """GTD expiration (s) of an order that must arrive by ``deadline_ms``: the exchange
    refuses one arriving later, as its expiration is then less than the window ahead."""
    return deadline_ms // 1000 + window_ms // 1000


EXPIRY_WINDOW_MAX_MS = 600_000
"""The largest ``expiry_window`` a config may set (config.py bounds it): the longest
window any instance of this account could have signed an order with."""

ARRIVAL_MARGIN_MS = 2_000
"""Past the signed expiration's whole second: the exchange's clock, read here through
``/time`` in whole seconds, may lag the one that decides."""


def arrival_limit_ms(deadline_ms: int) -> int:
    """The last instant (ms) an order signed for ``deadline_ms`` could still reach a match:
    its signed expiration (the CTF Exchange contract matches nothing later, whatever the
    API's rule), taken with the longest window any config could have signed it with — not
    this instance's own: the window may have been lowered since, or a standby's config
    differ (only the risk limits are compared) — and the whole second it names."""
    return expiration_for(deadline_ms, EXPIRY_WINDOW_MAX_MS) * 1000 + 1_000 + ARRIVAL_MARGIN_MS


def _status_of(exc: Exception) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _message_of(exc: Exception) -> str:
    msg = getattr(exc, "error_msg", None)
    if isinstance(msg, dict):
        msg = msg.get("error") or msg.get("errorMsg") or msg
    return redacted.excerpt(msg if msg is not None else type(exc).__name__, 200)


MAX_FEE_RATE_BPS = 10_000
"""A fee rate above 100 % is not an answer the exchange can give: the trade is malformed."""


def _amount(v: object, what: str) -> Decimal:
    d = venue_number(v, what)
    if d < 0:
        raise ValueError(f"{what} {d} is negative")
    return d


def _price(v: object, what: str) -> Decimal:
    p = venue_number(v, what)
    if not 0 < p < 1:
        raise ValueError(f"{what} {p} is not a probability in (0, 1)")
    return p


def fee_of(size: Decimal, price: Decimal, fee_rate_bps: int) -> Decimal:
    """The USDC value of the fee the CTF Exchange charges one leg of ``size`` shares at
    ``price`` (``CalculatorHelper.calculateFee``): ``bps x min(p, 1 - p) x size / 10^4``
    — on a SELL in USDC, on a BUY in shares worth exactly that at ``price``. Exact: the
    ledger rounds it up to micro-USDC, against the account."""
    return size * min(price, 1 - price) * fee_rate_bps / Decimal(10_000)


class TradeSettlement(Enum):
    """What a trade's ``status`` means for the ledger. On the CLOB a match settles on
    chain: MATCHED -> MINED -> CONFIRMED, or MATCHED -> RETRYING -> FAILED."""

    CONFIRMED = "confirmed"
    """Final and successful: the trade happened, its legs are fills."""
    FAILED = "failed"
    """Final and failed: the trade did not happen, it is never a fill."""
    UNSETTLED = "unsettled"
    """MATCHED, MINED, RETRYING (or a status this adapter does not know): not a fill yet,
    re-read until it is CONFIRMED or FAILED."""


def settlement_of(status: str) -> TradeSettlement:
    if status == "CONFIRMED":
        return TradeSettlement.CONFIRMED
    if status == "FAILED":
        return TradeSettlement.FAILED
    return TradeSettlement.UNSETTLED


@dataclass(frozen=True, slots=True)
class TradeLeg:
    """This wallet's part of one CLOB trade: its taker order, or one of its maker orders."""

    order_hash: str
    asset_id: str
    """The token this leg's order traded: a maker order's own, which in a complementary
    match (a YES bid against a NO bid) is not the trade's ``asset_id``."""
    side: Side
    size: Decimal
    price: Decimal
    fee: Decimal
    fill_id: str
    trade_id: str
    match_time: int
    status: str
    """The trade's settlement status as the exchange wrote it, upper-cased."""

    @property
    def settlement(self) -> TradeSettlement:
        return settlement_of(self.status)


MAX_TRADE_ID = 128
_CURSOR_SEPARATORS = frozenset(",| \t\r\n")


def _cursor_safe(ident: str) -> bool:
    """A trade id the fills cursor can hold: 1..128 characters, none of its separators."""
    return 0 < len(ident) <= MAX_TRADE_ID and not _CURSOR_SEPARATORS.intersection(ident)


def trade_legs(t: Any, address: str) -> list[TradeLeg]:
    """The legs of ``address`` (lower-cased) in one ``/data/trades`` row, each checked:
    side BUY or SELL, a size > 0, a price in (0, 1), a fee rate in 0..10^4 bps, a match
    time > 0, a status string, an id the fills cursor can hold. Raises
    ``ValueError``/``KeyError``/``TypeError`` for a row that is not that: the venue's
    answer is wrong, and no ledger entry is made from it."""
    if not isinstance(t, dict):
        raise TypeError("trade row is not an object")
    trade_id = str(t["id"])
    if not _cursor_safe(trade_id):
        raise ValueError(f"trade id {trade_id[:40]!r} is empty, longer than {MAX_TRADE_ID} or "
                         "holds a separator of the fills cursor (',', '|', white space)")
    match_time = int(venue_number(t["match_time"], "match_time"))
    if match_time <= 0 or match_time != venue_number(t["match_time"], "match_time"):
        raise ValueError(f"trade {trade_id[:40]}: match_time {t['match_time']!r} is not a "
                         "positive whole second")
    if not isinstance(t["status"], str):
        raise TypeError(f"trade {trade_id[:40]}: status {t['status']!r} is not a string")
    status = t["status"].upper()

    def leg(row: Any, order_hash: object, size: object, fill_id: str) -> TradeLeg:
        if not isinstance(row, dict):
            raise TypeError("trade leg is not an object")
        side_s = str(row["side"]).upper()
        if side_s not in ("BUY", "SELL"):
            raise ValueError(f"trade {trade_id[:40]}: side {row['side']!r} is not BUY or SELL")
        qty = venue_number(size, "size")
        if qty <= 0:
            raise ValueError(f"trade {trade_id[:40]}: size {qty} is not positive")
        price = _price(row["price"], f"trade {trade_id[:40]}: price")
        bps = venue_number(row.get("fee_rate_bps", 0), "fee_rate_bps")
        if bps != bps.to_integral_value() or not 0 <= bps <= MAX_FEE_RATE_BPS:
            raise ValueError(f"trade {trade_id[:40]}: fee_rate_bps {bps} is not 0..10000")
        return TradeLeg(
            order_hash=str(order_hash), asset_id=str(row["asset_id"]),
            side=Side.BUY if side_s == "BUY" else Side.SELL, size=qty, price=price,
            fee=fee_of(qty, price, int(bps)), fill_id=fill_id, trade_id=trade_id,
            match_time=match_time, status=status,
        )

    out: list[TradeLeg] = []
    makers = t.get("maker_orders") or []
    if not isinstance(makers, list):
        raise TypeError("maker_orders is not a list")
    if str(t.get("trader_side", "")).upper() == "TAKER" or not makers:
        out.append(leg(t, t["taker_order_id"], t["size"], trade_id))
    for m in makers:
        if isinstance(m, dict) and str(m.get("maker_address", "")).lower() == address:
            out.append(leg(m, m["order_id"], m["matched_amount"],
                           f"{trade_id}:{str(m['order_id'])[:18]}"))
    return out


MAX_UNSETTLED = 256
"""At most this many unsettled trades ride in one fills cursor; while it is full the
cursor does not move past the next unsettled trade (it is read again later)."""


MAX_ASKED_BY_ID = 16
"""At most this many unsettled trades missing from the range read are asked for by id in
one ``fills_since`` (the least recently asked first): a bounded cost per call."""


MAX_LOGGED_FAILED = 10_000
"""How many FAILED trade ids an instance remembers having logged."""


@dataclass(frozen=True, slots=True)
class TradeCursor:
    """Where ``fills_since`` is in the wallet's trades, as the string
    ``"<top>:<ids at top>[|<time>/<id>,...]"``.

    ``top`` is the match second read up to and ``at_top`` the trades of that second
    already taken (their fills returned, or their failure logged, or held as unsettled);
    every trade before ``top`` was taken. ``unsettled`` are the taken trades not yet
    CONFIRMED or FAILED (trade id -> match second), read again every time until they
    settle — so a cursor never moves past a trade in a way that loses it."""

    top: int = 0
    at_top: frozenset[str] = frozenset()
    unsettled: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> TradeCursor:
        """The cursor ``cursor`` spells (None or '': the start). ``VenueError`` naming
        the cursor for anything else — a damaged cursor would lose or repeat trades."""
        if not cursor:
            return cls()

        def bad(why: str) -> VenueError:
            return VenueError(f"polymarket venue: malformed fills cursor {cursor[:80]!r}: {why}")

        head, _, tail = cursor.partition("|")
        top_s, sep, ids_s = head.partition(":")
        if not sep or not (top_s.isascii() and top_s.isdigit()):
            raise bad("expected <match second>:<trade ids>[|<second>/<trade id>,...]")
        at_top = ids_s.split(",") if ids_s else []
        if not all(_cursor_safe(i) for i in at_top):
            raise bad("a trade id is empty, too long or holds a separator")
        unsettled: dict[str, int] = {}
        for entry in tail.split(",") if tail else []:
            t_s, sep, trade_id = entry.partition("/")
            if not sep or not (t_s.isascii() and t_s.isdigit()) or int(t_s) <= 0 \
                    or not _cursor_safe(trade_id) or trade_id in unsettled:
                raise bad(f"unsettled entry {entry[:40]!r} is not <match second>/<trade id> "
                          "(each trade once)")
            unsettled[trade_id] = int(t_s)
        if len(unsettled) > MAX_UNSETTLED:
            raise bad(f"{len(unsettled)} unsettled trades, more than {MAX_UNSETTLED}")
        return cls(int(top_s), frozenset(at_top), unsettled)

    def __str__(self) -> str:
        out = f"{self.top}:{','.join(sorted(self.at_top))}"
        if self.unsettled:
            out += "|" + ",".join(f"{t}/{i}" for i, t in sorted(self.unsettled.items(),
                                                               key=lambda it: (it[1], it[0])))
        return out

    def taken(self, leg: TradeLeg) -> bool:
        """Whether ``leg``'s trade was taken by an earlier batch and is settled."""
        if leg.trade_id in self.unsettled:
            return False
        return leg.match_time < self.top or (leg.match_time == self.top
                                             and leg.trade_id in self.at_top)


class PolymarketVenue:
    """One wallet at the Polymarket CLOB, through py-clob-client."""

    def __init__(
        self,
        venue_cfg: PolymarketVenueConfig,
        account: AccountId,
        signer: signing.Signer | Any = None,
        *,
        redis: aioredis.Redis,
        risk: RiskConfig | None = None,
        source: str = "",
    ) -> None:
        self.name = "polymarket"
        self._cfg = venue_cfg
        self._account_id = account
        self._keys = AccountKeys(account)
        self._redis = redis
        self._risk = risk
        self._source = source
        if signer is not None and not isinstance(signer, signing.Signer):
            signer = signing.Signer(signer)
        self._signer: signing.Signer | None = signer
        self._client: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._symbols = {tok: sym for sym, tok in venue_cfg.tokens.items()}
        self._heartbeat_id: str | None = None
        self._heartbeat_failing = False
        self._stuck_logged: set[str] = set()
        """Trades logged as unsettled for too long (once each, while they stay so)."""
        self._failed_logged: set[str] = set()
        """FAILED trades logged (once each by this instance)."""
        self._full_logged = False
        """Whether the last ``fills_since`` stopped at a full cursor (said once a spell)."""
        self._asked_by_id: dict[str, float] = {}
        """Unsettled trades last asked for by id (monotonic s): the least recent first."""
        self._url = venue_cfg.url.rstrip("/")

    def __repr__(self) -> str:
        address = self._signer.address if self._signer else "(key not loaded)"
        return f"PolymarketVenue(url={self._url!r}, account={address})"

    __str__ = __repr__

    @property
    def address(self) -> str:
        if self._signer is None:
            raise VenueError("polymarket venue: not started (no signing key loaded)")
        return self._signer.address

    # -- running py-clob-client off the loop ------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one synchronous library call in the venue's threads, bounded in time.

        A call that overruns is abandoned (its thread finishes on its own; httpx bounds
        it) and surfaces as ``TimeoutError``: the caller classifies it as unknown."""
        if self._executor is None:
            raise VenueError("polymarket venue: not started")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self._executor, fn, *args)
        return await asyncio.wait_for(fut, self._cfg.request_timeout / 1000 + 1)

    def _lib(self) -> Any:
        if self._client is None:
            raise VenueError("polymarket venue: not started")
        return self._client

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        if self._signer is None and self._cfg.url == EMBEDDED and not self._cfg.keystore \
                and not os.environ.get(self._cfg.key_env):
            # The embedded CLOB simulator holds no funds: with no key configured, sign
            # with the well-known demo wallet (config/polymarket-sim.toml's account).
            self._signer = demo_signer()
            logs.event(log, "venue.polymarket.demo_key", address=self._signer.address,
                       reason=f"url=embedded and ${self._cfg.key_env} unset")
        if self._signer is None:
            try:
                self._signer = signing.load_signer(
                    key_env=self._cfg.key_env, keystore=self._cfg.keystore,
                    keystore_password_env=self._cfg.keystore_password_env,
                )
            except signing.SigningKeyError as e:
                raise VenueError(f"polymarket venue: {e}") from None
        signing.check_signer_is_account(
            self._account_id, self._signer.address, source=self._source, venue="polymarket"
        )
        # httpx (py-clob-client's transport) logs every request line at INFO: one per
        # heartbeat and poll. Our own events say what happened.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        if self._cfg.url == EMBEDDED:
            self._url = await self._start_embedded()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="clob")
        try:
            self._client = await self._call(self._connect)
            if self._risk is not None:
                await self._call(self._check_market, self._risk)
        except VenueError:
            await self.close()
            raise
        except Exception as e:
            await self.close()
            raise VenueError(
                f"polymarket venue: cannot connect to {self._url}: {_message_of(e)}"
            ) from None
        logs.event(log, "venue.polymarket.started", url=self._url,
                   account=self._signer.address)

    async def _start_embedded(self) -> str:
        """Reach the per-user CLOB simulator daemon, starting it if needed (``simdaemon``)."""
        from guardrails.sim import daemon

        if self._cfg.simulator is None or self._risk is None:
            raise VenueError("polymarket venue: url = 'embedded' needs [venue.simulator]")
        spec = daemon.MarketSpec(self._cfg.simulator, self._risk, self._cfg.chain_id,
                                    clob_tokens=dict(self._cfg.tokens))
        try:
            return await asyncio.to_thread(
                functools.partial(daemon.ensure_running, spec, root=daemon.clob_root()))
        except daemon.SimDaemonError as e:
            raise VenueError(f"polymarket venue: {e}") from None

    def _connect(self) -> Any:
        from py_clob_client.client import ClobClient

        assert self._signer is not None
        client = ClobClient(self._url, chain_id=self._cfg.chain_id,
                            key=self._signer.private_key_hex())
        creds = client.create_or_derive_api_creds()
        for value in (getattr(creds, "api_key", None), getattr(creds, "api_secret", None),
                      getattr(creds, "api_passphrase", None)):
            redacted.register(value)  # the L2 credentials: masked in every log line
        if creds is None:
            raise VenueError("polymarket venue: the exchange gave no API credentials")
        client.set_api_creds(creds)
        return client

    def _check_market(self, risk: RiskConfig) -> None:
        """The configured instruments are the market's: tick equal, sizes on its grid."""
        for sym, inst in risk.instruments.items():
            tick = Decimal(str(self._client.get_tick_size(self._cfg.tokens[sym])))
            if tick != inst.tick:
                raise VenueError(
                    f"polymarket venue: {sym} (token {self._cfg.tokens[sym][:12]}…) has tick "
                    f"{tick} at the exchange, the config says {inst.tick}{self._where()}"
                )
            if inst.lot % SIZE_STEP != 0:
                raise VenueError(f"polymarket venue: {sym}: lot {inst.lot} must be a multiple "
                                 f"of {SIZE_STEP} (the CLOB's size grid){self._where()}")

    def _where(self) -> str:
        return f" in {self._source}" if self._source else ""

    async def close(self) -> None:
        self._client = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- building the signed order ----------------------------------------------------------

    def _build(self, order: Order, token: str) -> tuple[Any, str] | Rejected:
        """(signed order, its hash), or why it cannot be sent exactly. Runs in a thread."""
        from py_clob_client.config import get_contract_config
        from py_clob_client.order_builder.builder import ROUNDING_CONFIG
        from py_order_utils.builders import OrderBuilder as UtilsOrderBuilder
        from py_order_utils.model import BUY as UTILS_BUY
        from py_order_utils.model import EOA, OrderData
        from py_order_utils.model import SELL as UTILS_SELL
        from py_order_utils.signer import Signer as UtilsSigner

        client = self._lib()
        assert self._signer is not None
        tick_s = str(client.get_tick_size(token))
        neg_risk = bool(client.get_neg_risk(token))
        fee = int(client.get_fee_rate_bps(token) or 0)
        tick = Decimal(tick_s)
        if tick_s not in ROUNDING_CONFIG:
            return Rejected(f"unsupported_tick: {tick_s}")
        price, qty = order.price, order.qty
        if not (0 < price < 1) or price % tick != 0:
            return Rejected(f"off_tick: price {price} not on tick {tick} inside (0, 1)")
        if qty <= 0 or qty % SIZE_STEP != 0:
            return Rejected(f"off_lot: size {qty} not a positive multiple of {SIZE_STEP}")
        # The amounts, in Decimal: the library's own get_order_amounts multiplies floats
        # and floors (0.29 shares x 100 = 28.999999999999996 -> 0.28 signed), so it is not
        # asked; the amounts are held to its precision for this tick (ROUNDING_CONFIG:
        # size 2 decimals, the USDC amount the tick's decimals + 2), which an exact
        # product of an on-tick price and an on-grid size always meets.
        shares, usdc = qty * UNITS, qty * price * UNITS
        amount_step = Decimal(1).scaleb(6 - ROUNDING_CONFIG[tick_s].amount)
        if shares != shares.to_integral_value() or usdc % amount_step != 0:
            return Rejected(f"not_exact: {qty} x {price} is not whole at the market's "
                            f"{ROUNDING_CONFIG[tick_s].amount}-decimal USDC precision")
        exact = (int(usdc), int(shares)) if order.side is Side.BUY else (int(shares), int(usdc))
        side_i = UTILS_BUY if order.side is Side.BUY else UTILS_SELL
        address = to_checksum_address(self._signer.address)
        data = OrderData(
            maker=address, tokenId=token, makerAmount=str(exact[0]), takerAmount=str(exact[1]),
            side=side_i, feeRateBps=str(fee), nonce="0", signer=address,
            expiration=str(expiration_for(order.submit_deadline_ms, self._cfg.expiry_window)),
            signatureType=EOA,
        )
        salt = salt_for(order.client_order_id)
        builder = UtilsOrderBuilder(
            get_contract_config(self._cfg.chain_id, neg_risk).exchange, self._cfg.chain_id,
            UtilsSigner(key=self._signer.private_key_hex()), salt_generator=lambda: salt,
        )
        signed = builder.build_signed_order(data)
        if (signed.order["makerAmount"], signed.order["takerAmount"]) != exact:
            return Rejected("amount_mismatch: the signed order's amounts are not exact; not sent")
        digest = "0x" + keccak(signed.order.signable_bytes(domain=builder.domain_separator)).hex()
        return signed, digest

    # -- the Venue protocol -----------------------------------------------------------------

    async def submit(self, order: Order) -> SubmitResult:
        from py_clob_client.clob_types import OrderType

        token = self._cfg.tokens.get(order.symbol)
        if token is None:
            return Rejected("unknown_symbol")
        try:
            built = await self._call(self._build, order, token)
        except Exception as e:
            # Nothing was sent: the build (tick/fee lookups) failed before the post.
            return Rejected(f"venue_unreachable: {_message_of(e)}")
        if isinstance(built, Rejected):
            logs.event(log, "venue.polymarket.refused", logging.WARNING,
                       coid=order.client_order_id, reason=built.reason)
            return built
        signed, digest = built
        # The hash is recorded before the order can exist, so every instance finds it.
        try:
            await self._redis.hsetnx(self._keys.clob_orders, order.client_order_id, digest)
            recorded = await self._hash_of(order.client_order_id)
            if recorded == digest:
                await self._redis.hset(self._keys.clob_hashes, digest, order.client_order_id)
        except (RedisError, OSError) as e:
            # Not sent: an order whose hash is not recorded could not be looked up.
            return self._log_submit(order, Rejected(f"redis_unavailable: {type(e).__name__}"))
        if recorded != digest:
            return Unknown(f"rebuilt order differs from its first send ({recorded}); not sent, "
                           "reconcile by the recorded hash")
        try:
            resp = await self._call(self._lib().post_order, signed, OrderType.GTD)
        except TimeoutError:
            return self._log_submit(order, Unknown("no answer: timeout"))
        except Exception as e:
            result = await self._classify_post_error(e, digest)
            return self._log_submit(order, result)
        if isinstance(resp, dict) and resp.get("success") and resp.get("orderID") == digest:
            return self._log_submit(order, Accepted(digest))
        if isinstance(resp, dict) and resp.get("success") is False:
            return self._log_submit(order, Rejected(str(resp.get("errorMsg", ""))[:200]))
        return self._log_submit(order, Unknown("unparseable answer"))

    async def _classify_post_error(self, e: Exception, digest: str) -> SubmitResult:
        status, msg = _status_of(e), _message_of(e)
        if status is None or status >= 500:
            return Unknown(f"no answer: {msg[:80]}")
        if "Duplicated" in msg:
            # The exchange already has this very order (a re-send): answer with it.
            try:
                found = await self._call(self._lib().get_order, digest)
            except Exception:
                return Unknown("duplicate; original not readable")
            state = _STATES.get(str((found or {}).get("status", "")))
            if state is VenueOrderState.REJECTED:
                return Rejected(str(found.get("reason", "rejected")))
            return Accepted(digest) if state is not None else Unknown("duplicate; unknown state")
        return Rejected(msg)

    def _log_submit(self, order: Order, result: SubmitResult) -> SubmitResult:
        logs.event(log, "venue.polymarket.submit", coid=order.client_order_id,
                   result=type(result).__name__.lower(), detail=getattr(result, "reason", None))
        return result

    async def _hash_of(self, client_order_id: str) -> str | None:
        raw = await self._redis.hget(self._keys.clob_orders, client_order_id)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def _get_order(self, digest: str) -> dict[str, Any] | None:
        try:
            found = await self._call(self._lib().get_order, digest)
        except Exception as e:
            if _status_of(e) == 404:
                return None
            raise VenueError(f"polymarket venue: order lookup failed: {_message_of(e)}") from None
        return found if isinstance(found, dict) and found else None

    async def cancel(self, client_order_id: str) -> SubmitResult:
        try:
            digest = await self._hash_of(client_order_id)
        except (RedisError, OSError) as e:
            return Unknown(f"redis_unavailable: {type(e).__name__}")
        if digest is None:
            # Never built by any instance; the CLOB keeps no tombstone, so nothing is
            # promised: the expiry fence bounds a late arrival.
            return Rejected("not_found")
        try:
            resp = await self._call(self._lib().cancel, digest)
        except Exception as e:
            return Unknown(f"no answer: {_message_of(e)[:80]}")
        if not isinstance(resp, dict) or not isinstance(resp.get("canceled", []), list) \
                or not isinstance(resp.get("not_canceled", {}), dict):
            # Not the exchange's {canceled, not_canceled}: whether it cancelled is unknown.
            return Unknown(f"unparseable cancel answer: {str(resp)[:80]!r}")
        if digest in resp.get("canceled", []):
            return Accepted(digest)
        try:
            # As lookup sees it: an order with a trade still settling is not final (a
            # FAILED settlement gives its size back, and the exchange may re-open it).
            status = await self.lookup(client_order_id)
        except VenueError as e:
            return Unknown(str(e))
        if status.state is VenueOrderState.NOT_FOUND:
            return Rejected("not_found")
        if status.state is not VenueOrderState.OPEN:
            return Accepted(digest)  # already final
        why = str(resp.get("not_canceled", {}).get(digest, ""))[:80]
        return Unknown(f"not canceled: {why}{'; ' + status.detail if status.detail else ''}")

    async def _server_ms(self) -> int:
        try:
            return int(await self._call(self._lib().get_server_time)) * 1000
        except Exception as e:
            raise VenueError(f"polymarket venue: time failed: {_message_of(e)}") from None

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        digest = await self._hash_of(client_order_id)
        found = None if digest is None else await self._get_order(digest)
        if digest is None or found is None:
            now = await self._server_ms()
            # Not "until the deadline": the exchange's minimum window is its policy (it has
            # been 10 s, 60 s, 180 s) and ``expiry_window`` may be set above it, so an order
            # sent earlier may still be accepted after its deadline. What no policy moves:
            # the CTF Exchange contract matches nothing past the order's signed
            # expiration. Until then its reservation is held (docs/venues.md).
            return VenueOrderStatus(
                client_order_id=client_order_id, state=VenueOrderState.NOT_FOUND,
                can_still_arrive=deadline_ms is None or now <= arrival_limit_ms(deadline_ms),
            )
        try:
            state = _STATES[str(found["status"])]
            # By market (condition id), not token: a maker leg of a complementary match
            # (our NO bid against a YES bid) is a trade row of the other outcome's token.
            legs = [(leg, fill) for leg, fill in
                    await self._trades(market=str(found.get("market") or ""))
                    if leg.order_hash == digest]
            fills = tuple(fill for leg, fill in legs if leg.settlement is TradeSettlement.CONFIRMED)
            filled = sum((f.qty for f in fills), Decimal(0))
            pending = sorted({leg.trade_id for leg, _ in legs
                              if leg.settlement is TradeSettlement.UNSETTLED})
            detail = str(found.get("reason", ""))
            if pending:
                # A trade still settling may yet be CONFIRMED (a fill) or FAILED (its size
                # returns): the order is not final, whatever the exchange calls it — final
                # now, the ledger would release its reservation and refuse that fill.
                state, detail = VenueOrderState.OPEN, (
                    f"{len(pending)} trade(s) not settled yet: {','.join(pending)[:120]}")
            elif state is VenueOrderState.FILLED and filled < _amount(
                    found["original_size"], "original_size"):
                # Matched, but not all of it CONFIRMED (a trade FAILED and the exchange has
                # not re-opened or cancelled the order): not filled, its reservation stays.
                state, detail = VenueOrderState.OPEN, (
                    f"matched {found.get('size_matched')} but {filled} settled")
            return VenueOrderStatus(
                client_order_id=client_order_id, state=state, filled_qty=filled,
                fills=fills, detail=detail,
            )
        except (KeyError, ValueError, TypeError, InvalidOperation) as e:
            raise VenueError(f"polymarket venue: lookup: malformed answer ({type(e).__name__}: "
                             f"{str(e)[:160]})"
                             ) from None

    async def _trades(self, *, market: str = "", after: int = 0, trade_id: str = ""
                      ) -> list[tuple[TradeLeg, Fill]]:
        """Each of this wallet's trade legs of an instrument, and the fill it is if (and
        only if) its trade is CONFIRMED (``TradeLeg.settlement``); with ``trade_id``, only
        that trade's legs (asked by id, whatever its match time).

        Raises ``ValueError`` (or ``KeyError``/``TypeError``/``InvalidOperation``) for a
        trade row that is not a well-formed leg (``trade_legs``): nothing is returned."""
        from py_clob_client.clob_types import TradeParams

        params = TradeParams(id=trade_id or None, maker_address=self.address,
                             market=market or None, after=after or None)
        try:
            rows = await self._call(self._lib().get_trades, params)
        except Exception as e:
            raise VenueError(f"polymarket venue: trades failed: {_message_of(e)}") from None
        if not isinstance(rows, list):
            raise TypeError("trades: not a list")
        legs = [leg for t in rows for leg in trade_legs(t, self.address)
                if not trade_id or leg.trade_id == trade_id]
        coids = await self._redis.hmget(self._keys.clob_hashes, [leg.order_hash for leg in legs]) \
            if legs else []
        out = []
        for leg, coid in zip(legs, coids, strict=True):
            symbol = self._symbols.get(leg.asset_id)
            if symbol is None:
                continue  # another market's token: not an instrument of this account
            coid_s = coid.decode() if isinstance(coid, bytes) else (coid or leg.order_hash)
            out.append((leg, Fill(
                fill_id=leg.fill_id, client_order_id=coid_s, symbol=symbol, side=leg.side,
                qty=leg.size, price=leg.price, ts_ms=leg.match_time * 1000, fee=leg.fee,
            )))
        return out

    async def fills_since(self, cursor: str | None) -> FillBatch:
        """The CONFIRMED fills after ``cursor`` (``TradeCursor``). A FAILED trade is logged
        (``venue.polymarket.trade_failed``) and never a fill; an unsettled one rides in
        the cursor and is read again on every call until it settles (one unsettled past
        ``settlement_warn_after`` is logged once: ``venue.polymarket.trade_unsettled``).
        Trades are re-read from the oldest unsettled one's match second."""
        at = TradeCursor.parse(cursor)
        start = min([at.top, *at.unsettled.values()])
        try:
            legs = await self._trades(after=start - 1 if start else 0)
            # An unsettled trade the range did not answer (its match time moved before
            # the one the cursor holds, or the listing dropped it) is asked for by id: a
            # range from its recorded second would never see it again, and its fill would
            # be lost while it held a place in the cursor.
            listed = {leg.trade_id for leg, _ in legs}
            missing = [t for t in sorted(at.unsettled, key=lambda t: self._asked_by_id.get(t, 0))
                       if t not in listed][:MAX_ASKED_BY_ID]
            for trade_id in missing:
                self._asked_by_id[trade_id] = time.monotonic()
                legs += await self._trades(trade_id=trade_id)
        except (KeyError, ValueError, TypeError, InvalidOperation) as e:
            raise VenueError(f"polymarket venue: trades: malformed answer ({type(e).__name__}: "
                             f"{str(e)[:160]})"
                             ) from None
        trades: dict[str, list[tuple[TradeLeg, Fill]]] = {}
        for leg, fill in legs:
            if not at.taken(leg):
                trades.setdefault(leg.trade_id, []).append((leg, fill))
        fills: dict[str, Fill] = {}
        top, at_top, unsettled = at.top, set(at.at_top), dict(at.unsettled)
        full = False
        for trade_id, group in sorted(trades.items(),
                                      key=lambda kv: (kv[1][0][0].match_time, kv[0])):
            first = group[0][0]
            if trade_id not in at.unsettled:
                # A new trade: the cursor moves onto it, unless it would be one unsettled
                # trade more than the cursor holds — then it stops before it (and before
                # every later one), to read it again next time.
                full = full or (first.settlement is TradeSettlement.UNSETTLED
                                and len(unsettled) >= MAX_UNSETTLED)
                if full:
                    continue
                if first.match_time > top:
                    top, at_top = first.match_time, set()
                at_top.add(trade_id)
            match first.settlement:
                case TradeSettlement.CONFIRMED:
                    fills.update((fill.fill_id, fill) for _, fill in group)
                    unsettled.pop(trade_id, None)
                case TradeSettlement.FAILED:
                    self._log_failed(group)
                    unsettled.pop(trade_id, None)
                case TradeSettlement.UNSETTLED:
                    unsettled[trade_id] = first.match_time
                    self._warn_if_stuck(group)
        listed = {leg.trade_id for leg, _ in legs}
        for trade_id in unsettled.keys() - listed:
            self._warn_if_absent(trade_id, unsettled[trade_id])
        self._stuck_logged.difference_update(t for t in at.unsettled if t not in unsettled)
        if full and not self._full_logged:
            logs.event(log, "venue.polymarket.cursor_full", logging.WARNING,
                       unsettled=len(unsettled), top=top,
                       action="the fills cursor holds no more unsettled trades: later "
                              "trades (and their fills) are read once some of these settle")
        self._full_logged = full
        for trade_id in self._asked_by_id.keys() - unsettled.keys():
            del self._asked_by_id[trade_id]
        return FillBatch(fills=tuple(fills.values()),
                         cursor=str(TradeCursor(top, frozenset(at_top), unsettled)))

    def _log_failed(self, group: Sequence[tuple[TradeLeg, Fill]]) -> None:
        """A FAILED trade did not happen: no fill, and the order's size returns (the
        exchange re-opens or cancels it; ``lookup`` says which). Said once per trade by
        this instance, however many cursors read it (a new term's pump reads from the
        start)."""
        if group[0][0].trade_id in self._failed_logged:
            return
        if len(self._failed_logged) >= MAX_LOGGED_FAILED:
            self._failed_logged.clear()  # bounded: at worst an old failure is said again
        self._failed_logged.add(group[0][0].trade_id)
        for leg, fill in group:
            logs.event(log, "venue.polymarket.trade_failed", logging.WARNING,
                       trade_id=leg.trade_id, order=leg.order_hash,
                       client_order_id=fill.client_order_id, symbol=fill.symbol,
                       side=fill.side.value, qty=fill.qty, price=fill.price,
                       action="not a fill: the on-chain settlement failed")

    def _stuck_age_s(self, trade_id: str, match_time: int) -> int | None:
        """The age (s) of an unsettled trade due its one ``trade_unsettled`` line: past
        ``settlement_warn_after`` and not said yet in this process (None otherwise)."""
        age_s = time.time() - match_time
        if age_s * 1000 < self._cfg.settlement_warn_after or trade_id in self._stuck_logged:
            return None
        self._stuck_logged.add(trade_id)
        return int(age_s)

    def _warn_if_absent(self, trade_id: str, match_time: int) -> None:
        """An unsettled trade the exchange answers neither in the range nor by id: kept
        in the cursor (it may still settle), said once past ``settlement_warn_after``."""
        age_s = self._stuck_age_s(trade_id, match_time)
        if age_s is not None:
            logs.event(log, "venue.polymarket.trade_unsettled", logging.WARNING,
                       trade_id=trade_id, status="ABSENT", age_s=age_s,
                       action="the exchange no longer lists it; kept in the fills cursor and "
                              "asked for by id until it settles")

    def _warn_if_stuck(self, group: Sequence[tuple[TradeLeg, Fill]]) -> None:
        leg, fill = group[0]
        age_s = self._stuck_age_s(leg.trade_id, leg.match_time)
        if age_s is not None:
            logs.event(log, "venue.polymarket.trade_unsettled", logging.WARNING,
                       trade_id=leg.trade_id, status=leg.status, order=leg.order_hash,
                       client_order_id=fill.client_order_id, age_s=age_s,
                       action="not a fill yet; read again until CONFIRMED or FAILED")

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        from py_clob_client.clob_types import BookParams

        wanted = [(s, self._cfg.tokens[s]) for s in symbols if s in self._cfg.tokens]
        if not wanted:
            return {}
        try:
            mids = await self._call(self._lib().get_midpoints,
                                    [BookParams(token_id=t) for _, t in wanted])
            if not isinstance(mids, dict):
                raise TypeError("not an object")
            out = {s: venue_number(mids[t], f"midpoint of {s}") for s, t in wanted if t in mids}
            for s, mid in out.items():
                if not 0 <= mid <= 1:
                    raise ValueError(f"midpoint of {s} {mid} is not a probability in [0, 1]")
            return out
        except (KeyError, ValueError, TypeError) as e:
            raise VenueError(f"polymarket venue: midpoints: malformed ({type(e).__name__}: "
                             f"{str(e)[:160]})"
                             ) from None
        except Exception as e:
            raise VenueError(f"polymarket venue: midpoints failed: {_message_of(e)}") from None

    async def balances(self) -> dict[str, Decimal]:
        from py_clob_client.clob_types import AssetType, BalanceAllowanceParams

        lib = self._lib()
        out: dict[str, Decimal] = {}
        try:
            usdc = await self._call(lib.get_balance_allowance, BalanceAllowanceParams(
                asset_type=AssetType.COLLATERAL, signature_type=0))
            out["USDC"] = venue_number(usdc["balance"], "USDC balance") / UNITS
            for sym, tok in self._cfg.tokens.items():
                row = await self._call(lib.get_balance_allowance, BalanceAllowanceParams(
                    asset_type=AssetType.CONDITIONAL, token_id=tok, signature_type=0))
                out[sym] = venue_number(row["balance"], f"{sym} balance") / UNITS
        except (KeyError, ValueError, TypeError) as e:
            raise VenueError(f"polymarket venue: balance: malformed ({type(e).__name__}: "
                             f"{str(e)[:160]})"
                             ) from None
        except Exception as e:
            raise VenueError(f"polymarket venue: balance failed: {_message_of(e)}") from None
        return out

    # -- the term's venue fences (runtime: before reconciliation, and while active) -----------

    async def begin_term(self) -> None:
        """On taking the lease: cancel what the previous term left resting (unless
        ``cancel_on_takeover = false``), then start the heartbeat dead-man switch.
        Raises ``VenueError`` when the exchange cannot be asked (the runtime retries)."""
        if self._cfg.cancel_on_takeover:
            try:
                resp = await self._call(self._lib().cancel_all)
            except Exception as e:
                raise VenueError(f"polymarket venue: cancel-all failed: {_message_of(e)}"
                                 ) from None
            logs.event(log, "venue.polymarket.takeover_cancel",
                       canceled=len((resp or {}).get("canceled", [])))
        self._heartbeat_id = None
        await self._beat()

    async def _beat(self) -> None:
        try:
            resp = await self._call(self._lib().post_heartbeat, self._heartbeat_id)
        except Exception as e:
            raise VenueError(f"polymarket venue: heartbeat failed: {_message_of(e)}") from None
        if isinstance(resp, dict) and resp.get("heartbeat_id"):
            self._heartbeat_id = str(resp["heartbeat_id"])

    async def term_service(self) -> None:
        """While active: one heartbeat every ``heartbeat_interval``. A failure is logged
        once (the exchange may then cancel the resting orders: that is the fence) and
        retried at the next beat; it never ends the term."""
        while True:
            await asyncio.sleep(self._cfg.heartbeat_interval / 1000)
            try:
                await self._beat()
            except VenueError as e:
                if not self._heartbeat_failing:
                    logs.event(log, "venue.polymarket.heartbeat_failed", logging.WARNING,
                               error=str(e), note="the exchange cancels resting orders ~10s "
                               "after the last heartbeat")
                self._heartbeat_failing = True
                continue
            if self._heartbeat_failing:
                logs.event(log, "venue.polymarket.heartbeat_recovered")
            self._heartbeat_failing = False
