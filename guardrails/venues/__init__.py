"""Venues: where admitted orders go. ``make_venue`` builds the configured one.

Every adapter implements ``base.Venue`` and passes the shared conformance suite
(``tests/venue_conformance.py``); docs/venues.md says which fences each venue offers.
Adapters are imported lazily, so importing this package never needs aiohttp, web3 or ccxt.
"""

from __future__ import annotations

import importlib
from typing import Any

import redis.asyncio as aioredis

from guardrails.config import (
    CcxtVenueConfig,
    Config,
    EvmVenueConfig,
    HttpVenueConfig,
    PaperVenueConfig,
    PolymarketVenueConfig,
)
from guardrails.venues.base import Venue, VenueError


def make_venue(cfg: Config, redis: aioredis.Redis, *, signer: Any = None) -> Venue:
    """The venue of ``cfg``'s account.

    ``redis`` is used by the paper venue (its exchange lives in Redis) and the ccxt
    venue (its durable fills cursor). ``signer`` (an
    eth-account ``LocalAccount``) overrides the key the HTTP/EVM venues would otherwise
    read from their configured env var or keystore; it is never logged.
    """
    venue_cfg = cfg.venue
    if isinstance(venue_cfg, PaperVenueConfig):
        from guardrails.venues.paper import PaperVenue

        return PaperVenue(redis, venue_cfg, cfg.account_id, risk=cfg.risk)
    if isinstance(venue_cfg, HttpVenueConfig):
        from guardrails.venues.http import HttpVenue

        return HttpVenue(venue_cfg, cfg.account_id, signer, risk=cfg.risk, source=cfg.source)
    if isinstance(venue_cfg, EvmVenueConfig):
        # Imported by name so this package imports (and type-checks) without the EVM
        # adapter. Constructor contract: EvmVenue(venue_cfg, account, signer, *, redis, risk).
        try:
            evm = importlib.import_module("guardrails.venues.evm")
        except ImportError as e:
            raise VenueError(
                f"the EVM venue cannot be loaded ({e}); reinstall with `make setup`"
            ) from e
        evm_venue: Venue = evm.EvmVenue(
            venue_cfg, cfg.account_id, signer, redis=redis, risk=cfg.risk, source=cfg.source
        )
        return evm_venue
    if isinstance(venue_cfg, CcxtVenueConfig):
        from guardrails.venues.ccxt import CcxtVenue

        return CcxtVenue(venue_cfg, cfg.account_id, risk=cfg.risk, source=cfg.source,
                         redis=redis, lease=cfg.lease)
    if isinstance(venue_cfg, PolymarketVenueConfig):
        from guardrails.venues.polymarket import PolymarketVenue

        return PolymarketVenue(
            venue_cfg, cfg.account_id, signer, redis=redis, risk=cfg.risk, source=cfg.source
        )
    raise TypeError(f"unsupported venue config {type(venue_cfg).__name__}")
