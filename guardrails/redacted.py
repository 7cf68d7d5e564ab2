"""Credential masking: the one place that decides what a secret looks like on the way out.

Invariant served: *secrets never leave the process* — not into Redis (the registry's
``cmdline``), logs, ``status --json``, ``doctor``, the dashboard, ``/metrics`` or an
exception message, an alert, a child process's environment. Every text that may carry
a Redis URL, an argv or a configured secret passes through here before it is written
anywhere.

Two layers, because a masker that only parses well-formed URLs leaks the ill-formed ones:

1. ``mask_url`` masks every credential form of a URL by text, not by a strict parse:
   ``redis://user:PW@``, ``redis://:PW@``, ``redis://PW@`` (a lone userinfo is masked
   whole — redis-py reads it as a user name, operators write it as a password — unless
   a password parameter follows, ``redis://user@host?password=PW``),
   ``rediss://``, ``unix://:PW@/path``, and secret query parameters (``?password=``,
   and any name containing ``pass``, ``secret``, ``token``, ``auth``, ``key`` or ``sig``
   — a request's ``signature``). The
   userinfo is everything up to the *last* ``@``, so an unencoded ``@``, ``/`` or ``?``
   inside a password masks too much (the host) rather than too little.
2. ``register`` remembers secret values this process holds (a Redis password taken
   from the URL, the environment or a file; the operator token); ``scrub`` replaces
   any occurrence of them in free text, and ``logs.setup`` installs a filter that
   scrubs every log record and traceback with it. ``mask_text`` also masks a value
   assigned to a credential's name (``signature=…``, ``"apiKey": "…"``): a venue's error
   answer that echoes the signed request it refused. ``endpoint`` shows a URL that
   carries its key in the path (an RPC provider's, a webhook's) as scheme://host, and
   ``register_endpoint_url`` registers its key-like parts.

And one door out that is not text: ``child_environment`` is what every child process
we spawn (``redis-server``, the simulator daemon and simulators) gets instead of
``os.environ`` — an allow-list, so a venue key, the operator token or a Redis password
in this process's environment never reaches a child's ``/proc/<pid>/environ`` (nor
anything the child spawns).

Not guaranteed: a secret this process never registered and that is not shaped like a
URL credential (say, a venue key pasted into a strategy's log message) is not found.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from urllib.parse import unquote

MASK = "***"

MIN_SECRET_LEN = 4
"""Shorter registered values are not scrubbed from free text (``"1"`` would mangle logs)."""

_SECRET_PARAM = re.compile(r"pass|secret|token|auth|key|sig", re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]*")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

_lock = threading.Lock()
_secrets: set[str] = set()


def register(secret: str | None) -> None:
    """Remember ``secret`` (and its percent-decoded form) so ``scrub`` removes it."""
    if not secret:
        return
    with _lock:
        for form in {secret, unquote(secret)}:
            if len(form) >= MIN_SECRET_LEN:
                _secrets.add(form)


def registered() -> frozenset[str]:
    """The values ``scrub`` removes (for tests)."""
    with _lock:
        return frozenset(_secrets)


def url_secrets(url: str) -> list[str]:
    """The credential values inside ``url`` (its password or lone userinfo, and secret
    query parameter values), raw and percent-decoded."""
    out: list[str] = []
    _, sep, rest = url.partition("://")
    if not sep:
        return out
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    _, q, query = hostpart.partition("?")
    if q:
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            if eq and value and _SECRET_PARAM.search(name):
                out.append(value)
    if at:
        _, colon, password = userinfo.partition(":")
        if colon:
            out.append(password)
        elif not out:  # a lone userinfo is a user name only when a password param follows
            out.append(userinfo)
    return [v for s in out if s for v in dict.fromkeys([s, unquote(s)])]


def mask_url(url: str) -> str:
    """``url`` with every credential replaced by ``***`` (user names stay when a password
    follows them); anything else is returned unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    base, q, query = hostpart.partition("?")
    secret_param = False
    if q:
        pairs = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            if eq and value and _SECRET_PARAM.search(name):
                pair = f"{name}={MASK}"
                secret_param = True
            pairs.append(pair)
        base += "?" + "&".join(pairs)
    prefix = f"{scheme}://"
    if not at:  # no userinfo; but `user:PW` with the host forgotten reads as host:port
        host, colon, port = base.partition("/")[0].partition("?")[0].rpartition(":")
        if colon and port and not port.isdigit() and not port.endswith("]"):
            base = f"{host}:{MASK}" + base[len(host) + 1 + len(port):]
    if at:
        user, colon, _ = userinfo.partition(":")
        if colon:
            prefix += f"{user}:{MASK}@"
        else:  # a lone userinfo: a user name if a password param follows, else a password
            prefix += f"{userinfo if secret_param else MASK}@"
    return prefix + base


