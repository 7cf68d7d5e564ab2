"""Every Redis key guardrails uses, built in one place from the account identity.

Invariant upheld here: *the lease's domain is the protected resource*. Every key of an
account — lease, fencing counter, positions, budgets, kill switch, registry — derives
from ``AccountId`` (venue + account id) and nothing else: never the host, the user,
``$HOME``, the pid, the working directory or the strategy. All keys of one account
share one hash tag, ``{venue:account}``, so every Lua script touches a single slot and
runs unchanged on Redis Cluster.

The schema is a public, versioned contract documented in ``docs/keys.md``; dashboards
read these keys directly. Changing a name or a field is a schema-version bump.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEMA_VERSION = 2
"""Value stored at ``AccountKeys.schema``; the gate refuses to act on any other.

Version 2 (issue #16): terminal orders and decided intents older than the retention
window are archived and removed by the prune sweep (``prune.py``), and every pruned
intent id is remembered in ``AccountKeys.tombstones``, which the gate reads. A version-1
gate would not read it and would re-admit a pruned intent, so it must refuse a version-2
account: that is why the number moved. ``guardrails migrate`` moves a version-1 account
(docs/keys.md, Migration)."""

SCHEMA_PREVIOUS = 1
"""The version ``guardrails migrate`` upgrades from (the data is unchanged: v2 adds keys)."""

PREFIX = "gr"
"""Prefix of every guardrails key (the paper venue's own keys use ``VENUE_PREFIX``)."""

VENUE_PREFIX = "venue"
"""Namespace of the paper venue: it is an exchange, not part of the harness's state."""

ACCOUNTS_INDEX = f"{PREFIX}:accounts"
"""SET of every account id string (``venue:account``) that ever ran; for ``--all``."""



def signer_claim(chain_id: int, address: str) -> str:
    """STRING, no expiry: the account id (``venue:account``) that owns signer ``address``
    on chain / EIP-712 domain ``chain_id`` in this Redis (``gr:signer:<chain_id>:<0x…>``).

    Deliberately outside every account's hash tag: it is the one key two account labels
    sharing a signing key both reach. Set with ``SET NX`` by ``identity.claim_account``;
    an instance of another account finding it refuses to run. Never expires; an operator
    moves a key to another account by deleting it (docs/keys.md).
    """
    return f"{PREFIX}:signer:{int(chain_id)}:{address.lower()}"


_EXCHANGE_REF_RE = re.compile(r"(uid|key):[A-Za-z0-9_.-]{1,128}")


def exchange_claim(exchange: str, kind: str, ref: str) -> str:
    """STRING, no expiry: the account id (``venue:account``) that owns one account at a
    ccxt exchange in this Redis (``gr:exchange:<exchange>:<kind>:<ref>``).

    ``exchange`` is the ccxt id (``-sandbox`` appended in sandbox mode); ``kind`` is
    ``uid`` (``ref``: the account's id as the exchange reports it, Binance's ``uid``) or
    ``key`` (the exchange reports none: ``ref`` is a domain-separated SHA-256 of the API
    key, never the key). The counterpart of ``signer_claim`` for API-key venues, with the
    same rules: outside every hash tag, set with ``SET NX`` by
    ``identity.claim_account``, never expires, deleted only by an operator.
    """
    if not _VENUE_RE.fullmatch(exchange) or not _EXCHANGE_REF_RE.fullmatch(f"{kind}:{ref}"):
        raise InvalidAccountId(f"exchange account {exchange!r} {kind}:{ref!r}: not a claim name")
    return f"{PREFIX}:exchange:{exchange}:{kind}:{ref}"


# whole-string patterns (fullmatch: "$" with match() would also take a trailing newline)
_VENUE_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_ACCOUNT_RE = re.compile(r"[A-Za-z0-9_.@-]{1,128}")


class InvalidAccountId(ValueError):
    """An account identity that cannot be used to build keys safely."""


@dataclass(frozen=True, slots=True)
class AccountId:
    """The protected resource: one trading account at one venue.

    ``venue`` names the venue (``paper``, ``http``, ``evm``…); ``account`` is the
    venue-side account or wallet address. Hex wallet addresses are lower-cased so one
    wallet cannot be two accounts by spelling.
    """

    venue: str
    account: str

    def __post_init__(self) -> None:
        if not _VENUE_RE.fullmatch(self.venue):
            raise InvalidAccountId(
                f"venue {self.venue!r}: use 1-32 chars of a-z, 0-9, '_' or '-', starting with a letter"
            )
        if not _ACCOUNT_RE.fullmatch(self.account):
            raise InvalidAccountId(
                f"account {self.account!r}: use 1-128 chars of A-Z, a-z, 0-9, '_', '.', '@' or '-'"
            )
        if self.account.startswith("0x") and len(self.account) == 42:
            object.__setattr__(self, "account", self.account.lower())

    @classmethod
    def parse(cls, text: str) -> AccountId:
        """Parse ``venue:account`` (the form the CLI's ``--account`` takes)."""
        venue, sep, account = text.partition(":")
        if not sep:
            raise InvalidAccountId(f"account {text!r}: expected 'venue:account', e.g. 'paper:demo'")
        return cls(venue, account)

    def __str__(self) -> str:
        return f"{self.venue}:{self.account}"

    @property
    def tag(self) -> str:
        """The Redis Cluster hash tag shared by every key of this account."""
        return "{" + str(self) + "}"


@dataclass(frozen=True, slots=True)
class AccountKeys:
    """Names of every key of one account (schema version ``SCHEMA_VERSION``).

    See ``docs/keys.md`` for each key's type, fields, units, writer and readers.
    """

    account: AccountId

    def _k(self, name: str) -> str:
        return f"{PREFIX}:{self.account.tag}:{name}"

    # -- schema -------------------------------------------------------------------
    @property
    def schema(self) -> str:
        """STRING: the key-schema version of this account's keys."""
        return self._k("schema")

    # -- lease (lease.py) ---------------------------------------------------------
    @property
    def fence(self) -> str:
        """STRING integer: the fencing counter; only ever INCR'd, never reset."""
        return self._k("fence")

    @property
    def lease(self) -> str:
        """STRING ``<token>:<holder_id>`` with a PX expiry: who may trade, until when."""
        return self._k("lease")

    @property
    def epoch(self) -> str:
        """STRING: the id of the fence's history, created with the fence counter; a
        history that was lost (FLUSHALL, empty restart) comes back without it."""
        return self._k("epoch")

    @property
    def fence_alarm(self) -> str:
        """HASH ``reason, seen_epoch, seen_token, epoch, fence, by, at_ms``: lost fence
        history was detected; no lease is given until ``guardrails fence recover``."""
        return self._k("fence_alarm")

    @property
    def lease_channel(self) -> str:
        """Pub/sub channel: ``released <token>`` when the holder releases the lease."""
        return self._k("lease:events")

    # -- kill switch (killswitch.py) ---------------------------------------------
    @property
    def state(self) -> str:
        """HASH: trading state latch (``state`` ACTIVE|REDUCING|HALTED, ``by``, ``at_ms``, ``reason``)."""
        return self._k("state")

    @property
    def kill_acks(self) -> str:
        """HASH: instance id -> ``<latch at_ms>:<state>`` of the latest latch that instance
        read after a control message (how ``kill``/``resume`` count confirmations)."""
        return self._k("kill_acks")

    @property
    def control_channel(self) -> str:
        """Pub/sub channel: a message on every trading-state change (kill, resume)."""
        return self._k("control")

    # -- risk state (gate.py, ledger.py) --------------------------------------------
    @property
    def limits(self) -> str:
        """HASH: the account's one set of effective limits and instruments, with who set them."""
        return self._k("limits")

    @property
    def positions(self) -> str:
        """HASH: combined position per symbol (see docs/keys.md for fields and units)."""
        return self._k("positions")

    @property
    def marks(self) -> str:
        """HASH: last mark price per symbol."""
        return self._k("marks")

    @property
    def reservations(self) -> str:
        """HASH: open (unfilled) reserved exposure per symbol and side."""
        return self._k("reservations")

    @property
    def aggregates(self) -> str:
        """HASH: maintained per-account aggregates (gross exposure, unrealized and
        reserved loss, per-symbol contributions) for the limits ``digest`` it names."""
        return self._k("agg")

    @property
    def open_orders(self) -> str:
        """SET: client order ids of every non-terminal order."""
        return self._k("open")

    def order(self, client_order_id: str) -> str:
        """HASH: one order's record and state."""
        return self._k(f"order:{client_order_id}")

    @property
    def intents(self) -> str:
        """HASH: intent id -> the gate's original decision (idempotency)."""
        return self._k("intents")

    @property
    def tombstones(self) -> str:
        """HASH: bucket (the first 3 hex digits of sha1(intent id)) -> the 6-byte
        fingerprints (sha1 hex digits 4-15, packed) of every intent id the prune sweep
        removed, concatenated; buckets ``c<3 hex>`` hold the pruned client order ids the
        same way. ``gate_admit.lua`` refuses an intent found here (``intent_pruned``): a
        late retry of a pruned intent is never admitted again; a venue fill naming a
        pruned order id is a late report, not foreign activity (``lua/lib/tomb.lua``;
        12 bytes per pruned order)."""
        return self._k("tomb")

    @property
    def prune_state(self) -> str:
        """HASH: the prune sweep's totals (``orders``, ``intents``, ``fills`` removed,
        ``last_ms``, ``last_cutoff_ms``): what status and the bench read."""
        return self._k("prune")

    @property
    def fills(self) -> str:
        """HASH: fill id -> client order id, for every fill applied (applied once)."""
        return self._k("fills")

    @property
    def journal(self) -> str:
        """STREAM: append-only journal of admissions, transitions and fills."""
        return self._k("journal")

    def pnl_history(self, trading_day: str) -> str:
        """LIST: the trading day's P&L samples, oldest first, one JSON object per element
        (``{"t", "realized_pnl", "unrealized_loss", "used", "limit"}``, decimal strings),
        appended by the active instance every report interval; what every dashboard draws."""
        return self._k(f"pnl:{trading_day}")

    def day(self, trading_day: str) -> str:
        """HASH: one trading day's realized PnL and loss (``trading_day`` is YYYY-MM-DD)."""
        return self._k(f"day:{trading_day}")

    @property
    def throttle(self) -> str:
        """HASH: the order-rate token bucket shared by every instance."""
        return self._k("throttle")

    @property
    def stats(self) -> str:
        """HASH: counters of admissions and denials by reason."""
        return self._k("stats")

    @property
    def denials(self) -> str:
        """STREAM (capped): recent denials with reason and detail, for dashboards."""
        return self._k("denials")

    @property
    def nonce(self) -> str:
        """STRING integer: next EVM nonce of the wallet, allocated inside the gate."""
        return self._k("nonce")

    @property
    def venue_cursor(self) -> str:
        """STRING: the venue's ``fills_since`` cursor the runtime has applied fills up to
        (ccxt venue: where a new term's fill pump resumes instead of the account's start)."""
        return self._k("venue_cursor")

    @property
    def clob_orders(self) -> str:
        """HASH: client order id -> Polymarket order hash (written before the order is sent)."""
        return self._k("clob:orders")

    @property
    def clob_hashes(self) -> str:
        """HASH: Polymarket order hash -> client order id (fills arrive by order hash)."""
        return self._k("clob:hashes")

    # -- registry (registry.py) ----------------------------------------------------
    @property
    def instances(self) -> str:
        """ZSET: instance id -> last heartbeat (ms since epoch); rows outlive their TTL key."""
        return self._k("instances")

    def instance(self, instance_id: str) -> str:
        """HASH with PX expiry: one instance's heartbeat record."""
        return self._k(f"instance:{instance_id}")


def venue_key(venue_name: str, *parts: str) -> str:
    """A key of the paper venue's own namespace (``venue:{<name>}:...``)."""
    return ":".join([VENUE_PREFIX, "{" + venue_name + "}", *parts])


@dataclass(frozen=True, slots=True)
class PaperVenueKeys:
    """Keys of one paper exchange (``venue:{<name>}:...``): the exchange's own state,
    shared by every instance and account trading on it, never part of ``gr:`` state.
    One hash tag per exchange, so each paper script touches one slot."""

    venue_name: str

    @property
    def clock(self) -> str:
        """HASH: ``origin_ms``, ``step``, ``px:<sym>`` (mark in ticks), ``pxd:<sym>`` (decimal)."""
        return venue_key(self.venue_name, "clock")

    @property
    def orders(self) -> str:
        """HASH: ``<account>|<client order id>`` -> JSON order record (state, fill, deadline...)."""
        return venue_key(self.venue_name, "orders")

    @property
    def open(self) -> str:
        """SET: ``<account>|<client order id>`` of resting (open) orders."""
        return venue_key(self.venue_name, "open")

    @property
    def fills(self) -> str:
        """STREAM: every fill of every account; ``fills_since`` cursors are its entry ids."""
        return venue_key(self.venue_name, "fills")

    @property
    def record(self) -> str:
        """STREAM: append-only record of every order received, cancel and fill (docs/venues.md)."""
        return venue_key(self.venue_name, "record")

    @property
    def balances(self) -> str:
        """HASH: ``<account>|<symbol>`` -> position in lots; ``<account>|cash`` -> money units."""
        return venue_key(self.venue_name, "balances")

    @property
    def seq(self) -> str:
        """STRING integer: source of venue order ids and fill ids."""
        return venue_key(self.venue_name, "seq")
