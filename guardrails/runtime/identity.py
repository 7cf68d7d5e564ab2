"""The identity of a venue's account: one signer or exchange account, one account id.

Invariant upheld: *the lease's domain is the protected resource*. For a venue that acts
as a signing key (``http``, ``evm``, ``polymarket``) or an exchange API key (``ccxt``)
the resource is the exchange account or wallet behind that key, not the label written
in ``[account]``. Two labels over one account would be two leases, two limits and two
budgets over it. So, by construction:

1. ``venues.signing.check_signer_is_account`` — called by every signing venue's
   ``start()`` once its key is loaded — refuses to start when ``[account] id`` is not the signer's address
   (case-insensitive). (The HTTP venue's embedded demo key is exempt: it is *derived
   from* the account id, so distinct accounts get distinct addresses by construction.)
2. For EVM, ``config.py`` requires ``[account] venue = "evm-<chain_id>"``: one wallet on
   one chain has one label (``docs/venues.md``).
3. Belt and braces across labels: ``claim_account`` binds the signer address (per chain /
   EIP-712 domain) to ONE account id in Redis (``keys.signer_claim``, ``SET NX``, no
   expiry). An instance of any other account id finding the claim refuses to run and
   names the account that owns the signer.
4. A ccxt account has no address to derive its id from, so its label stays the
   operator's; ``claim_account`` binds the exchange account to ONE account id in the same
   way (``keys.exchange_claim``). The exchange account is what the exchange says it is
   where it says so (Binance: the ``uid`` of ``GET /api/v3/account``, read by the venue at
   start: two API keys of one account share it), else a domain-separated SHA-256 of the
   API key (``venues.ccxt.api_key_digest``).
5. A claim is checked once, at start, but Redis can lose it later (a restart without
   persistence, a failover to a replica that never had it), and then another account id
   could claim the same signer or exchange account while this one runs. So the runtime
   sets it again (``reclaim``: ``SET NX``) every heartbeat period and at every takeover,
   for the instance's whole life: a lost claim
   is restored by its owner and said (``identity.<kind>_restored``); one another account
   id took meanwhile is a conflict that stops this instance.

What this does NOT guarantee: anything across two different Redis deployments (each
has its own claims); two keys for one exchange account where the exchange does not
report the account (a ccxt exchange other than Binance, or a Binance answer without a
``uid``: each key is then its own claim) — there the operator must give both configs the
same account id; an exchange's sub-accounts are separate accounts (their own uids), so a
master key and a sub-account key are not related here. Keys are never logged or stored:
only a signer's address or the API key's digest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError, RedisError

from guardrails import logs
from guardrails.config import (
    CcxtVenueConfig,
    Config,
    EvmVenueConfig,
    HttpVenueConfig,
    PolymarketVenueConfig,
)
from guardrails.keys import exchange_claim, signer_claim
from guardrails.venues.base import ExchangeAccount, VenueError

log = logging.getLogger("guardrails.identity")

CLAIM_RETRY_S = 2.0
"""How often a claim that cannot reach Redis is tried again."""


@dataclass(frozen=True, slots=True)
class Claim:
    """What one account id claims in Redis for its venue."""

    kind: str
    """``signer`` or ``exchange_account``: the log events' names and the conflict's class."""
    key: str
    """The claim's Redis key (``keys.signer_claim`` / ``keys.exchange_claim``)."""
    what: str
    """The claimed thing in words, for the messages (never a key or secret)."""
    rule: str
    """Why two account ids must not share it."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Log fields naming it."""


class ClaimConflict(VenueError):
    """The venue's account (a signer, an exchange account) is already claimed in Redis by
    another account id."""

    def __init__(self, claim: Claim, owner: str, account: str) -> None:
        self.claim, self.owner, self.account = claim, owner, account
        super().__init__(
            f"{claim.what} already belongs to account {owner} in this Redis, not to "
            f"{account}: {claim.rule}. Refusing to run {account}. Use the config of {owner} "
            f"(with --standby for a second copy), or, if {owner} is retired — every "
            f"instance of it stopped (a running one sets its claim again) — and shares "
            f"nothing open, delete the key {claim.key} deliberately."
        )


class SignerConflict(ClaimConflict):
    """The signer is already claimed in Redis by another account id."""


class ExchangeAccountConflict(ClaimConflict):
    """The ccxt venue's exchange account is already claimed in Redis by another account id."""


class ClaimNotPermitted(VenueError):
    """The Redis user may not touch the claim's key (an ACL without it): not a passing
    Redis failure, so it is not retried — the operator must add the key to the role."""

    def __init__(self, claim: Claim, account: str, error: str) -> None:
        self.claim = claim
        super().__init__(
            f"the Redis user of {account} may not write {claim.key}, the claim that binds "
            f"{claim.what} to one account id ({error}): add `~{claim.key}` to the bot's ACL "
            "user (docs/operations.md, Redis ACL roles). Refusing to run without the claim."
        )