def endpoint(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (``/…`` when a path or query followed): none of
    its userinfo, path or query. For URLs that carry a credential where ``mask_url``
    cannot see it — an RPC provider's API key in the path (``/v2/<key>``), a webhook's
    token (``/services/T0/B0/<token>``). A word with no ``://`` (``embedded``) is kept;
    anything else that is no URL is ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if url.isidentifier() else MASK
    after = rest.rpartition("@")[2]
    host = re.split(r"[/?#]", after, maxsplit=1)[0]
    return f"{scheme}://{host}" + ("/…" if len(host) < len(after) else "")


_CREDENTIAL_ASSIGNMENT = re.compile(
    r"""(\b(?:[A-Za-z0-9]+[_-])*"""
    r"""(?:signature|sig|api[_-]?key|api[_-]?secret|secret|secret[_-]?key|passphrase|password"""
    r"""|passwd|private[_-]?key|authorization)\b["']?\s*[=:]\s*["']?(?:Bearer\s+|Basic\s+)?)"""
    r"""([^\s"'&,;{}\[\]]+)""",
    re.IGNORECASE,
)
"""``signature=…``, ``"apiKey": "…"``, ``X-MBX-APIKEY: …``, ``Authorization: Bearer …``:
a credential by its name, the way a venue's error answer echoes the request it refused.
Not ``token`` nor a bare ``key`` (the fencing token and Redis keys are logged by name)."""


KEY_LIKE_LEN = 16
"""A path segment or query value this long in an ``ENDPOINT_ONLY`` URL is taken for a key."""


def register_endpoint_url(url: str) -> None:
    """``register`` what in ``url`` may be a credential that ``mask_url`` cannot see: its
    URL credentials, and every path segment and query value of ``KEY_LIKE_LEN`` or more
    characters (an RPC provider's ``/v2/<key>``, a webhook's ``/services/T0/B0/<token>``),
    so an exception text or a library's log line that quotes the URL is scrubbed."""
    for secret in url_secrets(url):
        register(secret)
    _, sep, rest = url.partition("://")
    if not sep:
        return
    after = rest.rpartition("@")[2]
    for part in re.split(r"[/?#&=;]", after)[1:]:
        if len(part) >= KEY_LIKE_LEN:
            register(part)


def mask_text(text: str) -> str:
    """Free text with every URL in it masked, every credential assignment masked and
    every registered secret scrubbed."""
    if "://" in text:
        text = _URL.sub(lambda m: mask_url(m.group(0)), text)
    text = _CREDENTIAL_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, text)
    return scrub(text)


def excerpt(text: object, limit: int) -> str:
    """``str(text)`` masked, then cut to ``limit`` characters — in that order: a cut first
    could halve a registered secret, and half a secret is no longer found to scrub."""
    return mask_text(str(text))[:limit]


def mask_value(value: object) -> object:
    """A structured log field made safe to write: text masked (``mask_text``); a number,
    a bool or None as it is; anything else (an exception, a dict, a request object)
    masked in its ``str()`` form, which is how it would be written."""
    if isinstance(value, str):
        return mask_text(value)
    if value is None or isinstance(value, bool | int | float | Decimal):
        return value
    return mask_text(str(value))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first)."""
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text


def mask_argv(argv: Sequence[str]) -> list[str]:
    """A command line safe to record: each argument masked (``--redis-url=redis://…``
    and ``redis://…`` alike)."""
    out = []
    for arg in argv:
        m = _SCHEME.search(arg)
        # One argument is one token: the URL runs to its end (a space in a password
        # must not end the URL early and leave the rest in clear).
        out.append(scrub(arg[: m.start()] + mask_url(arg[m.start():])) if m else scrub(arg))
    return out


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries a password (or a lone userinfo, or a secret parameter)."""
    return bool(url_secrets(url))


def argv_urls(argv: Iterable[str]) -> list[str]:
    """The URL of each argument that holds one, from its scheme to the argument's end
    (``--redis-url=redis://…`` gives ``redis://…``)."""
    return [arg[m.start():] for arg in argv if (m := _SCHEME.search(arg))]


def argv_urls_with_credentials(argv: Iterable[str]) -> list[str]:
    """The masked form of every URL in ``argv`` that carries a credential."""
    return [mask_url(url) for url in argv_urls(argv) if has_credentials(url)]


def register_argv(argv: Iterable[str]) -> None:
    """``register`` every credential of every URL in ``argv``."""
    for url in argv_urls(argv):
        for secret in url_secrets(url):
            register(secret)


CHILD_ENV_NAMES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONSAFEPATH", "VIRTUAL_ENV",
    "COVERAGE_PROCESS_START", "COVERAGE_RCFILE",
})
"""Environment variables a child process inherits (plus ``LC_*``); nothing else. Our
children read their settings from their arguments and 0600 files, hold no key and need
no token: a signing key, an exchange secret, the operator token, a Redis password or any
``GUARDRAILS_*`` variable in the parent's environment stays out of theirs."""


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` (default ``os.environ``): the ``env=`` of every
    child process guardrails spawns that is not a ``guardrails`` bot itself."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k in CHILD_ENV_NAMES or k.startswith("LC_")}
