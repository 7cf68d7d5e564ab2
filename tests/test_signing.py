"""Private keys: loaded from env or an encrypted keystore, and never disclosed.

The disclosure test runs the EVM venue end to end with the key loaded from the
environment (also through the gate, ledger and Context), then searches every place a
key could leak to: all log output (every logger at DEBUG, web3's included), reprs,
exception texts and tracebacks, the status document and table, and every key name and
value in Redis (SCAN + DUMP, plus each value read by type).
"""

from __future__ import annotations

import json
import logging
import pickle
import traceback
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from eth_account import Account

from guardrails import limits
from guardrails.config import parse_config
from guardrails.gate import OrderGate
from guardrails.keys import AccountId
from guardrails.ledger import Ledger
from guardrails.model import Intent, Side
from guardrails.ops.status import render_table, status_document
from guardrails.runtime.context import Context, MarkBook
from guardrails.venues.evm import EvmVenue
from guardrails.venues.signing import Signer, SigningKeyError, load_signer
from tests.evm_chain import (
    ETH,
    TKN,
    ChainProvider,
    World,
    allocate_nonce,
    order,
    take_lease,
    world,
)

__all__ = ["world"]  # the fixture, imported so pytest finds it here


@dataclass
class _Term:
    token: int
    holder_id: str

    def valid(self) -> bool:
        return True


def _forms(key: bytes) -> list[bytes]:
    hexkey = key.hex()
    return [key, hexkey.encode(), hexkey.upper().encode()]


def _leaks(blob: bytes | str, key: bytes) -> bool:
    data = blob.encode() if isinstance(blob, str) else blob
    return any(form in data for form in _forms(key)) or key.hex().encode() in data.lower()


def test_load_signer_when_env_holds_key_then_address_matches_and_repr_hides_key() -> None:
    acct = Account.create()
    signer = load_signer(key_env="K", environ={"K": "0x" + acct.key.hex()})
    assert signer.address == acct.address.lower() and signer.checksum_address == acct.address
    assert repr(signer) == f"Signer(address={acct.address.lower()})" == str(signer)
    assert not _leaks(repr(signer), acct.key)
    with pytest.raises(TypeError):
        pickle.dumps(signer)
    assert not hasattr(signer, "__dict__")


def test_load_signer_when_keystore_file_then_decrypted_with_password_env(tmp_path: Path) -> None:
    acct = Account.create()
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps(Account.encrypt(acct.key, "s3cret", kdf="pbkdf2", iterations=1000)))
    signer = load_signer(key_env="UNUSED", keystore=path, keystore_password_env="PW",
                         environ={"PW": "s3cret"})
    assert signer.checksum_address == acct.address


@pytest.mark.parametrize("case", ["bad_password", "no_password", "garbled_env", "unset_env"])
def test_load_signer_when_source_is_bad_then_error_names_source_not_key(
    case: str, tmp_path: Path
) -> None:
    # Arrange
    acct = Account.create()
    path = tmp_path / "wallet.json"
    path.write_text(json.dumps(Account.encrypt(acct.key, "right", kdf="pbkdf2", iterations=1000)))
    garbled = acct.key.hex()[:-1] + "z"  # almost the key: must not be echoed either
    kwargs: dict[str, object] = {
        "bad_password": {"keystore": path, "environ": {"GUARDRAILS_KEYSTORE_PASSWORD": "wrong"}},
        "no_password": {"keystore": path, "environ": {}},
        "garbled_env": {"environ": {"K": garbled}},
        "unset_env": {"environ": {}},
    }[case]
    # Act
    with pytest.raises(SigningKeyError) as info:
        load_signer(key_env="K", **kwargs)  # type: ignore[arg-type]
    # Assert
    text = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert not _leaks(text, acct.key)
    assert garbled[:-1] not in text
    assert ("wallet.json" in text) if case in ("bad_password", "no_password") else ("K" in text)


def test_signer_from_key_when_invalid_then_error_hides_value() -> None:
    with pytest.raises(SigningKeyError) as info:
        Signer.from_key("0x" + "ab" * 31, source="test")
    assert "ab" * 31 not in "".join(traceback.format_exception(info.value))


