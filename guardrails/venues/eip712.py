"""EIP-712 signed orders and cancels for the HTTP order-book venue.

An order is a typed-data message (``Order``) carrying the account (the signer's address),
the client order id, the instrument, side, size and price as exact decimal strings, the
fencing token, and ``expiration`` — the order's submit deadline in Unix ms, never later
than the lease deadline the gate issued. The venue recovers the signer from the
signature and refuses the order if it is not the account, or if it arrives after
``expiration``: a paused instance's late order dies at the venue.

The key itself lives in the one ``guardrails.venues.signing.Signer``; this module only
builds, signs (through it) and verifies the messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data

from guardrails.model import Order, Side
from guardrails.venues.signing import Signer

DOMAIN_NAME = "guardrails-orderbook"
DOMAIN_VERSION = "1"

ORDER_TYPES: dict[str, list[dict[str, str]]] = {
    "Order": [
        {"name": "account", "type": "address"},
        {"name": "clientOrderId", "type": "string"},
        {"name": "symbol", "type": "string"},
        {"name": "side", "type": "string"},
        {"name": "qty", "type": "string"},
        {"name": "price", "type": "string"},
        {"name": "token", "type": "uint256"},
        {"name": "expiration", "type": "uint256"},
    ]
}
"""The signed order. ``qty``/``price`` are decimal strings (exact, no float on the wire);
``expiration`` is Unix ms; ``token`` is the fencing token (recorded by the venue)."""

CANCEL_TYPES: dict[str, list[dict[str, str]]] = {
    "Cancel": [
        {"name": "account", "type": "address"},
        {"name": "clientOrderId", "type": "string"},
        {"name": "issuedAt", "type": "uint256"},
    ]
}
"""A signed cancel: only the account's key can cancel its orders."""


class SignatureInvalid(Exception):
    """A signed message whose signature does not recover to a valid address."""


def domain(chain_id: int) -> dict[str, Any]:
    return {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id}


def order_message(order: Order, account: str) -> dict[str, Any]:
    """The ``Order`` message of ``order`` placed by ``account`` (0x address)."""
    return {
        "account": account,
        "clientOrderId": order.client_order_id,
        "symbol": order.symbol,
        "side": order.side.value,
        "qty": str(order.qty),
        "price": str(order.price),
        "token": order.token,
        "expiration": order.submit_deadline_ms,
    }


def order_from_message(msg: dict[str, Any]) -> Order:
    """Parse an ``Order`` message (raises ``ValueError`` when malformed)."""
    try:
        qty, price = Decimal(str(msg["qty"])), Decimal(str(msg["price"]))
        if not qty.is_finite() or not price.is_finite():
            raise ValueError("qty and price must be finite")
        return Order(
            client_order_id=_text(msg["clientOrderId"]),
            symbol=_text(msg["symbol"]),
            side=Side(msg["side"]),
            qty=qty,
            price=price,
            token=_uint(msg["token"]),
            submit_deadline_ms=_uint(msg["expiration"]),
        )
    except (KeyError, TypeError, ArithmeticError) as e:
        raise ValueError(f"malformed order message: {type(e).__name__}: {e}") from None


def _text(v: object) -> str:
    if not isinstance(v, str) or not v or len(v) > 128:
        raise ValueError("expected a non-empty string of at most 128 characters")
    return v


def _uint(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise ValueError("expected an unsigned integer")
    n = int(v)
    if n < 0 or n >= 2**256:
        raise ValueError("expected an unsigned integer")
    return n


def signable_order(message: dict[str, Any], chain_id: int) -> SignableMessage:
    return encode_typed_data(
        domain_data=domain(chain_id), message_types=ORDER_TYPES, message_data=message
    )


def signable_cancel(message: dict[str, Any], chain_id: int) -> SignableMessage:
    return encode_typed_data(
        domain_data=domain(chain_id), message_types=CANCEL_TYPES, message_data=message
    )


def recover(signable: SignableMessage, signature: str) -> str:
    """The lower-cased address that signed ``signable``; ``SignatureInvalid`` if none."""
    try:
        sig = bytes.fromhex(signature.removeprefix("0x"))
        address: str = Account.recover_message(signable, signature=sig)
    except Exception as e:  # eth-account raises a zoo of types for bad signatures
        raise SignatureInvalid(f"signature does not recover: {type(e).__name__}") from None
    return address.lower()


@dataclass(frozen=True, slots=True)
class SignedMessage:
    """A message and its signature, as sent on the wire."""

    message: dict[str, Any]
    signature: str


def sign_order(signer: Signer, order: Order, chain_id: int) -> SignedMessage:
    """``order`` as an ``Order`` message of ``signer``'s account, signed."""
    msg = order_message(order, signer.address)
    signed = signer.sign_message(signable_order(msg, chain_id))
    return SignedMessage(msg, "0x" + bytes(signed.signature).hex())


def sign_cancel(signer: Signer, client_order_id: str, issued_at_ms: int, chain_id: int) -> SignedMessage:
    """A ``Cancel`` of ``client_order_id`` by ``signer``'s account, signed."""
    msg = {"account": signer.address, "clientOrderId": client_order_id, "issuedAt": issued_at_ms}
    signed = signer.sign_message(signable_cancel(msg, chain_id))
    return SignedMessage(msg, "0x" + bytes(signed.signature).hex())
