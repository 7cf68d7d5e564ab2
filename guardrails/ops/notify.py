"""Alerts that reach a person: a JSON webhook and Telegram's Bot API ``sendMessage``.

The guarantee is one-sided: **delivery never blocks or breaks trading.** ``Notifier.publish``
only appends to a bounded in-memory queue per channel (the oldest alert is dropped, and
counted, when a channel falls behind); a background task per channel sends with a timeout
and retries with exponential backoff; a failure is logged as ``notify.failed`` and never
raised. An alert can therefore be late or, after the retries, lost — it is a page, not
a record: the record is the journal in Redis and the logs.

Where alerts come from: ``AlertRouter`` listens to the process's structured log events
(``guardrails.logs.add_listener``) — the same ``event=`` lines tests and operators grep —
and turns the ones a person must see into ``Alert`` values. So nothing on the order path
or in the lease loop calls this module, and an event that is logged is an event that can
be alerted on.

Secrets: a Telegram bot token is read from the environment variable the config names,
goes only into the request URL, and never into a log line or an exception text (errors
are described by class and HTTP status, never by URL).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Protocol

import aiohttp

from guardrails import logs, redacted
from guardrails.config import NOTIFY_EVENTS, NotifyConfig, WebhookNotifyConfig

log = logging.getLogger("guardrails.notify")

# The events a [[notify]] entry can subscribe to (docs/operations.md, "Alerts"): the config's
# list is the one definition.
EVENTS = NOTIFY_EVENTS


@dataclass(frozen=True)
class Alert:
    """One thing a person should know, in words and in fields."""

    event: str
    account: str
    text: str
    fields: Mapping[str, str] = field(default_factory=dict)
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def as_json(self) -> dict[str, object]:
        return {
            "event": self.event,
            "account": self.account,
            "text": self.text,
            "fields": dict(self.fields),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at_ms / 1000)),
            "at_ms": self.at_ms,
        }


class DeliveryError(Exception):
    """A channel could not deliver; the message never contains a secret."""


class Channel(Protocol):
    """Where alerts go. ``send`` raises ``DeliveryError`` (or any exception) on failure."""

    name: str
    events: frozenset[str]

    async def send(self, session: aiohttp.ClientSession, alert: Alert) -> None: ...


async def _post_json(session: aiohttp.ClientSession, url: str, body: object, timeout_s: float,
                     what: str) -> None:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            if r.status >= 300:
                raise DeliveryError(f"{what} answered HTTP {r.status}")
            await r.read()
    except DeliveryError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        # The exception text of aiohttp can carry the URL (with a bot token in it): keep
        # only the class name.
        raise DeliveryError(f"{what} unreachable ({type(e).__name__})") from None


@dataclass
class WebhookChannel:
    """``POST url`` with the alert as JSON (``Alert.as_json``)."""

    url: str = field(repr=False)  # a webhook URL carries its token (path or query)
    events: frozenset[str]
    timeout_s: float = 5.0
    name: str = "webhook"

    async def send(self, session: aiohttp.ClientSession, alert: Alert) -> None:
        await _post_json(session, self.url, alert.as_json(), self.timeout_s, "webhook")


@dataclass
class TelegramChannel:
    """Telegram Bot API ``sendMessage`` (``{api_url}/bot<token>/sendMessage``)."""

    token: str = field(repr=False)
    chat_id: str
    events: frozenset[str]
    api_url: str = "https://api.telegram.org"
    timeout_s: float = 5.0
    name: str = "telegram"

    async def send(self, session: aiohttp.ClientSession, alert: Alert) -> None:
        url = f"{self.api_url.rstrip('/')}/bot{self.token}/sendMessage"
        text = f"guardrails {alert.account}: {alert.text}"
        await _post_json(session, url, {"chat_id": self.chat_id, "text": text,
                                        "disable_web_page_preview": True},
                         self.timeout_s, "telegram")


class Notifier:
    """Bounded, retrying, never-raising delivery of alerts to channels.

    ``publish`` is synchronous and O(channels); ``run`` is the background task (start it in
    the process's task group); ``drain`` waits a bounded time for queued alerts on the way down.
    """

    def __init__(self, channels: Iterable[Channel], *, queue_size: int = 100,
                 max_attempts: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        self.channels = list(channels)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queues: dict[int, collections.deque[Alert]] = {
            i: collections.deque(maxlen=queue_size) for i in range(len(self.channels))
        }
        self._wake = {i: asyncio.Event() for i in range(len(self.channels))}
        self._busy = {i: False for i in range(len(self.channels))}
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def publish(self, alert: Alert) -> None:
        for i, ch in enumerate(self.channels):
            if alert.event not in ch.events:
                continue
            q = self._queues[i]
            if len(q) == q.maxlen:
                self.dropped += 1
                logs.event(log, "notify.dropped", logging.WARNING, channel=ch.name,
                           event_name=q[0].event, note="channel is behind; oldest alert dropped")
            q.append(alert)
            self._wake[i].set()

    async def run(self) -> None:
        if not self.channels:
            return
        async with aiohttp.ClientSession() as session:
            async with asyncio.TaskGroup() as tg:
                for i in range(len(self.channels)):
                    tg.create_task(self._worker(i, session), name=f"notify-{self.channels[i].name}")

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every queue to empty; True when it did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not any(self._queues.values()) and not any(self._busy.values()):
                return True
            await asyncio.sleep(0.02)
        return False

    async def _worker(self, i: int, session: aiohttp.ClientSession) -> None:
        ch, q, wake = self.channels[i], self._queues[i], self._wake[i]
        while True:
            if not q:
                wake.clear()
                await wake.wait()
                continue
            alert = q[0]
            self._busy[i] = True
            try:
                await self._deliver(ch, session, alert)
            finally:
                if q and q[0] is alert:
                    q.popleft()
                self._busy[i] = False

    async def _deliver(self, ch: Channel, session: aiohttp.ClientSession, alert: Alert) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                await ch.send(session, alert)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # never raised into the process: logged, retried, counted
                last = str(e) if isinstance(e, DeliveryError) else type(e).__name__
                if attempt == self.max_attempts:
                    self.failed += 1
                    logs.event(log, "notify.failed", logging.WARNING, channel=ch.name,
                               event_name=alert.event, attempts=attempt, error=last,
                               note="giving up on this alert")
                    return
                logs.event(log, "notify.retry", logging.INFO, channel=ch.name, event_name=alert.event,
                           attempt=attempt, error=last, retry_in_ms=int(delay * 1000))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
            else:
                self.sent += 1
                logs.event(log, "notify.sent", logging.DEBUG, channel=ch.name, event_name=alert.event)
                return


def _dec(value: object) -> Decimal | None:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


class AlertRouter:
    """Turns this process's log events into alerts (a ``logs`` listener).

    Stateful where an alert is about a change, not a line: the kill state (only a change
    alerts), the takeover (the holder seen while standby is the "old" one), the loss budget
    (each threshold alerts once per trading day and again after it was crossed back down),
    Redis unreachable (only once it has lasted ``redis_threshold_s``; ``tick`` checks).
    """

    def __init__(self, account: str, publish: Callable[[Alert], None], *,
                 redis_threshold_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.account = account
        self.publish = publish
        self.redis_threshold_s = redis_threshold_s
        self.clock = clock
        self._kill_state: str | None = None
        self._seen_holder: tuple[str, str] | None = None  # (holder, token) while standby
        self._budget_level = 0
        self._redis_down_since: float | None = None
        self._redis_alerted = False
        self._redis_error = ""

    # -- the listener -----------------------------------------------------------------

    def on_event(self, name: str, fields: Mapping[str, object]) -> None:
        try:
            self._route(name, fields)
        except Exception as e:  # a bug here must never reach the caller of logs.event
            log.warning("event=notify.router_error error=%s", type(e).__name__)

    def _alert(self, event: str, text: str, **fields: object) -> None:
        # Masked like a log line: an alert leaves the host, and its text can quote an
        # exception (a strategy's crash, a Redis driver's error) that quotes a secret.
        self.publish(Alert(event, self.account, redacted.mask_text(text),
                           {k: redacted.mask_text(str(v)) for k, v in fields.items()
                            if v is not None}))

    def _route(self, name: str, f: Mapping[str, object]) -> None:
        if name == "kill.state":
            state = str(f.get("state", ""))
            previous, self._kill_state = self._kill_state, state
            if state == previous:
                return
            if state in ("HALTED", "REDUCING"):
                self._alert("kill", f"{state} — {f.get('reason') or 'no reason given'}"
                            f" (by {f.get('by') or 'unknown'})", state=state, reason=f.get("reason"),
                            by=f.get("by"))
            elif state == "ACTIVE" and previous in ("HALTED", "REDUCING"):
                self._alert("resume", f"trading resumed (by {f.get('by') or 'unknown'})",
                            state=state, by=f.get("by"))
        elif name == "lease.standby":
            self._seen_holder = (str(f.get("holder", "")), str(f.get("token", "")))
        elif name == "lease.acquired":
            seen, self._seen_holder = self._seen_holder, None
            if seen is not None:
                self._alert("takeover", f"took over the lease: token {seen[1]} ({seen[0]}) → "
                            f"{f.get('token')} ({f.get('holder')})", old_token=seen[1],
                            old_holder=seen[0], token=f.get("token"), holder=f.get("holder"))
        elif name == "lease.lost":
            reason = str(f.get("reason", ""))
            if reason == "renew_deadline":
                self._alert("self_fence", f"self-fenced at token {f.get('token')}: no renew before "
                            "the deadline; admitting nothing", token=f.get("token"), reason=reason)
            else:
                self._alert("lease_lost", f"lost the lease at token {f.get('token')} ({reason})",
                            token=f.get("token"), reason=reason)
        elif name == "positions":
            self._budget(f)
        elif name == "kill.latch_lost":
            self._alert("latch_lost", "the kill-switch latch in Redis is older than one this "
                        "instance saw: Redis lost writes; admitting nothing until a new latch "
                        f"is written ({f.get('action') or 'guardrails kill / resume'})",
                        remembered_state=f.get("remembered_state"), seen_state=f.get("seen_state"),
                        seen_version=f.get("seen_version"))
        elif name in ("strategy.crashed",):
            self._alert("strategy_crashed", f"strategy {f.get('strategy')} crashed: {f.get('error')}",
                        strategy=f.get("strategy"), error=f.get("error"))
        elif name.startswith("foreign_activity") or name == "kill.foreign_activity":
            self._alert("foreign_activity", "foreign activity on the account: halted "
                        f"({f.get('detail') or f.get('reason') or ''})".rstrip(" ()"),
                        **{k: v for k, v in f.items() if isinstance(v, str | int | Decimal)})
        elif name in ("runtime.redis_unavailable", "lease.redis_unavailable", "lease.renew_failed"):
            if self._redis_down_since is None:
                self._redis_down_since = self.clock()
                self._redis_error = str(f.get("error", ""))
        elif name in ("redis.recovered", "lease.redis_recovered", "lease.acquired", "lease.renewed_late"):
            if self._redis_down_since is not None and self._redis_alerted:
                self._alert("redis_unreachable", "Redis reachable again", state="recovered")
            self._redis_down_since = None
            self._redis_alerted = False

    def _budget(self, f: Mapping[str, object]) -> None:
        used, limit = _dec(f.get("budget_used")), _dec(f.get("budget_limit"))
        if used is None or limit is None or limit <= 0:
            return
        level = 100 if used >= limit else 80 if used * 5 >= limit * 4 else 0
        if level > self._budget_level:
            pct = (used * 100 / limit).quantize(Decimal(1))
            self._alert(f"budget_{level}", f"daily loss at {pct} % of the limit ({used} of {limit})",
                        used=used, limit=limit, percent=pct)
        self._budget_level = level

    def tick(self) -> None:
        """Called periodically: raises the Redis-unreachable alert once it lasted long enough."""
        since = self._redis_down_since
        if since is not None and not self._redis_alerted and self.clock() - since >= self.redis_threshold_s:
            self._redis_alerted = True
            self._alert("redis_unreachable", f"Redis unreachable for {int(self.clock() - since)} s: "
                        "nothing is admitted", error=self._redis_error)


def channels_from_config(entries: Iterable[NotifyConfig],
                         environ: Mapping[str, str] | None = None) -> list[Channel]:
    """Build channels from ``[[notify]]`` entries.

    A Telegram entry whose token variable is unset is a ``ValueError`` naming the variable
    (the caller turns it into exit 2 at start: a page that cannot be sent is a broken config).
    """
    env = os.environ if environ is None else environ
    out: list[Channel] = []
    for e in entries:
        events = frozenset(e.events)
        if isinstance(e, WebhookNotifyConfig):
            redacted.register_endpoint_url(e.url)  # a webhook URL is its token
            out.append(WebhookChannel(url=e.url, events=events, timeout_s=e.timeout / 1000))
        else:
            token = env.get(e.token_env, "")
            if not token:
                raise ValueError(f"[[notify]] telegram: the token variable ${e.token_env} is not set "
                                 "(export the bot token there; it is never read from the config file)")
            redacted.register(token)
            out.append(TelegramChannel(token=token, chat_id=e.chat_id, events=events,
                                       api_url=e.api_url, timeout_s=e.timeout / 1000))
    return out


def format_json(alert: Alert) -> str:
    return json.dumps(alert.as_json(), sort_keys=True)