async def test_private_key_when_venue_runs_then_absent_from_logs_reprs_errors_and_redis(
    world: World,
    redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: the key comes from the environment, as in production; log everything.
    caplog.set_level(logging.DEBUG)
    key = bytes(world.wallet.key)
    monkeypatch.setenv("GUARDRAILS_EVM_KEY", "0x" + key.hex())
    venue = EvmVenue(world.venue_cfg(), world.account, None, redis=redis_client,
                     risk=world.risk, provider=ChainProvider(world.chain))
    errors: list[BaseException] = []
    # Act: a full session — start, takeover sync, fills, a revert, a refused order,
    # lookups, cancels, balances, and failures (wrong chain, wrong wallet, bad keys).
    await venue.start()
    token = await take_lease(world, "A")
    await venue.sync_nonce(token, "A")
    results = []
    for tag, sym, side, qty in [("k1", TKN, Side.SELL, "1"), ("k2", TKN, Side.SELL, "5000"),
                                ("k3", ETH, Side.BUY, "0.1"), ("k4", ETH, Side.SELL, "0.1")]:
        o = order(tag, token=token, nonce=await allocate_nonce(redis_client, world.keys),
                  symbol=sym, side=side, qty=qty)
        results.append(await venue.submit(o))
        results.append(await venue.lookup(o.client_order_id))
        results.append(await venue.cancel(o.client_order_id))
    results.append(await venue.fills_since(None))
    results.append(await venue.balances())
    # ... and one order through the gate and ledger, so status has an account to show.
    cfg = parse_config({"account": {"venue": world.account.venue, "id": world.wallet.address},
                        "risk": world.risk.model_dump(mode="json"),
                        "venue": world.venue_cfg().model_dump(mode="json")})
    assert await limits.check_or_init(redis_client, world.keys, world.risk, "A") is None
    ledger = Ledger(redis_client, world.keys, world.risk)
    await ledger.update_marks(await venue.marks(list(world.risk.instruments)))
    ctx = Context("s", gate=OrderGate(redis_client, world.keys, world.risk), ledger=ledger,
                  venue=venue, leadership=_Term(token, "A"), risk=world.risk,
                  marks=MarkBook(), allocate_nonce=True)
    results.append(await ctx.submit(Intent(TKN, Side.SELL, Decimal(1), Decimal(2),
                                           intent_id="via-gate")))
    doc = await status_document(redis_client, [world.account], config=cfg)
    wrong_chain = EvmVenue(world.venue_cfg(chain_id=1), world.account, None, redis=redis_client,
                           risk=world.risk, provider=ChainProvider(world.chain))
    other = AccountId(world.account.venue, Account.create().address)
    wrong_wallet = EvmVenue(world.venue_cfg(), other, None, redis=redis_client,
                            risk=world.risk, provider=ChainProvider(world.chain))
    for bad in (wrong_chain.start(), wrong_wallet.start()):
        try:
            await bad
        except Exception as e:
            errors.append(e)
    monkeypatch.setenv("GUARDRAILS_EVM_KEY", key.hex()[:-2])
    try:
        EvmVenue(world.venue_cfg(), world.account, None, redis=redis_client, risk=world.risk)
    except Exception as e:
        errors.append(e)
    # Assert: the key is nowhere.
    assert len(errors) == 3
    assert any(r.state.value == "filled" for r in results if hasattr(r, "state"))
    assert doc["accounts"][0]["positions"]
    texts = [caplog.text, repr(venue), str(venue), repr(results), json.dumps(doc),
             render_table(doc)]
    texts += ["".join(traceback.format_exception(e)) for e in errors]
    for text in texts:
        assert not _leaks(text, key)
    scanned = 0
    async for name in redis_client.scan_iter(count=500):
        scanned += 1
        assert not _leaks(name, key)
        raw = await redis_client.execute_command("DUMP", name, NEVER_DECODE=True)
        assert raw is not None and not _leaks(raw, key)
        kind = await redis_client.type(name)
        value: object = {
            "string": redis_client.get, "hash": redis_client.hgetall,
            "list": lambda k: redis_client.lrange(k, 0, -1), "set": redis_client.smembers,
            "zset": lambda k: redis_client.zrange(k, 0, -1),
            "stream": lambda k: redis_client.xrange(k),
        }[kind](name)
        assert not _leaks(repr(await value), key)  # type: ignore[misc]
    assert scanned >= 5  # the lease, fence, nonce and the venue's order records
    assert Decimal(0) < world.chain.balance(world.wallet.address)
