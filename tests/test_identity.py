"""The account of a signing venue is its signer: one key, one label, one lease.

Reproduces the review finding "the lease is keyed by the config's label": two configs
with one HTTP signing key and different ``[account] id`` both became active. Now the id
must be the signer's address, an EVM label is derived from the chain, and a claim in
Redis binds each signer to one account id across labels.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from eth_account import Account

from guardrails.config import ConfigError, parse_config
from guardrails.keys import AccountId, signer_claim
from guardrails.runtime import identity
from guardrails.venues import signing
from tests.redis_harness import RedisServer, free_port
from tests.run_harness import RunProc, run_cli, write_config

KEY_ENV = "GUARDRAILS_TEST_IDENTITY_KEY"
KEY = "0x" + "11" * 32
ADDRESS = str(Account.from_key(KEY).address).lower()

RISK: dict[str, Any] = {
    "max_order_notional": "1000000", "max_gross_exposure": "100000000",
    "daily_loss_limit": "1000000",
    "instruments": {"BTC-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "1000"}},
}
EVM_VENUE: dict[str, Any] = {
    "kind": "evm", "rpc_url": "http://127.0.0.1:1", "chain_id": 137,
    "max_fee_per_gas": 10, "max_priority_fee_per_gas": 1,
}


class _Started:
    """A started signing venue as ``claim_account`` sees it: it has an address."""

    def __init__(self, address: str) -> None:
        self.address = address


def _http_config(path: Path, redis_url: str, *, label: str, account: str, url: str) -> Path:
    """A run config whose venue signs with ``$KEY_ENV`` at the HTTP venue ``url``."""
    write_config(path, redis_url=redis_url, account=account)
    text = path.read_text().replace('venue = "paper"', f'venue = "{label}"', 1)
    head, rest = text[: text.index("[venue]")], text[text.index("[[strategies]]"):]
    market = "" if url != "embedded" else (
        '\n[venue.simulator]\nseed = 7\nstep = "250ms"\nvolatility = "0.0005"\n'
        'start_prices = { BTC-USD = "60000.00" }\n'
    )
    path.write_text(
        head + f'[venue]\nkind = "http"\nurl = "{url}"\nkey_env = "{KEY_ENV}"\n{market}\n' + rest
    )
    return path


# -- the account id is the signer's address --------------------------------------------


def test_check_when_id_is_signer_in_other_case_then_accepted() -> None:
    signing.check_signer_is_account(AccountId("http", ADDRESS.upper().replace("0X", "0x")),
                                     ADDRESS, source="a.toml")


def test_check_when_id_is_a_label_then_refused_naming_both_and_file() -> None:
    with pytest.raises(signing.SignerMismatch) as info:
        signing.check_signer_is_account(AccountId("http", "desk-a"), ADDRESS,
                                         source="/etc/gr/a.toml", venue="http")

    text = str(info.value)
    assert "'desk-a'" in text and ADDRESS in text and "/etc/gr/a.toml" in text
    assert KEY.removeprefix("0x") not in text


def test_run_when_two_configs_share_http_key_under_labels_then_both_exit_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: the review's repro — one signing key, [account] id "desk-a" and "desk-b".
    url = f"http://127.0.0.1:{free_port()}"  # never reached: refused before connecting
    configs = [_http_config(tmp_path / f"{n}.toml", redis_server.url, label="paper",
                            account=n, url=url) for n in ("desk-a", "desk-b")]
    # Act
    results = [run_cli("run", "--config", str(c), env={KEY_ENV: KEY}) for c in configs]
    # Assert: neither runs; each names its id, the signer's address and its file.
    for config, result in zip(configs, results, strict=True):
        assert result.returncode == 2, result.stderr
        assert f"[account] id = '{config.stem}'" in result.stderr
        assert ADDRESS in result.stderr and str(config) in result.stderr
        assert "lease.acquired" not in result.stderr
        assert KEY.removeprefix("0x") not in result.stdout + result.stderr
    assert redis_server.client().exists(signer_claim(1, ADDRESS)) == 0


# -- EVM: the label is derived from the chain -------------------------------------------


def test_config_when_evm_label_is_not_evm_chain_id_then_refused() -> None:
    wallet = Account.create().address
    with pytest.raises(ConfigError) as info:
        parse_config({"account": {"venue": "evm", "id": wallet}, "risk": RISK,
                      "venue": EVM_VENUE}, "w.toml")

    assert "w.toml" in str(info.value) and "account.venue must be 'evm-137'" in str(info.value)


def test_config_when_evm_label_is_evm_chain_id_then_accepted_and_source_kept() -> None:
    wallet = Account.create().address
    cfg = parse_config({"account": {"venue": "evm-137", "id": wallet}, "risk": RISK,
                        "venue": EVM_VENUE}, "w.toml")

    assert str(cfg.account_id) == f"evm-137:{wallet.lower()}" and cfg.source == "w.toml"


def test_config_when_evm_id_is_not_an_address_then_refused() -> None:
    with pytest.raises(ConfigError, match=r"account\.id must be the wallet's 0x address"):
        parse_config({"account": {"venue": "evm-137", "id": "treasury"}, "risk": RISK,
                      "venue": EVM_VENUE}, "w.toml")


# -- the signer claim across labels -----------------------------------------------------


def _cfg(label: str, account: str = ADDRESS) -> Any:
    return parse_config({"account": {"venue": label, "id": account}, "risk": RISK,
                         "venue": {"kind": "http", "url": "http://127.0.0.1:1"}})


async def test_claim_when_first_then_set_and_when_same_account_again_then_accepted(
    redis_client: aioredis.Redis,
) -> None:
    await identity.claim_account(redis_client, _cfg("http"), _Started(ADDRESS))
    await identity.claim_account(redis_client, _cfg("http"), _Started("0x" + ADDRESS[2:].upper()))

    assert await redis_client.get(signer_claim(1, ADDRESS)) == f"http:{ADDRESS}"


async def test_claim_when_signer_owned_by_other_label_then_conflict_naming_owner(
    redis_client: aioredis.Redis,
) -> None:
    await identity.claim_account(redis_client, _cfg("paper"), _Started(ADDRESS))

    with pytest.raises(identity.SignerConflict) as info:
        await identity.claim_account(redis_client, _cfg("http"), _Started(ADDRESS))

    assert info.value.owner == f"paper:{ADDRESS}"
    assert f"already belongs to account paper:{ADDRESS}" in str(info.value)
    assert await redis_client.get(signer_claim(1, ADDRESS)) == f"paper:{ADDRESS}"


async def test_claim_when_paper_venue_then_nothing_claimed(redis_client: aioredis.Redis) -> None:
    cfg = parse_config({"account": {"venue": "paper", "id": "p1"}, "risk": RISK,
                        "venue": {"kind": "paper", "start_prices": {"BTC-USD": "1"}}})

    await identity.claim_account(redis_client, cfg, object())

    assert await redis_client.keys("gr:signer:*") == []


async def test_claim_when_redis_unreachable_then_retries_until_it_returns(
    redis_server: RedisServer,
) -> None:
    # Arrange: Redis down when the claim starts.
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                     socket_timeout=1, socket_connect_timeout=1)
    redis_server.kill()
    try:
        claim = asyncio.create_task(
            identity.claim_account(client, _cfg("http"), _Started(ADDRESS), retry_s=0.2)
        )
        await asyncio.sleep(1.0)
        assert not claim.done()  # still trying, not failed open or closed
        # Act
        redis_server.restart()
        await asyncio.wait_for(claim, 30)
        # Assert
        assert await client.get(signer_claim(1, ADDRESS)) == f"http:{ADDRESS}"
    finally:
        await client.aclose()


async def test_claim_when_acl_lacks_claim_key_then_refused_at_once_naming_the_key(
    redis_server: RedisServer, redis_client: aioredis.Redis,
) -> None:
    # Arrange: a bot role for its own account's keys only — the claim key left out, as a
    # role written before the claim existed would be
    cfg = _cfg("http")
    await redis_client.execute_command(
        "ACL", "SETUSER", "gr-bot-noclaim", "reset", "on", ">pw-noclaim",
        f"~gr:{{{cfg.account_id}}}:*", "-@all", "+@read", "+@write")
    bot = aioredis.Redis(port=redis_server.port, username="gr-bot-noclaim",
                         password="pw-noclaim", decode_responses=True)
    try:
        # Act: not retried for ever as if Redis were down — refused, naming what to add
        with pytest.raises(identity.ClaimNotPermitted) as info:
            await asyncio.wait_for(
                identity.claim_account(bot, cfg, _Started(ADDRESS), retry_s=0.1), 10)
    finally:
        await bot.aclose()

    # Assert
    assert f"~{signer_claim(1, ADDRESS)}" in str(info.value)
    assert await redis_client.get(signer_claim(1, ADDRESS)) is None


def test_run_when_two_labels_share_one_signer_then_second_refused_naming_owner(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Arrange: ids are the signer's address (so the id check passes) but the labels
    # differ: without the claim these would be two leases over one exchange account.
    a = _http_config(tmp_path / "a.toml", redis_server.url, label="paper", account=ADDRESS,
                     url="embedded")
    b = _http_config(tmp_path / "b.toml", redis_server.url, label="http", account=ADDRESS,
                     url="embedded")
    first = RunProc("A", a, tmp_path, env={KEY_ENV: KEY})
    second = RunProc("B", b, tmp_path, env={KEY_ENV: KEY}, standby=True)
    try:
        first.start()
        first.wait_for("runtime.active", timeout=90)
        # Act
        second.start()
        rc = second.wait_exit(timeout=60)
        first_still_active = first.running()
    finally:
        first.cleanup()
        second.cleanup()
    # Assert
    assert rc == 2, second.text()
    assert f"already belongs to account paper:{ADDRESS}" in second.text()
    assert not second.events("lease.acquired") and not second.events("runtime.active")
    assert first_still_active
    assert os.environ.get(KEY_ENV) is None  # the key only ever went to the children
