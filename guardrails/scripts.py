"""The one Lua loader: every script guardrails runs in Redis is registered here.

Invariant upheld: *enforced where the data lives* — and enforced the same way
everywhere. The scripts in ``guardrails/lua/*.lua`` share their helpers (strict stored
integers, fail-closed reads, Redis time in ms, the journal and its cap, the order-state
tables, the one fence definition) through ``guardrails/lua/lib/*.lua``. A line

    --!include lib/<name>.lua

in a script is replaced by that file's text when the script is loaded (each library
once per script, libraries may include libraries), as BullMQ does with its
``includes/``. So every script is still ONE ``EVALSHA`` of one self-contained text,
runs on Redis 6.2 and 7 alike (no ``FUNCTION``), and keeps redis-py's NOSCRIPT
recovery: the registered script's text and sha are those of the expanded source.

The return convention of every script (``tests/test_scripts.py`` checks each header):
a script returns a table whose first element is an integer outcome code, mapped to an
outcome in exactly one place in Python (an unknown code raises there); a malformed
argument (a caller's programming error, not a state of Redis) is
``redis.error_reply('<script>: <what>')``. Each script opens with a header naming its
KEYS, ARGV and that return shape.

What this does not do: check a script's logic. It only assembles texts; the tests of
each module run the assembled scripts against a real redis-server (6.2 and 7).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_INCLUDE = re.compile(r"^--!include (lib/[a-z0-9_]+\.lua)[ \t]*$", re.MULTILINE)

SCRIPTS = (
    "gate_admit", "ledger_fill", "ledger_transition", "ledger_rebuild", "ledger_marks",
    "ledger_adopt",
    "lease_acquire", "lease_renew", "lease_release", "killswitch_set", "registry_heartbeat",
    "nonce_sync", "evm_claim", "paper_submit", "paper_advance", "paper_cancel",
    "prune_orders", "prune_fills",
)
"""Every script the package registers (the header test walks them all)."""


class ScriptError(Exception):
    """A script or an included library is missing, or includes form a cycle."""


def _read(path: str) -> str:
    try:
        return resources.files("guardrails").joinpath("lua", path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptError(f"lua/{path} is not in the package") from None


def _expand(path: str, done: set[str], stack: tuple[str, ...]) -> str:
    def one(m: re.Match[str]) -> str:
        lib = m.group(1)
        if lib in stack:
            raise ScriptError(f"lua/{path}: include cycle through {lib}")
        if lib in done:
            return f"-- (lib {lib}: included above)"
        done.add(lib)
        return _expand(lib, done, (*stack, lib)).rstrip("\n")

    return _INCLUDE.sub(one, _read(path))


@cache
def source(name: str) -> str:
    """The loadable text of script ``name`` (``gate_admit`` or ``gate_admit.lua``), with
    every ``--!include`` expanded."""
    stem = name.removesuffix(".lua")
    if "/" in stem:
        raise ScriptError(f"{name}: a script name, not a path")
    return _expand(f"{stem}.lua", set(), (f"{stem}.lua",))


def raw_source(name: str) -> str:
    """The text of ``lua/<name>`` as written (includes not expanded): for header checks."""
    return _read(name if name.endswith(".lua") else f"{name}.lua")


_STORED_INT = re.compile(r"-?[0-9]+")
MAX_EXACT = 2**53
"""Stored integers are below this in magnitude (exact in a Lua double): lib/int.lua."""


def stored_int(value: str | bytes | None, what: str) -> int:
    """lib/int.lua's stored integer, read in Python: ``^-?[0-9]+$`` (ASCII digits, no
    space, sign ``+``, ``_``, exponent or hex) with ``|n| < 2^53``; absent is 0. Raises
    ``ValueError`` naming ``what`` otherwise — the same values the scripts refuse."""
    if value is None:
        return 0
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    if not _STORED_INT.fullmatch(text) or len(text) > 17 or abs(int(text)) >= MAX_EXACT:
        raise ValueError(f"{what} is not an integer: {text!r}")
    return int(text)


def stored_nat(value: str | bytes | None, what: str) -> int:
    """lib/int.lua's ``stored_nat``: a stored integer (``stored_int``) that is ``>= 0``;
    absent is 0. Raises ``ValueError`` naming ``what`` otherwise."""
    n = stored_int(value, what)
    if n < 0:
        raise ValueError(f"{what} is negative: {n}")
    return n


def register(redis: aioredis.Redis, name: str) -> AsyncScript:
    """Register script ``name`` on ``redis``: call it with ``keys=`` and ``args=``; on
    NOSCRIPT (a restarted, failed-over or flushed Redis) redis-py loads the same text
    and runs it once more."""
    return redis.register_script(source(name))
