"""The identity of a signing venue's account: the account IS the signer's address.

Invariant upheld: *the lease's domain is the protected resource*. For a venue that acts
as a signing key (``http``, ``evm``) the resource is the exchange account or wallet of
that key, not the label written in ``[account]``. Two labels with one key would be two
leases, two limits and two budgets over one account. So, by construction:

1. ``check_signer_is_account`` — called by every signing venue's ``start()`` once its
   key is loaded — refuses to start when ``[account] id`` is not the signer's address
   (case-insensitive). (The HTTP venue's embedded demo key is exempt: it is *derived
   from* the account id, so distinct accounts get distinct addresses by construction.)
2. For EVM, ``config.py`` requires ``[account] venue = "evm-<chain_id>"``: one wallet on
   one chain has one label (``docs/venues.md``).
3. Belt and braces across labels: ``claim_signer`` binds the signer address (per chain /
   EIP-712 domain) to ONE account id in Redis (``keys.signer_claim``, ``SET NX``, no
   expiry). An instance of any other account id finding the claim refuses to run and
   names the account that owns the signer.

What this does NOT guarantee: anything across two different Redis deployments (each
has its own claims), or two keys for one exchange account (an exchange with sub-keys):
there the operator must give both configs the same account id. The key itself is never
logged: only its address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import logs
from guardrails.config import Config, EvmVenueConfig, HttpVenueConfig, PolymarketVenueConfig
from guardrails.keys import AccountId, signer_claim
from guardrails.venues.base import VenueError

log = logging.getLogger("guardrails.identity")

CLAIM_RETRY_S = 2.0
"""How often a claim that cannot reach Redis is tried again."""


class SignerMismatch(VenueError):
    """``[account] id`` is not the address of the key the venue signs with."""


class SignerConflict(VenueError):
    """The signer is already claimed in Redis by another account id."""

    def __init__(self, address: str, chain_id: int, owner: str, account: str) -> None:
        self.address, self.chain_id, self.owner, self.account = address, chain_id, owner, account
        super().__init__(
            f"signer {address} (chain {chain_id}) already belongs to account {owner} in this "
            f"Redis, not to {account}: one signing key is one account, so two account labels "
            f"must not share it. Refusing to run {account}. Use the config of {owner} (with "
            f"--standby for a second copy), or, if {owner} is retired and shares nothing "
            f"open, delete the key {signer_claim(chain_id, address)} deliberately."
        )


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


def claim_of(cfg: Config, venue: object) -> tuple[int, str] | None:
    """(chain id, signer address) to claim for ``cfg``'s venue, or None (paper venue)."""
    if not isinstance(cfg.venue, HttpVenueConfig | EvmVenueConfig | PolymarketVenueConfig):
        return None
    address = getattr(venue, "address", None)
    if not isinstance(address, str) or not address:
        raise VenueError(f"{cfg.venue.kind} venue: no signer address to claim (not started?)")
    return cfg.venue.chain_id, address.lower()


async def claim_signer(
    redis: aioredis.Redis,
    cfg: Config,
    venue: object,
    *,
    stop: asyncio.Event | None = None,
    retry_s: float = CLAIM_RETRY_S,
) -> None:
    """Bind the started ``venue``'s signer to ``cfg``'s account id in Redis, once.

    Call after ``venue.start()`` and before standing for the lease. Returns when the
    claim is ours (newly set, or already ours) or the venue signs nothing (paper), or
    when ``stop`` is set. Raises ``SignerConflict`` when another account id owns the
    signer. A Redis failure is logged once and retried every ``retry_s`` (nothing can be
    admitted meanwhile anyway).
    """
    what = claim_of(cfg, venue)
    if what is None:
        return
    chain_id, address = what
    key, account = signer_claim(chain_id, address), str(cfg.account_id)
    failing = False
    while stop is None or not stop.is_set():
        try:
            owner = await _claim_once(redis, key, account)
            break
        except (RedisError, OSError, TimeoutError) as e:
            if not failing:
                logs.event(log, "identity.redis_unavailable", logging.WARNING,
                           during="signer claim", error=f"{type(e).__name__}: {e}",
                           action="retrying; not standing for the lease meanwhile")
            failing = True
            if stop is None:
                await asyncio.sleep(retry_s)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), retry_s)
                except TimeoutError:
                    pass
    else:
        return
    if owner != account:
        logs.event(log, "identity.signer_conflict", logging.ERROR, signer=address,
                   chain_id=chain_id, owner=owner, account=account, action="refusing to run")
        raise SignerConflict(address, chain_id, owner, account)
    logs.event(log, "identity.signer_claimed", signer=address, chain_id=chain_id,
               account=account)


async def _claim_once(redis: aioredis.Redis, key: str, account: str) -> str:
    """``SET key account NX``; the owner afterwards (ours, or the one found)."""
    while True:
        created: Any = await redis.set(key, account, nx=True)
        if created:
            return account
        owner: Any = await redis.get(key)
        if owner is not None:
            return owner.decode() if isinstance(owner, bytes) else str(owner)
        # Deleted by an operator between the two commands: claim again.
