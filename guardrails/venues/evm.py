"""The EVM wallet venue: an admitted order becomes one signed EIP-1559 transaction.

Invariants upheld: *one writer per account* (fenced twice) and *every side effect is
idempotent*.

* **Nonce under the gate.** The wallet nonce of each order is allocated inside the
  gate's atomic admission step (``OrderGate.admit(..., allocate_nonce=True)`` hands out
  ``keys.nonce`` and INCRs it), so no two admitted orders share a nonce. At takeover the
  new holder calls ``sync_nonce(token, holder_id)``: a fenced script sets ``keys.nonce``
  to the chain's *pending* nonce, re-issuing nonces that a former holder allocated but
  never sent. The chain then is the second fence: it mines one transaction per nonce,
  so a paused former holder's late transaction cannot be mined once the new holder's
  transaction with that nonce is.
* **Fenced binding before sending.** ``submit`` signs the transaction and binds the
  client order id to it in Redis (``lua/evm_claim.lua``) *only while the order's token
  holds the lease*; only a bound transaction is ever sent. A former holder that wakes
  after a takeover cannot bind, so cannot send, anything new.
* **Lookup by client order id.** The binding (venue namespace ``venue:{<account>}:…``,
  same hash tag as the account's keys) records nonce, hash, raw transaction and the
  order's fields. The signed transaction is deterministic (RFC 6979) for its fields,
  so a re-send of the same id sends the same bytes and the chain dedupes it by hash.

Order → transaction mapping (per symbol, ``EvmVenueConfig.orders``; ``docs/venues.md``):

* ``native``: send ``qty`` of the chain's coin to ``to``: value = qty × 10^18 wei. SELL only.
* ``erc20_transfer``: ``token.transfer(to, qty × 10^decimals)``. SELL only.
* ``erc20_approve``: ``token.approve(to, qty × 10^decimals)``. Either side.
* ``call``: ``to.<function>(*args)`` encoded with ``abi``; value 0. In ``args`` the
  strings ``"{qty:N}"``, ``"{price:N}"``, ``"{notional:N}"`` become the integer
  quantity × 10^N (price, qty × price), ``"{is_buy}"`` a bool and ``"{wallet}"`` the
  wallet address. Either side.

``price`` is recorded (fills carry it; it is what the ledger books) but only ``call``
templates can pass it on-chain. Every transaction uses ``gas_limit`` and exactly the
configured fee caps (``maxFeePerGas`` never exceeds ``max_fee_per_gas``).

Outcomes: a receipt with status 1 is one fill of the whole order (fill id = tx hash,
fee 0: gas is paid in the native coin and not converted); status 0 (revert) is
REJECTED; a transaction without a receipt whose nonce another mined transaction used
is EXPIRED; one whose nonce is unused keeps OPEN (in the node's pool) or NOT_FOUND with
``can_still_arrive=True``. A send that fails on the transport is classified from the
chain (mined / in the pool → Accepted; nonce used by another → Rejected; else Unknown).
An order the venue rejects *before* sending (a BUY on a transfer template, a quantity
finer than the token's decimals) still owns its nonce: a zero-value self-transfer
("nonce filler") is bound and sent with that nonce so later nonces are not stuck.

The submit deadline is enforced where the harness can enforce it — the binding script
refuses a new binding after ``submit_deadline_ms`` by Redis time — but not on-chain.

Not guaranteed: EVM transactions have no expiry, so a transaction bound (and perhaps
sent) before a takeover may still be mined until its nonce is used; its reservation is
held until then. Fills count at one confirmation (no reorg handling). A sent
transaction cannot be cancelled (no replacement is attempted): ``cancel`` voids ids not
yet bound and reports final orders; a pending one is ``Unknown``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from aiohttp import ClientTimeout
from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address
from eth_utils.exceptions import ValidationError as EthValidationError
from hexbytes import HexBytes
from redis.exceptions import RedisError
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.providers.async_base import AsyncBaseProvider

from guardrails import logs, redacted, scripts
from guardrails.config import EvmOrderTemplate, EvmVenueConfig, RiskConfig
from guardrails.keys import AccountId, AccountKeys, venue_key
from guardrails.model import Fill, Order, Side
from guardrails.venues.base import (
    Accepted,
    FillBatch,
    Rejected,
    SubmitResult,
    Unknown,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
)
from guardrails.venues.signing import Signer, SigningKeyError, check_signer_is_account, load_signer

log = logging.getLogger("guardrails.venues.evm")

NATIVE_DECIMALS = 18
NATIVE_BALANCE = "native"
"""Key of the wallet's native-coin balance in ``balances()``."""
FILLER_GAS = 21_000
_SEL_TRANSFER = bytes.fromhex("a9059cbb")
_SEL_APPROVE = bytes.fromhex("095ea7b3")
_SEL_BALANCE_OF = bytes.fromhex("70a08231")
_SEL_DECIMALS = bytes.fromhex("313ce567")
_PLACEHOLDER = re.compile(r"\{(qty|price|notional):(\d{1,2})\}")  # fullmatch
_FILLS_PER_BATCH = 200
_ALREADY_KNOWN = re.compile(r"already known|known transaction|already imported", re.I)


