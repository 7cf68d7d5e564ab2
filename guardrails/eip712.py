"""EIP-712 signed orders and cancels for the HTTP order-book venue, and the signing key.

An order is a typed-data message (``Order``) carrying the account (the signer's address),
the client order id, the instrument, side, size and price as exact decimal strings, the
fencing token, and ``expiration`` — the order's submit deadline in Unix ms, never later
than the lease deadline the gate issued. The venue recovers the signer from the
signature and refuses the order if it is not the account, or if it arrives after
``expiration``: a paused instance's late order dies at the venue.

The signing key is read once, from an environment variable or an encrypted keystore
file, and held inside ``Signer``, whose ``repr``/``str`` show only the address. No
function here puts key material into an exception message or a log line; errors about
the key name the *source* (the env var or file), never its value.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_typed_data
from eth_account.signers.local import LocalAccount

from guardrails.model import Order, Side

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


class SigningKeyError(Exception):
    """The signing key could not be loaded. The message names the source, never the key."""


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


class Signer:
    """Holds one signing key; shows only its address. Never pickled, never logged."""

    __slots__ = ("_account",)

    def __init__(self, account: LocalAccount) -> None:
        self._account = account

    @classmethod
    def from_key(cls, key: str, *, source: str = "key") -> Signer:
        try:
            return cls(Account.from_key(key.strip()))
        except Exception:
            # Never chain the original: its message may quote the malformed key.
            raise SigningKeyError(f"{source}: not a valid secp256k1 private key") from None

    @classmethod
    def ephemeral(cls) -> Signer:
        """A fresh throwaway key (the embedded demo exchange only; never for real funds)."""
        return cls(Account.create())

    @classmethod
    def demo(cls, account: str) -> Signer:
        """The well-known demo key of ``account`` at the embedded simulator: derived from
        the account id, so every instance of the account (active and standbys) signs as
        the SAME exchange account. Anyone can derive it: never for real funds."""
        seed = f"guardrails demo key|{account}".encode()
        for n in range(1000):
            digest = hashlib.sha256(seed + n.to_bytes(2, "big")).digest()
            try:
                return cls(Account.from_key(digest))
            except (ValueError, KeyError):
                continue  # not a valid secp256k1 scalar (vanishingly rare): next one
        raise SigningKeyError("could not derive a demo key")

    @property
    def address(self) -> str:
        """The lower-cased 0x address."""
        return str(self._account.address).lower()

    def sign_order(self, order: Order, chain_id: int) -> SignedMessage:
        msg = order_message(order, self.address)
        signed = self._account.sign_message(signable_order(msg, chain_id))
        return SignedMessage(msg, "0x" + bytes(signed.signature).hex())

    def sign_cancel(self, client_order_id: str, issued_at_ms: int, chain_id: int) -> SignedMessage:
        msg = {"account": self.address, "clientOrderId": client_order_id, "issuedAt": issued_at_ms}
        signed = self._account.sign_message(signable_cancel(msg, chain_id))
        return SignedMessage(msg, "0x" + bytes(signed.signature).hex())

    def private_key_hex(self) -> str:
        """The raw key, only for a venue library that signs by itself (py-clob-client).
        Never log, store or pass it anywhere else."""
        return "0x" + bytes(self._account.key).hex()

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Signer holds a private key and is never pickled")


def load_signer(
    key_env: str, keystore: str | None = None, password_env: str = "GUARDRAILS_KEYSTORE_PASSWORD"
) -> Signer:
    """The key from ``keystore`` (an encrypted Ethereum keystore JSON file, password in
    ``$password_env``) when given, else from ``$key_env``. Errors name the source only."""
    if keystore:
        password = os.environ.get(password_env)
        if password is None:
            raise SigningKeyError(
                f"keystore {keystore}: password env var ${password_env} is not set"
            )
        try:
            blob = json.loads(Path(keystore).read_text())
        except (OSError, ValueError) as e:
            raise SigningKeyError(f"keystore {keystore}: cannot read: {type(e).__name__}") from None
        try:
            key = Account.decrypt(blob, password)
        except Exception:
            raise SigningKeyError(
                f"keystore {keystore}: cannot decrypt (wrong password in ${password_env}?)"
            ) from None
        return Signer(Account.from_key(key))
    raw = os.environ.get(key_env)
    if not raw:
        raise SigningKeyError(f"signing key: env var ${key_env} is not set")
    return Signer.from_key(raw, source=f"env var ${key_env}")