def claim_of(cfg: Config, venue: object) -> Claim | None:
    """What ``cfg``'s started venue claims, or None (the paper venue: Redis is its exchange)."""
    if isinstance(cfg.venue, CcxtVenueConfig):
        acct = getattr(venue, "exchange_account", None)
        if not isinstance(acct, ExchangeAccount):
            raise VenueError("ccxt venue: no exchange account to claim (not started?)")
        return Claim("exchange_account", exchange_claim(acct.exchange, acct.kind, acct.ref),
                     str(acct), "one exchange account is one account id, so two account "
                     "ids must not trade it", {"exchange": acct.exchange,
                                               "exchange_account": f"{acct.kind}:{acct.ref}"})
    if not isinstance(cfg.venue, HttpVenueConfig | EvmVenueConfig | PolymarketVenueConfig):
        return None
    address = getattr(venue, "address", None)
    if not isinstance(address, str) or not address:
        raise VenueError(f"{cfg.venue.kind} venue: no signer address to claim (not started?)")
    chain_id, address = cfg.venue.chain_id, address.lower()
    return Claim("signer", signer_claim(chain_id, address),
                 f"signer {address} (chain {chain_id})",
                 "one signing key is one account, so two account labels must not share it",
                 {"signer": address, "chain_id": chain_id})


async def claim_account(
    redis: aioredis.Redis,
    cfg: Config,
    venue: object,
    *,
    stop: asyncio.Event | None = None,
    retry_s: float = CLAIM_RETRY_S,
) -> Claim | None:
    """Bind the started ``venue``'s signer or exchange account to ``cfg``'s account id in
    Redis, once.

    Call after ``venue.start()`` and before standing for the lease. Returns the claim
    when it is ours (newly set, or already ours; then hold it with ``reclaim``), None
    when the venue claims nothing (paper) or when ``stop`` is set first. Raises
    ``SignerConflict`` / ``ExchangeAccountConflict`` when another account id owns it.
    A Redis failure is logged once and retried every ``retry_s`` (nothing can be
    admitted meanwhile anyway).
    """
    claim = claim_of(cfg, venue)
    if claim is None:
        return None
    account = str(cfg.account_id)
    failing = False
    while stop is None or not stop.is_set():
        try:
            owner, _ = await _claim_once(redis, claim.key, account)
            break
        except NoPermissionError as e:  # an ACL without the claim key: retrying cannot help
            logs.event(log, f"identity.{claim.kind}_not_permitted", logging.ERROR,
                       **claim.fields, claim=claim.key, account=account, error=str(e),
                       action="refusing to run: add the claim key to the bot's ACL user")
            raise ClaimNotPermitted(claim, account, str(e)) from None
        except (RedisError, OSError, TimeoutError) as e:
            if not failing:
                logs.event(log, "identity.redis_unavailable", logging.WARNING,
                           during=f"{claim.kind} claim", error=f"{type(e).__name__}: {e}",
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
        return None
    _refuse_unless_ours(claim, owner, account)
    logs.event(log, f"identity.{claim.kind}_claimed", **claim.fields, claim=claim.key,
               account=account)
    return claim


async def reclaim(redis: aioredis.Redis, claim: Claim, account: str) -> None:
    """Set ``claim`` (ours: ``claim_account`` returned it) again (``SET NX``): the runtime
    calls it at every heartbeat period and at every takeover for its whole life, so a
    claim Redis lost is restored by its owner (logged ``identity.<kind>_restored``) before
    another account id can take it. Raises the conflict (``SignerConflict`` /
    ``ExchangeAccountConflict``) when another account id owns it: it took the claim while
    Redis had none, and two account ids would trade one account. A Redis failure is
    skipped (the heartbeat reports outages; nothing is admitted meanwhile): the next
    call tries again."""
    try:
        owner, created = await _claim_once(redis, claim.key, account)
    except (RedisError, OSError, TimeoutError):
        return
    _refuse_unless_ours(claim, owner, account, running=True)
    if created:
        logs.event(log, f"identity.{claim.kind}_restored", logging.WARNING, **claim.fields,
                   claim=claim.key, account=account,
                   detail="the claim was missing from Redis (Redis lost it, or it was "
                          "deleted while this instance runs): set again")


def _refuse_unless_ours(claim: Claim, owner: str, account: str, *,
                        running: bool = False) -> None:
    """Raise the claim's conflict (logged ``identity.<kind>_conflict``) unless ``owner``
    is ``account``."""
    if owner == account:
        return
    logs.event(log, f"identity.{claim.kind}_conflict", logging.ERROR, **claim.fields,
               claim=claim.key, owner=owner, account=account,
               action="stopping" if running else "refusing to run")
    conflict = SignerConflict if claim.kind == "signer" else ExchangeAccountConflict
    raise conflict(claim, owner, account)


async def _claim_once(redis: aioredis.Redis, key: str, account: str) -> tuple[str, bool]:
    """``SET key account NX``; the owner afterwards (ours, or the one found), and whether
    this call set it."""
    while True:
        created: Any = await redis.set(key, account, nx=True)
        if created:
            return account, True
        owner: Any = await redis.get(key)
        if owner is not None:
            return owner.decode() if isinstance(owner, bytes) else str(owner), False
        # Deleted by an operator between the two commands: claim again.
