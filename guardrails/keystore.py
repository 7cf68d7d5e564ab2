"""Private keys for signing venues (EVM wallet, signed-order HTTP venues).

Invariant upheld: *a private key never leaves the process that signs with it*. A key is
read from an environment variable or decrypted from an encrypted keystore file (the
standard Web3 Secret Storage JSON, ``eth_account.Account.decrypt``), held inside a
``Signer`` and used only to sign. It is never logged, never written to Redis, never
part of status output, and never in an exception's text: ``Signer``'s ``repr``/``str``
show the address only, and every load error is a ``KeyLoadError`` whose message names
the *source* (variable or file) and never the value, raised ``from None`` so no
underlying exception carrying the value is chained onto it.

Not guaranteed: Python cannot erase memory. Code in the same process that digs into
the ``Signer``'s private attribute can read the key; the guarantee is against
*accidental* disclosure (logs, reprs, tracebacks, Redis, status), not a hostile
in-process caller. Strategies never receive the ``Signer`` (they get a ``Context``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.datastructures import SignedTransaction
from eth_account.messages import SignableMessage
from eth_account.signers.local import LocalAccount


class KeyLoadError(Exception):
    """The key could not be loaded. The message names the source, never the key."""


class Signer:
    """Signs with one private key; shows only its address.

    ``address`` is the checksummed address. ``__slots__`` keeps the account out of
    ``vars()``; ``__repr__``/``__str__`` print the address; pickling is refused so a key
    cannot be serialized into Redis or a file by accident.
    """

    __slots__ = ("__account", "address")

    def __init__(self, account: LocalAccount) -> None:
        self.__account = account
        self.address: str = account.address

    @classmethod
    def from_key(cls, key: str | bytes, *, source: str = "a key") -> Signer:
        """Wrap a raw private key (hex string or 32 bytes). Errors never echo the key."""
        try:
            if isinstance(key, str):
                key = key.strip()
            return cls(Account.from_key(key))
        except Exception:
            raise KeyLoadError(
                f"{source}: not a valid private key (expected 32 bytes as 64 hex digits)"
            ) from None

    def sign_transaction(self, tx: dict[str, Any]) -> SignedTransaction:
        """Sign an EIP-1559 transaction dict; returns raw bytes and hash."""
        return self.__account.sign_transaction(tx)

    def sign_message(self, message: SignableMessage) -> Any:
        """Sign an EIP-191/EIP-712 ``SignableMessage`` (e.g. from ``encode_typed_data``)."""
        return self.__account.sign_message(message)

    def sign_typed_data(self, full_message: dict[str, Any]) -> Any:
        """Sign EIP-712 typed data given as one full message dict."""
        return self.__account.sign_typed_data(full_message=full_message)

    def __repr__(self) -> str:
        return f"Signer(address={self.address})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a Signer holds a private key and cannot be pickled")

    def __getstate__(self) -> Any:
        raise TypeError("a Signer holds a private key and cannot be pickled")


def load_signer(
    *,
    key_env: str,
    keystore: str | os.PathLike[str] | None = None,
    keystore_password_env: str = "GUARDRAILS_KEYSTORE_PASSWORD",
    environ: dict[str, str] | None = None,
) -> Signer:
    """Load the signing key: from ``keystore`` (decrypted with the password in
    ``keystore_password_env``) when given, else from the environment variable ``key_env``.
    """
    env = os.environ if environ is None else environ
    if keystore is not None:
        path = Path(keystore)
        password = env.get(keystore_password_env)
        if password is None:
            raise KeyLoadError(
                f"keystore {path}: the password variable {keystore_password_env} is not set"
            )
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise KeyLoadError(f"keystore {path}: file not found") from None
        except (OSError, ValueError):
            raise KeyLoadError(f"keystore {path}: cannot read it as keystore JSON") from None
        try:
            key = Account.decrypt(data, password)
        except Exception:
            raise KeyLoadError(
                f"keystore {path}: cannot decrypt (wrong password in {keystore_password_env} "
                "or a corrupt file)"
            ) from None
        return Signer.from_key(bytes(key), source=f"keystore {path}")
    raw = env.get(key_env)
    if not raw:
        raise KeyLoadError(f"environment variable {key_env} is not set (or empty)")
    return Signer.from_key(raw, source=f"environment variable {key_env}")
