"""The one signing key holder for every signing venue (the HTTP order book's EIP-712
orders, EVM transactions, and any venue that signs with a secp256k1 key).

Invariant upheld: *a private key never leaves the process that signs with it*. A key is
read once — from an environment variable, or decrypted from an encrypted keystore file
(the standard Web3 Secret Storage JSON, ``eth_account.Account.decrypt``) — held inside a
``Signer`` and used only to sign. It is never logged, never written to Redis, never part
of status output, and never in an exception's text: ``Signer``'s ``repr``/``str`` show
the address only, pickling is refused, and every load error is a ``SigningKeyError``
whose message names the *source* (variable or file), never the value, raised ``from
None`` so no underlying exception carrying the value is chained onto it.

Not guaranteed: Python cannot erase memory. Code in the same process that digs into the
``Signer``'s private attribute can read the key; the guarantee is against *accidental*
disclosure (logs, reprs, tracebacks, Redis, status, child environments), not a hostile
in-process caller. Strategies never receive the ``Signer`` (they get a ``Context``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.messages import SignableMessage
from eth_account.signers.local import LocalAccount

from guardrails import redacted
from guardrails.keys import AccountId
from guardrails.venues.base import VenueError

DEFAULT_PASSWORD_ENV = "GUARDRAILS_KEYSTORE_PASSWORD"


class SigningKeyError(Exception):
    """The signing key could not be loaded. The message names the source, never the key."""


class Signer:
    """Signs with one private key; shows only its address. Never pickled, never logged.

    ``address`` is the lower-cased 0x address (the form account ids and venue records
    use); ``checksum_address`` is the EIP-55 form web3 wants. ``__slots__`` keeps the key
    out of ``vars()``.
    """

    __slots__ = ("__account",)

    def __init__(self, account: LocalAccount) -> None:
        self.__account = account
        # Registered with the log scrubber: a key echoed in an exception text, a venue's
        # answer or a library's log line is masked on its way out.
        key = bytes(account.key).hex()
        for form in (key, "0x" + key, key.upper(), "0x" + key.upper()):
            redacted.register(form)

    @classmethod
    def from_key(cls, key: str | bytes, *, source: str = "a key") -> Signer:
        """Wrap a raw private key (hex string or 32 bytes). Errors never echo the key."""
        try:
            if isinstance(key, str):
                key = key.strip()
            return cls(Account.from_key(key))
        except Exception:
            raise SigningKeyError(
                f"{source}: not a valid secp256k1 private key (expected 32 bytes as 64 hex digits)"
            ) from None

    @classmethod
    def ephemeral(cls) -> Signer:
        """A fresh throwaway key (simulators and tests; never for real funds)."""
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
        return str(self.__account.address).lower()

    @property
    def checksum_address(self) -> str:
        """The EIP-55 checksummed address."""
        return str(self.__account.address)

    def sign_message(self, message: SignableMessage) -> Any:
        """Sign an EIP-191/EIP-712 ``SignableMessage`` (e.g. from ``encode_typed_data``)."""
        return self.__account.sign_message(message)

    def sign_typed_data(self, full_message: dict[str, Any]) -> Any:
        """Sign EIP-712 typed data given as one full message dict."""
        return self.__account.sign_typed_data(full_message=full_message)

    def sign_transaction(self, tx: dict[str, Any]) -> SignedTransaction:
        """Sign an EIP-1559 transaction dict; returns raw bytes and hash."""
        return self.__account.sign_transaction(tx)

    def private_key_hex(self) -> str:
        """The raw key, only for a venue library that signs by itself (py-clob-client builds
        and signs its own orders and auth headers). Never log, store or pass it anywhere
        else; the one caller is ``venues/polymarket.py``."""
        return "0x" + bytes(self.__account.key).hex()

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Signer holds a private key and is never pickled")

    def __getstate__(self) -> Any:
        raise TypeError("a Signer holds a private key and is never pickled")


def load_signer(
    *,
    key_env: str,
    keystore: str | os.PathLike[str] | None = None,
    keystore_password_env: str = DEFAULT_PASSWORD_ENV,
    environ: Mapping[str, str] | None = None,
) -> Signer:
    """The key from ``keystore`` (decrypted with the password in ``$keystore_password_env``)
    when given, else from ``$key_env``. Every error is a ``SigningKeyError`` naming the
    source only."""
    env = os.environ if environ is None else environ
    if keystore is not None:
        path = Path(keystore)
        password = env.get(keystore_password_env)
        if password is None:
            raise SigningKeyError(
                f"keystore {path}: the password variable ${keystore_password_env} is not set"
            )
        redacted.register(password)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SigningKeyError(f"keystore {path}: file not found") from None
        except (OSError, ValueError):
            raise SigningKeyError(f"keystore {path}: cannot read it as keystore JSON") from None
        try:
            key = Account.decrypt(data, password)
        except Exception:
            raise SigningKeyError(
                f"keystore {path}: cannot decrypt (wrong password in ${keystore_password_env} "
                "or a corrupt file)"
            ) from None
        return Signer.from_key(bytes(key), source=f"keystore {path}")
    raw = env.get(key_env)
    if not raw:
        raise SigningKeyError(f"signing key: environment variable ${key_env} is not set (or empty)")
    return Signer.from_key(raw, source=f"environment variable ${key_env}")


# -- the account is the signer ---------------------------------------------------------


class SignerMismatch(VenueError):
    """``[account] id`` is not the address of the key the venue signs with."""


def check_signer_is_account(
    account: AccountId, signer_address: str, *, source: str = "", venue: str = ""
) -> None:
    """Raise ``SignerMismatch`` unless ``account.account`` is ``signer_address``
    (case-insensitive). The message names both addresses and the config file."""
    if account.account.lower() == signer_address.lower():
        return
    where = f" in {source}" if source else ""
    prefix = f"{venue} venue: " if venue else ""
    raise SignerMismatch(
        f"{prefix}refusing to start: [account] id = {account.account!r}{where} is not the "
        f"signing key's address {signer_address.lower()} (the signing key is not the "
        f"account's wallet). A signing venue's account is its signer's address, so the "
        f"lease, limits and budget follow the key: set [account] id = "
        f"\"{signer_address.lower()}\" in {source or 'the config'}, or load the key of "
        f"{account.account}."
    )