def _stored_nonce(rec: Mapping[str, str], key: str) -> int:
    """The bound record's nonce as lib/int.lua's stored integer (``int()`` would read
    ' 1' or '+1'): a ``VenueError`` naming the key otherwise, so the order stays unsettled."""
    try:
        return scripts.stored_nat(rec["nonce"], f"{key} nonce")
    except KeyError:
        raise VenueError(f"{key} has no nonce") from None
    except ValueError as e:
        raise VenueError(str(e)) from None


class NotHolder(VenueError):
    """``sync_nonce`` was refused: the caller's token/holder is not the live lease."""


class OrderMappingError(ValueError):
    """The order cannot become a transaction under its template (rejected before sending)."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    kind: str  # "tx" or "filler"
    raw: bytes
    tx_hash: str
    reason: str = ""


def scaled(value: Decimal, decimals: int, what: str) -> int:
    """``value × 10^decimals`` as an exact integer, or ``OrderMappingError``."""
    v = value.scaleb(decimals)
    if v != v.to_integral_value() or v < 0:
        raise OrderMappingError(f"{what} {value} is not a whole number of 10^-{decimals} units")
    return int(v)


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class EvmVenue:
    """One wallet on one EVM chain (see the module docstring for the contract).

    ``signer``: a ``signing.Signer`` (or an eth-account ``LocalAccount``, wrapped); when
    None the key is loaded from the config's ``key_env`` / ``keystore``. ``provider``
    replaces the HTTP provider of ``rpc_url`` (tests pass an in-process chain).
    """

    def __init__(
        self,
        venue_cfg: EvmVenueConfig,
        account: AccountId,
        signer: Signer | LocalAccount | None = None,
        *,
        redis: aioredis.Redis,
        risk: RiskConfig,
        provider: AsyncBaseProvider | None = None,
        rpc_timeout_s: float = 10.0,
        clock_ms: Any = None,
        source: str = "",
    ) -> None:
        self.name = "evm"
        self._source = source  # the config file, named when the key is not the wallet's
        self._cfg = venue_cfg
        self._account = account
        self._keys = AccountKeys(account)
        self._risk = risk
        self._holder = ""
        """The holder id of the last successful ``sync_nonce``: bindings are fenced by
        token AND holder (lib/fence.lua); before a sync nothing can be bound."""
        self._redis = redis
        if signer is None:
            signer = load_signer(
                key_env=venue_cfg.key_env,
                keystore=venue_cfg.keystore,
                keystore_password_env=venue_cfg.keystore_password_env,
            )
        elif isinstance(signer, LocalAccount):
            signer = Signer(signer)
        self._signer: Signer = signer
        # One attempt per request: a send that times out is classified, never retried
        # blindly by the transport (reads are re-asked by reconciliation instead).
        redacted.register_endpoint_url(venue_cfg.rpc_url)  # web3's errors can quote it
        self._provider = provider or AsyncHTTPProvider(
            venue_cfg.rpc_url,
            request_kwargs={"timeout": ClientTimeout(total=rpc_timeout_s)},
            exception_retry_configuration=None,
        )
        self._w3 = AsyncWeb3(self._provider)
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._decimals: dict[str, int] = {}
        self._started = False
        self._scripts: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"EvmVenue(account={self._account}, chain_id={self._cfg.chain_id})"

    # -- keys of the venue's own namespace (one hash tag with the account's keys) -------
    def _ns(self, *parts: str) -> str:
        return venue_key(str(self._account), *parts)

    def record_key(self, client_order_id: str) -> str:
        """HASH: the venue's record of one client order id (state, nonce, hash, raw, ...)."""
        return self._ns("order", client_order_id)

    @property
    def orders_key(self) -> str:
        """LIST: client order ids in the order they were bound (the fills cursor walks it)."""
        return self._ns("orders")

    @property
    def address(self) -> str:
        return self._signer.checksum_address

    def _script(self, which: int) -> Any:
        if self._scripts is None:
            self._scripts = (
                scripts.register(self._redis, "evm_claim"),
                scripts.register(self._redis, "nonce_sync"),
            )
        return self._scripts[which]

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Check the chain and the templates; refuse (``VenueError``) on any mismatch."""
        if self._started:
            return
        check_signer_is_account(
            self._account, self._signer.address, source=self._source, venue="evm"
        )
        try:
            chain_id = await self._w3.eth.chain_id
        except Exception as e:
            raise VenueError(
                f"cannot reach the chain at {self._where()}: {type(e).__name__}"
            ) from None
        if chain_id != self._cfg.chain_id:
            raise VenueError(
                f"chain id mismatch: the node at {self._where()} is chain {chain_id}, "
                f"the config says {self._cfg.chain_id}; refusing to sign for the wrong chain"
            )
        try:
            latest = await self._w3.eth.get_block("latest")
        except Exception as e:
            raise VenueError(f"cannot read the latest block: {type(e).__name__}") from None
        if self._cfg.gas_limit > int(latest["gasLimit"]):
            raise VenueError(
                f"gas_limit {self._cfg.gas_limit} exceeds the chain's block gas limit "
                f"{int(latest['gasLimit'])}: no transaction could be mined"
            )
        base_fee = int(latest.get("baseFeePerGas", 0))
        if base_fee > self._cfg.max_fee_per_gas:
            logs.event(log, "evm.fee_cap_below_base_fee", logging.WARNING,
                       base_fee=base_fee, max_fee_per_gas=self._cfg.max_fee_per_gas,
                       note="transactions wait until the base fee falls below the cap")
        missing = sorted(set(self._risk.instruments) - set(self._cfg.orders))
        if missing:
            raise VenueError(f"venue.orders has no transaction template for: {', '.join(missing)}")
        for symbol, tpl in self._cfg.orders.items():
            await self._check_template(symbol, tpl)
        self._started = True
        logs.event(log, "evm.started", account=str(self._account), chain_id=chain_id,
                   address=self.address)

    def _where(self) -> str:
        # Never echo credentials embedded in an RPC URL: a provider's API key is often its
        # path (https://eth-mainnet.example/v2/<key>), so the endpoint is scheme://host.
        return redacted.endpoint(self._cfg.rpc_url) if self._cfg.rpc_url else "the provider"

    async def _check_template(self, symbol: str, tpl: EvmOrderTemplate) -> None:
        if not is_address(tpl.to):
            raise VenueError(f"venue.orders.{symbol}.to: {tpl.to!r} is not an address")
        if tpl.kind == "native":
            self._decimals[symbol] = NATIVE_DECIMALS
        elif tpl.token is not None:  # erc20_* (required), or the asset of a call
            if not is_address(tpl.token):
                raise VenueError(f"venue.orders.{symbol}.token: {tpl.token!r} is not an address")
            try:
                out = await self._w3.eth.call(
                    {"to": to_checksum_address(tpl.token), "data": HexBytes(_SEL_DECIMALS)}
                )
                self._decimals[symbol] = int.from_bytes(bytes(out)[-32:], "big")
            except Exception as e:
                raise VenueError(
                    f"venue.orders.{symbol}.token: decimals() failed ({type(e).__name__}); "
                    "is it an ERC-20 on this chain?"
                ) from None
            if not 0 <= self._decimals[symbol] <= 36:
                raise VenueError(f"venue.orders.{symbol}.token: implausible decimals")
        inst = self._risk.instruments.get(symbol)
        if inst is None:
            return
        probe = Order("probe", symbol, Side.SELL if tpl.kind != "call" else Side.BUY,
                      inst.lot, inst.tick, 0, 0, 0)
        try:
            self._calldata(tpl, symbol, probe)
        except OrderMappingError as e:
            raise VenueError(
                f"venue.orders.{symbol}: the instrument's lot/tick cannot map to a "
                f"transaction: {e}"
            ) from None
        except Exception as e:
            raise VenueError(f"venue.orders.{symbol}: cannot encode the call: {e}") from None

    async def close(self) -> None:
        disconnect = getattr(self._provider, "disconnect", None)
        if disconnect is not None:
            # The provider's transport (aiohttp, websockets) may raise anything on a dead
            # connection; the venue is being closed either way, so it is logged, not raised.
            with logs.swallowed(log, "venue.evm.disconnect"):
                await disconnect()

    # -- takeover -----------------------------------------------------------------------
    async def sync_nonce(self, token: int, holder_id: str) -> int:
        """At takeover: set ``keys.nonce`` to the chain's pending nonce, only while
        ``"<token>:<holder_id>"`` is the live lease. Returns the nonce set; raises
        ``NotHolder`` when fenced out, ``VenueError`` when the chain cannot be asked."""
        try:
            pending = await self._w3.eth.get_transaction_count(self._checksum, "pending")
        except Exception as e:
            raise VenueError(f"cannot read the pending nonce: {type(e).__name__}") from None
        code, previous = await self._script(1)(
            keys=[self._keys.lease, self._keys.fence, self._keys.nonce],
            args=[f"{token}:{holder_id}", str(token), str(int(pending))],
        )
        code = int(code)
        if code == 1:
            self._holder = holder_id
            logs.event(log, "evm.nonce_synced", token=token, nonce=int(pending),
                       previous=_s(previous) or "-")
            return int(pending)
        if code == 2:
            raise NotHolder(f"nonce sync refused: {token}:{holder_id} is not the live lease")
        if code == 3:
            raise NotHolder(f"nonce sync refused: token {token} was superseded")
        if code == 4:
            raise VenueError(f"nonce sync refused: bad nonce {pending!r}")
        raise VenueError(f"nonce_sync.lua returned unknown code {code}")

    @property
    def _checksum(self) -> Any:
        return to_checksum_address(self._signer.address)

    # -- order -> transaction -------------------------------------------------------------
    def _calldata(self, tpl: EvmOrderTemplate, symbol: str, order: Order) -> tuple[str, int, bytes]:
        """(to, value, data) of ``order`` under ``tpl``; ``OrderMappingError`` if impossible."""
        to = to_checksum_address(tpl.to)
        if tpl.kind == "native":
            if order.side is not Side.SELL:
                raise OrderMappingError(f"{symbol}: a native transfer can only be a SELL")
            return to, scaled(order.qty, NATIVE_DECIMALS, "qty"), b""
        if tpl.kind in ("erc20_transfer", "erc20_approve"):
            assert tpl.token is not None
            amount = scaled(order.qty, self._decimals[symbol], "qty")
            if tpl.kind == "erc20_transfer":
                if order.side is not Side.SELL:
                    raise OrderMappingError(f"{symbol}: an ERC-20 transfer can only be a SELL")
                sel = _SEL_TRANSFER
            else:
                sel = _SEL_APPROVE
            data = sel + abi_encode(["address", "uint256"], [to, amount])
            return to_checksum_address(tpl.token), 0, data
        args = [self._arg(a, order) for a in tpl.args]
        contract = self._w3.eth.contract(address=to, abi=tpl.abi)
        data_hex = contract.encode_abi(tpl.function or "", args=args)
        return to, 0, bytes(HexBytes(data_hex))

    def _arg(self, arg: Any, order: Order) -> Any:
        if not isinstance(arg, str):
            return arg
        if arg == "{is_buy}":
            return order.side is Side.BUY
        if arg == "{wallet}":
            return self._checksum
        m = _PLACEHOLDER.fullmatch(arg)
        if not m:
            return arg
        what, n = m.group(1), int(m.group(2))
        value = {"qty": order.qty, "price": order.price, "notional": order.qty * order.price}[what]
        return scaled(value, n, what)

    def _tx(self, nonce: int, to: str, value: int, data: bytes, gas: int) -> dict[str, Any]:
        fee_cap = self._cfg.max_fee_per_gas
        # The caps are the config's, by construction; asserted because a fee above the
        # cap is the one thing this venue must never sign.
        if fee_cap > self._cfg.max_fee_per_gas or gas > self._cfg.gas_limit:
            raise AssertionError("fee or gas above the configured cap")
        return {
            "type": 2,
            "chainId": self._cfg.chain_id,
            "nonce": nonce,
            "to": to,
            "value": value,
            "data": data,
            "gas": gas,
            "maxFeePerGas": fee_cap,
            "maxPriorityFeePerGas": self._cfg.max_priority_fee_per_gas,
        }

    def _prepare(self, order: Order, nonce: int) -> _Prepared:
        """Sign the order's transaction, or a nonce filler when it cannot be mapped."""
        try:
            tpl = self._cfg.orders.get(order.symbol)
            if tpl is None:
                raise OrderMappingError(f"no transaction template for symbol {order.symbol!r}")
            inst = self._risk.instruments.get(order.symbol)
            if order.qty <= 0 or order.price <= 0:
                raise OrderMappingError("qty and price must be positive")
            if inst is not None and order.price % inst.tick != 0:
                raise OrderMappingError(f"price {order.price} is not a multiple of {inst.tick}")
            if inst is not None and order.qty % inst.lot != 0:
                raise OrderMappingError(f"qty {order.qty} is not a multiple of {inst.lot}")
            to, value, data = self._calldata(tpl, order.symbol, order)
            tx = self._tx(nonce, to, value, data, self._cfg.gas_limit)
        except OrderMappingError as e:
            return self._filler(nonce, str(e))
        signed = self._signer.sign_transaction(tx)
        return _Prepared("tx", bytes(signed.raw_transaction), _hex(signed.hash))

    def _filler(self, nonce: int, reason: str) -> _Prepared:
        """A zero-value self-transfer that uses ``nonce`` in place of a refused order."""
        signed = self._signer.sign_transaction(
            self._tx(nonce, self._checksum, 0, b"", FILLER_GAS)
        )
        return _Prepared("filler", bytes(signed.raw_transaction), _hex(signed.hash), reason)

    # -- submit ---------------------------------------------------------------------------
    async def submit(self, order: Order) -> SubmitResult:
        if order.nonce is None or order.nonce < 0:
            return Rejected("no nonce: EVM orders must be admitted with allocate_nonce=True")
        await self.start()
        prep = self._prepare(order, order.nonce)
        try:
            code, detail, rec = await self._bind(order, prep, check_deadline=True)
            if code == 6:
                # Too late to send the order, but the nonce is ours and must not gap:
                # bind a filler in its place (still fenced by the lease).
                reason = f"not sent: past its submit deadline (Redis time {detail} ms)"
                prep = self._filler(order.nonce, reason)
                code, detail, rec = await self._bind(order, prep, check_deadline=False)
        except RedisError as e:
            return Rejected(f"not sent: cannot bind the transaction in Redis ({type(e).__name__})")
        if code == 2:
            if detail == "rejected":
                why = await self._redis.hget(self.record_key(order.client_order_id), "reason")
                return Rejected(f"rejected earlier: {_s(why or '')}")
            # Cancelled before it was bound: this nonce is ours and unused.
            await self._send_filler(order.nonce, order.client_order_id)
            return Rejected(f"not sent: the order was {detail} before it was sent")
        if code == 3:
            return Unknown(f"client order id already bound to transaction {detail}; reconcile")
        if code == 4:
            return Rejected("not sent: nobody holds the lease (fenced at the venue)")
        if code == 5:
            return Rejected(
                f"not sent: lease {order.token}:{self._holder or '?'} is not current "
                f"(fenced at the venue: {detail})"
            )
        if code not in (0, 1):
            raise VenueError(f"evm_claim.lua returned unknown code {code}")
        result = await self._send(prep.raw, rec, order.client_order_id)
        if prep.kind == "filler":
            logs.event(log, "evm.rejected_before_send", coid=order.client_order_id,
                       nonce=order.nonce, reason=prep.reason, filler=prep.tx_hash)
            return Rejected(prep.reason)
        return result

    async def _bind(
        self, order: Order, prep: _Prepared, *, check_deadline: bool
    ) -> tuple[int, str, dict[str, str]]:
        """Run the fenced binding script; returns (code, detail, the record as bound)."""
        rec = {
            "nonce": str(order.nonce), "raw": _hex(prep.raw), "kind": prep.kind,
            "reason": prep.reason, "symbol": order.symbol, "side": order.side.value,
            "qty": str(order.qty), "price": str(order.price),
            "claimed_ms": str(self._clock_ms()),
        }
        flat = [x for kv in rec.items() for x in kv]
        code, detail = await self._script(0)(
            keys=[self._keys.lease, self.record_key(order.client_order_id), self.orders_key],
            args=[str(order.token), order.client_order_id, prep.tx_hash,
                  str(order.submit_deadline_ms), "1" if check_deadline else "0",
                  self._holder, *flat],
        )
        return int(code), _s(detail), {**rec, "state": "claimed", "hash": prep.tx_hash}

    async def _send(self, raw: bytes, rec: Mapping[str, str], coid: str) -> SubmitResult:
        tx_hash, nonce = rec["hash"], int(rec["nonce"])
        try:
            sent = await self._w3.eth.send_raw_transaction(raw)
        except Exception as e:
            return await self._classify_send_failure(e, rec, coid)
        if _hex(sent).lower() != tx_hash.lower():
            return Unknown(f"node returned hash {_hex(sent)}, expected {tx_hash}; reconcile")
        logs.event(log, "evm.sent", coid=coid, nonce=nonce, tx=tx_hash)
        # On a chain that mines at once (or a re-send of a mined transaction) the outcome
        # is already known: report a revert as the rejection it is.
        try:
            receipt = await self._receipt(tx_hash)
        except Exception:
            receipt = None
        if receipt is not None and int(receipt["status"]) == 0:
            logs.event(log, "evm.reverted", coid=coid, nonce=nonce, tx=tx_hash)
            return Rejected(f"transaction {tx_hash} reverted in block {fill_block(receipt)}")
        return Accepted(tx_hash)

    async def _classify_send_failure(
        self, err: Exception, rec: Mapping[str, str], coid: str
    ) -> SubmitResult:
        """A failed send is classified from the chain, never from the error text alone."""
        # An error the node *answered* (JSON-RPC error; eth-tester's validation error)
        # means it refused the transaction; anything else is the transport.
        answered = isinstance(err, Web3RPCError | EthValidationError | ValueError) and not (
            _ALREADY_KNOWN.search(str(err))  # another node may hold it: not a refusal
        )
        what = type(err).__name__
        tx_hash, nonce = rec["hash"], int(rec["nonce"])
        try:
            status = await self._status(coid, rec)
        except Exception:
            logs.event(log, "evm.send_unknown", coid=coid, nonce=nonce, tx=tx_hash, error=what)
            return Unknown(f"send failed ({what}) and the chain cannot be asked; reconcile")
        if status.state is VenueOrderState.REJECTED:
            return Rejected(f"transaction {tx_hash} {status.detail}")
        if status.state in (VenueOrderState.FILLED, VenueOrderState.OPEN):
            return Accepted(tx_hash)  # it reached the chain (an earlier send, or this one)
        if status.state is VenueOrderState.EXPIRED:
            logs.event(log, "evm.nonce_used", coid=coid, nonce=nonce, tx=tx_hash)
            return Rejected(f"nonce {nonce} was already used by another transaction")
        if answered:
            # The node refused the transaction and its nonce is unused: make the refusal
            # final (a re-submit of this id will not send it) and fill the nonce.
            reason = f"refused by the node: {redacted.excerpt(err, 200)}"  # stored in Redis
            await self._redis.hset(self.record_key(coid), mapping={"state": "rejected",
                                                                   "reason": reason})
            logs.event(log, "evm.refused", coid=coid, nonce=nonce, tx=tx_hash, error=what)
            await self._send_filler(nonce, coid)
            return Rejected(reason)
        logs.event(log, "evm.send_unknown", coid=coid, nonce=nonce, tx=tx_hash, error=what)
        return Unknown(f"send failed ({what}); the transaction may still arrive; reconcile")

    async def _send_filler(self, nonce: int, coid: str) -> None:
        """Best effort: use an unsent order's nonce with a zero-value self-transfer."""
        filler = self._filler(nonce, "")
        try:
            await self._w3.eth.send_raw_transaction(filler.raw)
            logs.event(log, "evm.nonce_filler", coid=coid, nonce=nonce, tx=filler.tx_hash)
        except Exception as e:
            logs.event(log, "evm.nonce_filler_failed", logging.WARNING, coid=coid, nonce=nonce,
                       error=type(e).__name__)

    # -- cancel / lookup ------------------------------------------------------------------
    async def cancel(self, client_order_id: str) -> SubmitResult:
        """An id never bound here is voided (it can never be sent afterwards) and the
        cancel is ``Rejected`` as unknown; a final order is ``Accepted``; a sent, unmined
        transaction cannot be withdrawn: ``Unknown``."""
        key = self.record_key(client_order_id)
        try:
            if await self._redis.hsetnx(key, "state", "canceled"):
                await self._redis.hset(key, "canceled_ms", str(self._clock_ms()))
                logs.event(log, "evm.voided", coid=client_order_id)
                return Rejected("unknown client order id; voided, so it can never be sent")
            status = await self.lookup(client_order_id)
        except (RedisError, VenueError) as e:
            return Unknown(f"cannot cancel: {type(e).__name__}")
        if status.state in (VenueOrderState.OPEN, VenueOrderState.NOT_FOUND):
            return Unknown(
                "a sent transaction cannot be withdrawn; it may be mined until its nonce is used"
            )
        return Accepted(client_order_id)

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        """The order's state from its binding and the chain. An id never bound is
        NOT_FOUND; it can still arrive while Redis time is at or before ``deadline_ms``
        (the binding script refuses it after that), or always when no deadline is given."""
        key = self.record_key(client_order_id)
        try:
            rec = {_s(k): _s(v) for k, v in (await self._redis.hgetall(key)).items()}
            if not rec:
                can_arrive = True
                if deadline_ms is not None:
                    secs, micros = await self._redis.time()
                    can_arrive = int(secs) * 1000 + int(micros) // 1000 <= deadline_ms
                return VenueOrderStatus(client_order_id, VenueOrderState.NOT_FOUND,
                                        can_still_arrive=can_arrive, detail="never bound here")
        except RedisError as e:
            raise VenueError(f"cannot read the venue record: {type(e).__name__}") from None
        try:
            return await self._status(client_order_id, rec)
        except VenueError:
            raise
        except Exception as e:
            raise VenueError(f"cannot ask the chain: {type(e).__name__}") from None

    async def _status(self, coid: str, rec: Mapping[str, str]) -> VenueOrderStatus:
        state = rec.get("state", "claimed")
        if state == "canceled":
            return VenueOrderStatus(coid, VenueOrderState.CANCELED, detail="voided before sent")
        if state == "rejected":
            return VenueOrderStatus(coid, VenueOrderState.REJECTED, detail=rec.get("reason", ""))
        if rec.get("kind") == "filler":
            return VenueOrderStatus(coid, VenueOrderState.REJECTED, detail=rec.get("reason", ""))
        tx_hash, nonce = rec["hash"], _stored_nonce(rec, self.record_key(coid))
        # Order matters: read the mined nonce first, then the receipt. If the nonce was
        # used and our transaction has no receipt after that, another one used it.
        mined_nonce = await self._w3.eth.get_transaction_count(self._checksum, "latest")
        receipt = await self._receipt(tx_hash)
        if receipt is not None:
            if int(receipt["status"]) == 1:
                fill = await self._fill(coid, rec, receipt)
                return VenueOrderStatus(
                    coid, VenueOrderState.FILLED, filled_qty=fill.qty, fills=(fill,),
                    detail=f"mined in block {fill_block(receipt)}",
                )
            return VenueOrderStatus(coid, VenueOrderState.REJECTED,
                                    detail=f"reverted in block {fill_block(receipt)}")
        if mined_nonce > nonce:
            return VenueOrderStatus(coid, VenueOrderState.EXPIRED,
                                    detail=f"nonce {nonce} was used by another transaction")
        try:
            await self._w3.eth.get_transaction(HexBytes(tx_hash))
            return VenueOrderStatus(coid, VenueOrderState.OPEN, can_still_arrive=True,
                                    detail=f"pending with nonce {nonce}")
        except TransactionNotFound:
            return VenueOrderStatus(coid, VenueOrderState.NOT_FOUND, can_still_arrive=True,
                                    detail=f"signed with unused nonce {nonce}; may still be mined")

    async def _receipt(self, tx_hash: str) -> Any:
        try:
            return await self._w3.eth.get_transaction_receipt(HexBytes(tx_hash))
        except TransactionNotFound:
            return None

    async def _fill(self, coid: str, rec: Mapping[str, str], receipt: Any) -> Fill:
        block = await self._w3.eth.get_block(receipt["blockNumber"])
        return Fill(
            fill_id=rec["hash"], client_order_id=coid, symbol=rec["symbol"],
            side=Side(rec["side"]), qty=Decimal(rec["qty"]), price=Decimal(rec["price"]),
            ts_ms=int(block["timestamp"]) * 1000,
        )

    # -- fills / marks / balances ---------------------------------------------------------
    async def fills_since(self, cursor: str | None) -> FillBatch:
        """Fills of bound orders from list position ``cursor``. The cursor advances over
        the prefix of orders that are final; later ones are re-read next time (a fill may
        be returned twice; the ledger applies each fill id once)."""
        start = int(cursor) if cursor else 0
        try:
            coids = [_s(c) for c in await self._redis.lrange(
                self.orders_key, start, start + _FILLS_PER_BATCH - 1)]
        except RedisError as e:
            raise VenueError(f"cannot read the venue's orders: {type(e).__name__}") from None
        fills: list[Fill] = []
        advance, blocked = start, False
        for coid in coids:
            status = await self.lookup(coid)
            fills.extend(status.fills)
            final = status.state not in (VenueOrderState.OPEN, VenueOrderState.NOT_FOUND) or (
                not status.can_still_arrive
            )
            if not final:
                blocked = True
            if not blocked:
                advance += 1
        return FillBatch(fills, str(advance))

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """The configured ``mark`` of each symbol's template (a chain quotes no price)."""
        out: dict[str, Decimal] = {}
        for s in symbols:
            tpl = self._cfg.orders.get(s)
            if tpl is not None and tpl.mark is not None:
                out[s] = tpl.mark
        return out

    async def balances(self) -> dict[str, Decimal]:
        """On-chain holdings: ``native`` (the coin, in whole units) and, per symbol of a
        native or ERC-20 template, that asset's balance in whole units."""
        await self.start()
        try:
            wei = await self._w3.eth.get_balance(self._checksum)
            out = {NATIVE_BALANCE: Decimal(int(wei)).scaleb(-NATIVE_DECIMALS)}
            for symbol, tpl in self._cfg.orders.items():
                if tpl.kind == "native":
                    out[symbol] = out[NATIVE_BALANCE]
                elif tpl.token is not None:
                    data = _SEL_BALANCE_OF + abi_encode(["address"], [self._checksum])
                    raw = await self._w3.eth.call(
                        {"to": to_checksum_address(tpl.token), "data": HexBytes(data)}
                    )
                    units = int.from_bytes(bytes(raw)[-32:], "big")
                    out[symbol] = Decimal(units).scaleb(-self._decimals[symbol])
        except Exception as e:
            raise VenueError(f"cannot read balances: {type(e).__name__}") from None
        return out


def fill_block(receipt: Any) -> int:
    return int(receipt["blockNumber"])


__all__ = ["NATIVE_BALANCE", "EvmVenue", "NotHolder", "OrderMappingError", "SigningKeyError"]
