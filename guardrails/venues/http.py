"""The HTTP order-book venue: EIP-712 signed orders over HTTP (aiohttp client).

Invariant upheld: *every error is classified, and an unknown outcome is never retried
blindly*. Each call is sent once. Its result is

* ``Accepted`` — the venue answered 200 with ``status: accepted`` (a duplicate client
  order id returns the original order's acknowledgement: never a second order);
* ``Rejected`` — certain: the venue answered 4xx with ``status: rejected`` (bad
  signature, expired, malformed, a duplicate of a rejected order), or the TCP connection
  could not even be opened, so nothing was sent;
* ``Unknown`` — anything else: a timeout, a connection reset or closed after the request
  was written, a 5xx, an unparseable answer. The order may exist; the caller keeps the
  reservation and reconciles with ``lookup`` (same client order id), and a deliberate
  re-send of the same id is deduplicated by the venue.

Venue-side fences: the order's signed ``expiration`` is its ``submit_deadline_ms`` (no
later than the lease deadline), so the venue refuses it if it arrives late; client order
ids are deduplicated per account. The signing key comes from ``HttpVenueConfig.key_env``
or an encrypted keystore (``signing.load_signer``) and appears in no log line, repr or
exception text.

With ``url = "embedded"`` the adapter reaches the per-user exchange simulator daemon
(``simdaemon``: started on first use, shared by every instance of the user on the host,
its state replayed from its record after a restart), so ``make run`` and a standby in
another terminal trade against one exchange; with no key configured it signs with the
account's well-known demo key (``signing.Signer.demo``). ``close`` leaves the daemon
running (``guardrails venue stop`` stops it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import aiohttp
from eth_account.signers.local import LocalAccount

from guardrails import logs
from guardrails.config import HttpVenueConfig, RiskConfig
from guardrails.keys import AccountId
from guardrails.model import Fill, Order, Side
from guardrails.runtime import identity
from guardrails.venues import eip712, signing
from guardrails.venues.base import (
    Accepted,
    FillBatch,
    Rejected,
    SubmitResult,
    Unknown,
    VenueError,
    VenueOrderState,
    VenueOrderStatus,
)

log = logging.getLogger("guardrails.venue.http")

EMBEDDED = "embedded"

_STATES = {
    "open": VenueOrderState.OPEN,
    "filled": VenueOrderState.FILLED,
    "canceled": VenueOrderState.CANCELED,
    "rejected": VenueOrderState.REJECTED,
    "expired": VenueOrderState.EXPIRED,
}


def classify_submit(status: int, body: dict[str, Any] | None) -> SubmitResult:
    """An HTTP answer to a submit as a result: the one place submit replies are read."""
    verdict = (body or {}).get("status")
    if status == 200 and verdict == "accepted":
        return Accepted(str(body.get("venue_order_id", "")) if body else "")
    if 400 <= status < 500 and verdict == "rejected":
        return Rejected(str((body or {}).get("reason", f"http {status}")))
    return Unknown(f"http {status}: {str(verdict or 'unparseable answer')[:80]}")


def classify_cancel(status: int, body: dict[str, Any] | None) -> SubmitResult:
    """An HTTP answer to a cancel as a result (``Accepted``: canceled or already final)."""
    verdict = (body or {}).get("status")
    if status == 200 and verdict in ("canceled", "final"):
        return Accepted(str((body or {}).get("venue_order_id", "")))
    if status == 404 and verdict == "not_found":
        return Rejected("not_found")
    if 400 <= status < 500 and verdict == "rejected":
        return Rejected(str((body or {}).get("reason", f"http {status}")))
    return Unknown(f"http {status}: {str(verdict or 'unparseable answer')[:80]}")


def _fill(raw: dict[str, Any]) -> Fill:
    return Fill(
        fill_id=str(raw["fill_id"]),
        client_order_id=str(raw["client_order_id"]),
        symbol=str(raw["symbol"]),
        side=Side(raw["side"]),
        qty=Decimal(str(raw["qty"])),
        price=Decimal(str(raw["price"])),
        ts_ms=int(raw["ts_ms"]),
    )


class HttpVenue:
    """One account (the signer's address) at an HTTP order-book venue."""

    def __init__(
        self,
        venue_cfg: HttpVenueConfig,
        account: AccountId,
        signer: signing.Signer | LocalAccount | None = None,
        *,
        risk: RiskConfig | None = None,
        source: str = "",
    ) -> None:
        self.name = "http"
        self._source = source  # the config file, named when the key is not the account's
        self._demo = False
        self._cfg = venue_cfg
        self._account_id = account
        self._signer = signing.Signer(signer) if isinstance(signer, LocalAccount) else signer
        self._risk = risk
        self._session: aiohttp.ClientSession | None = None
        self._base = venue_cfg.url.rstrip("/")

    def __repr__(self) -> str:
        address = self._signer.address if self._signer else "(key not loaded)"
        return f"HttpVenue(url={self._base!r}, account={address})"

    __str__ = __repr__

    @property
    def url(self) -> str:
        return self._base

    @property
    def address(self) -> str:
        return self._require_signer().address

    def _require_signer(self) -> signing.Signer:
        if self._signer is None:
            raise VenueError("http venue: not started (no signing key loaded)")
        return self._signer

    async def start(self) -> None:
        if self._session is not None:
            return
        if self._signer is None and self._base == EMBEDDED and not self._cfg.keystore \
                and not os.environ.get(self._cfg.key_env):
            # The embedded demo exchange holds no real funds: with no key configured, sign
            # with the account's well-known demo key (the same in every instance of the
            # account, so a standby that takes over is the same exchange account).
            self._signer = signing.Signer.demo(str(self._account_id))
            self._demo = True
            logs.event(log, "venue.http.demo_key", address=self._signer.address,
                       reason=f"url=embedded and ${self._cfg.key_env} unset")
        if self._signer is None:
            try:
                self._signer = signing.load_signer(
                    key_env=self._cfg.key_env, keystore=self._cfg.keystore,
                    keystore_password_env=self._cfg.keystore_password_env,
                )
            except signing.SigningKeyError as e:
                raise VenueError(f"http venue: {e}") from None
        if not self._demo:
            # The account is the signer's address (guardrails.runtime.identity); the demo key is
            # derived from the account id, so it is one address per account already.
            identity.check_signer_is_account(
                self._account_id, self._signer.address, source=self._source, venue="http"
            )
        if self._base == EMBEDDED:
            await self._start_embedded()
        timeout = aiohttp.ClientTimeout(total=self._cfg.request_timeout / 1000)
        self._session = aiohttp.ClientSession(timeout=timeout)
        logs.event(log, "venue.http.started", url=self._base, account=self._signer.address)

    async def _start_embedded(self) -> None:
        """Reach the per-user simulator daemon, starting it if needed (``simdaemon``)."""
        from guardrails.sim import daemon, exchange

        spec = daemon.MarketSpec(
            self._cfg.simulator or exchange.DEFAULT_MARKET,
            self._risk or exchange.DEFAULT_RISK,
            self._cfg.chain_id,
        )
        try:
            self._base = await asyncio.to_thread(daemon.ensure_running, spec)
        except daemon.SimDaemonError as e:
            raise VenueError(f"http venue: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise VenueError("http venue: not started")
        return self._session

    async def _request(
        self, method: str, path: str, *, json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """One request, sent once. Raises aiohttp/timeout errors for the caller to classify."""
        async with self._http().request(
            method, self._base + path, json=json, params=params
        ) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, body if isinstance(body, dict) else None

    # -- the Venue protocol -------------------------------------------------------------

    async def submit(self, order: Order) -> SubmitResult:
        signed = eip712.sign_order(self._require_signer(), order, self._cfg.chain_id)
        try:
            status, body = await self._request(
                "POST", "/v1/orders", json={"order": signed.message, "signature": signed.signature}
            )
        except aiohttp.ClientConnectorError as e:
            # The TCP connection was never opened: the order was certainly not sent.
            return Rejected(f"venue_unreachable: {type(e).__name__}")
        except (TimeoutError, aiohttp.ClientError) as e:
            # Sent (or maybe sent) and no answer: the outcome is unknown. Never re-send
            # blindly; reconcile by client order id.
            return Unknown(f"no answer: {type(e).__name__}")
        result = classify_submit(status, body)
        logs.event(log, "venue.http.submit", coid=order.client_order_id,
                   result=type(result).__name__.lower(),
                   detail=getattr(result, "reason", None))
        return result

    async def cancel(self, client_order_id: str) -> SubmitResult:
        now = time.time_ns() // 1_000_000
        signed = eip712.sign_cancel(self._require_signer(), client_order_id, now, self._cfg.chain_id)
        try:
            status, body = await self._request(
                "POST", "/v1/cancel", json={"cancel": signed.message, "signature": signed.signature}
            )
        except aiohttp.ClientConnectorError as e:
            return Unknown(f"venue_unreachable: {type(e).__name__}")
        except (TimeoutError, aiohttp.ClientError) as e:
            return Unknown(f"no answer: {type(e).__name__}")
        return classify_cancel(status, body)

    async def lookup(
        self, client_order_id: str, *, deadline_ms: int | None = None
    ) -> VenueOrderStatus:
        address = self._require_signer().address
        try:
            status, body = await self._request(
                "GET", f"/v1/orders/{address}/{quote(client_order_id, safe='')}"
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise VenueError(f"http venue: lookup failed: {type(e).__name__}") from None
        if body is None:
            raise VenueError(f"http venue: lookup: http {status} without a JSON answer")
        try:
            if status == 404 and body.get("state") == "not_found":
                now_ms = int(body["now_ms"])
                return VenueOrderStatus(
                    client_order_id=client_order_id,
                    state=VenueOrderState.NOT_FOUND,
                    can_still_arrive=deadline_ms is None or now_ms <= deadline_ms,
                )
            if status != 200:
                raise VenueError(f"http venue: lookup: http {status}")
            state = _STATES[str(body["state"])]
            fills = tuple(_fill(f) for f in body.get("fills", []))
            return VenueOrderStatus(
                client_order_id=client_order_id,
                state=state,
                filled_qty=Decimal(str(body.get("filled_qty", "0"))),
                fills=fills,
                detail=str(body.get("reason", "")),
            )
        except (KeyError, ValueError, TypeError, InvalidOperation) as e:
            raise VenueError(f"http venue: lookup: malformed answer ({type(e).__name__})") from None

    async def fills_since(self, cursor: str | None) -> FillBatch:
        address = self._require_signer().address
        try:
            status, body = await self._request(
                "GET", f"/v1/fills/{address}", params={"after": cursor or "0"}
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise VenueError(f"http venue: fills failed: {type(e).__name__}") from None
        if status != 200 or body is None:
            raise VenueError(f"http venue: fills: http {status}")
        try:
            return FillBatch(
                fills=tuple(_fill(f) for f in body["fills"]), cursor=str(body["cursor"])
            )
        except (KeyError, ValueError, TypeError, InvalidOperation) as e:
            raise VenueError(f"http venue: fills: malformed answer ({type(e).__name__})") from None

    async def marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        try:
            status, body = await self._request(
                "GET", "/v1/marks", params={"symbols": ",".join(symbols)}
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise VenueError(f"http venue: marks failed: {type(e).__name__}") from None
        if status != 200 or body is None:
            raise VenueError(f"http venue: marks: http {status}")
        try:
            return {str(s): Decimal(str(p)) for s, p in body["marks"].items()}
        except (KeyError, AttributeError, InvalidOperation) as e:
            raise VenueError(f"http venue: marks: malformed answer ({type(e).__name__})") from None

    async def balances(self) -> dict[str, Decimal]:
        address = self._require_signer().address
        try:
            status, body = await self._request("GET", f"/v1/balances/{address}")
        except (TimeoutError, aiohttp.ClientError) as e:
            raise VenueError(f"http venue: balances failed: {type(e).__name__}") from None
        if status != 200 or body is None:
            raise VenueError(f"http venue: balances: http {status}")
        try:
            return {str(s): Decimal(str(v)) for s, v in body["balances"].items()}
        except (KeyError, AttributeError, InvalidOperation) as e:
            raise VenueError(
                f"http venue: balances: malformed answer ({type(e).__name__})"
            ) from None

