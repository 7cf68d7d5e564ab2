"""The gate's own pipelined connection: one pre-packed EVALSHA, one write, one reply.

Why: a gate decision is one ``EVALSHA`` whose arguments are mostly constant per account.
Through ``redis.asyncio``'s ``execute_command`` each call also pays the client's
per-command machinery (pool lock, retry wrapper, observability hooks, packing every
argument, a reader task hop) — measured at more than a PING's whole round trip
(bench/README.md, ``gate``). ``GateWire`` sends the caller's pre-packed RESP bytes on ONE
connection of the client's own pool (same host, credentials, database, timeouts: the pool
connected and authenticated it) and matches replies in order (Redis answers a connection's
commands in the order it received them), parsed by hiredis in the transport's callback.
Concurrent decisions are batched on it. A request made while the wire is idle (nothing
in flight, nothing queued) is written at once: a decision asked for alone is a batch of
one, with no wait added. The decisions of one gate asked for after it, while requests are
in flight, in one event-loop turn (``decide``), go out at the end of that turn as ONE
EVALSHA of up to ``batch_max`` decisions (the gate packs it, ``pack_batch``), whose reply
— one entry per decision — resolves each caller's future as it is parsed; everything
queued in one turn goes out as one ``send``.

Invariants kept: *fail closed* — every error surfaces as a redis-py exception the gate
already maps: ``ConnectionError`` with ``sent=False`` when the request never left (the
connection could not be made), ``sent=True`` (and ``TimeoutError``, always sent) when the
reply may have been lost; the connection is then closed, so a late reply can never be
matched to another request. An error reply is a ``ResponseError`` (``NoScriptError`` for
NOSCRIPT), exactly as redis-py would raise it.

What it does not do: RESP3, TLS, Sentinel or Cluster clients, a client with
``single_connection_client``, or a client without hiredis — ``GateWire.for_client``
returns None for those and the gate uses ``execute_command`` (slower, same semantics). The
connection stays checked out of the pool while the wire lives; the client's ``aclose()``
(which disconnects in-use connections too) closes it.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Coroutine
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    UnixDomainSocketConnection,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    import hiredis

    HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    HIREDIS = False


class WireError(RedisConnectionError):
    """The wire's connection failed. ``sent`` says whether the request may have reached
    Redis (its reply lost) or certainly did not."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


def pack(*args: bytes) -> bytes:
    """RESP encoding of a command whose arguments are all bytes."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n" % len(a))
        out.append(a)
        out.append(b"\r\n")
    return b"".join(out)


def bulk(a: bytes) -> bytes:
    """One RESP bulk string (a piece of a command ``pack`` would build)."""
    return b"$%d\r\n%s\r\n" % (len(a), a)


def _error(text: str) -> ResponseError:
    """An error reply as redis-py would raise it (``NoScriptError`` for NOSCRIPT)."""
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


def _deliver(futs: list[asyncio.Future[Any]], reply: Any) -> None:
    """Resolve the futures of one batch from its reply: entry i is decision i's; an error
    reply (NOSCRIPT, WRONGTYPE...) is every decision's (nothing in the batch ran past
    it), each caller raising its own copy."""
    if isinstance(reply, ResponseError):
        for fut in futs:
            if not fut.done():
                fut.set_exception(_error(str(reply)))
        return
    if not isinstance(reply, list) or len(reply) != len(futs):
        # (not the reply itself in the text: a detail in it must not read as another error)
        got = f"{len(reply)} entries" if isinstance(reply, list) else f"a {type(reply).__name__}"
        text = f"gate batch of {len(futs)} decisions answered with {got}"
        for fut in futs:
            if not fut.done():
                fut.set_exception(ResponseError(text))
        return
    for fut, entry in zip(futs, reply, strict=True):
        if not fut.done():  # a caller cancelled after sending: its entry is dropped
            fut.set_result(entry)


class _Protocol(asyncio.Protocol):
    """Replaces the pool connection's stream protocol once it is connected: replies are
    parsed as they arrive and resolve the oldest waiting request."""

    def __init__(self, wire: GateWire, inner: asyncio.BaseProtocol) -> None:
        self._wire = wire
        self._inner = inner
        self._parser = hiredis.Reader(replyError=ResponseError)

    def data_received(self, data: bytes) -> None:
        waiting = self._wire._waiting
        try:
            self._parser.feed(data)
            while True:
                reply = self._parser.gets()
                if reply is False:
                    return
                if not waiting:  # a reply nobody asked for: the stream is out of step
                    raise ValueError("a reply no request is waiting for")
                fut = waiting.popleft()
                if isinstance(fut, list):  # a batch: one reply, one entry per decision
                    _deliver(fut, reply)
                    continue
                if fut.done():  # its caller was cancelled; the reply is its, dropped
                    continue
                if isinstance(reply, ResponseError):
                    fut.set_exception(_error(str(reply)))
                else:
                    fut.set_result(reply)
        except Exception as e:  # a protocol error: nothing after it is trusted
            self._wire._broken(WireError(f"unreadable reply from Redis: {e}", sent=True))

    def eof_received(self) -> bool | None:
        self._wire._broken(WireError("Redis closed the connection", sent=True))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._wire._broken(WireError(f"connection to Redis lost: {exc or 'closed'}", sent=True))
        # the stream protocol's close future is what redis-py's disconnect() awaits
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class Packer(Protocol):
    """What ``GateWire.decide`` batches for: a gate that packs its decisions' parts into
    one command whose reply is a list with one entry per decision, in order."""

    batch_max: int

    def pack_batch(self, keys: list[bytes], args: list[bytes]) -> bytes: ...


_Out = tuple[Packer | None, bytes, bytes, "asyncio.Future[Any]"]
"""A request not written yet: (None, command, b"", future) for a plain command, or
(packer, keys part, arguments part, future) for one decision of a batch."""

_WIRES: weakref.WeakKeyDictionary[Any, GateWire] = weakref.WeakKeyDictionary()


class GateWire:
    """One pipelined connection per ``redis.asyncio`` connection pool, shared by every
    gate on that client."""

    __slots__ = (
        "__weakref__", "_conn", "_flush", "_loading", "_lock", "_out", "_pool", "_timeout",
        "_transport", "_waiting",
    )

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: AbstractConnection | None = None
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[
            asyncio.Future[Any] | list[asyncio.Future[Any]]] = collections.deque()
        """Requests written to the transport, oldest first (replies come in this order); a
        list is one batch's decisions (one reply)."""
        self._out: list[_Out] = []
        """Requests of this event-loop turn, not written yet (one write for all of them)."""
        self._flush: asyncio.Handle | None = None
        self._lock = asyncio.Lock()
        self._loading: dict[bytes, asyncio.Future[Any]] = {}
        timeout = pool.connection_kwargs.get("socket_timeout")
        self._timeout: float | None = float(timeout) if timeout else None

    @staticmethod
    def for_client(client: Any) -> GateWire | None:
        """The wire of ``client``'s pool, or None when the client is not one the wire
        speaks for (see the module docstring): the caller then uses execute_command."""
        if not HIREDIS or type(client) is not aioredis.Redis:
            return None
        if client.single_connection_client or client.connection is not None:
            return None
        pool = client.connection_pool
        if type(pool) is not ConnectionPool:  # blocking, sentinel, custom pools: not here
            return None
        if pool.connection_class not in (Connection, UnixDomainSocketConnection):
            return None
        if str(pool.connection_kwargs.get("protocol") or 2) != "2":
            return None
        wire = _WIRES.get(pool)
        if wire is None:
            wire = _WIRES[pool] = GateWire(pool)
        return wire

    async def _ensure(self) -> asyncio.Transport:
        """A live transport: the current one, or a pool connection taken over now."""
        async with self._lock:
            transport: asyncio.Transport | None = self._transport
            if transport is not None and not transport.is_closing():
                return transport
            await self._release()
            try:
                conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                raise WireError(f"Error connecting to Redis: {type(e).__name__}: {e}",
                                sent=False) from e
            writer: asyncio.StreamWriter | None = getattr(conn, "_writer", None)
            transport = writer.transport if writer is not None else None  # type: ignore[assignment]
            if transport is None or not hasattr(transport, "set_protocol"):
                await self._pool.release(conn)
                raise WireError("Error connecting to Redis: no stream transport", sent=False)
            transport.set_protocol(_Protocol(self, transport.get_protocol()))
            self._conn, self._transport = conn, transport
            return transport

    def call(self, command: bytes) -> Coroutine[Any, Any, Any]:
        """Send one packed command (await it); its parsed reply (bytes, int, list), or
        raise the error redis-py would (``ResponseError``, ``NoScriptError``),
        ``WireError`` or ``TimeoutError``. (``call`` and ``decide`` hand back ``_send``'s
        coroutine itself: no frame of their own on every request.)"""
        return self._send(None, command, b"")

    def decide(self, packer: Packer, keys: bytes, args: bytes) -> Coroutine[Any, Any, Any]:
        """One decision of ``packer``'s (await it), sent in one batch with the others asked
        for in this event-loop turn (``packer.pack_batch``); its entry of the batch's
        reply, or raise as ``call`` does (an error reply to the batch is every
        decision's)."""
        return self._send(packer, keys, args)

    async def _send(self, packer: Packer | None, part: bytes, args: bytes) -> Any:
        transport = self._transport
        if transport is None or transport.is_closing():
            transport = await self._ensure()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._waiting and not self._out:
            # The wire is idle (nothing in flight, nothing queued): written now, so a lone
            # request pays no extra event-loop turn (~6 µs, bench/README.md). Requests
            # asked for while it is in flight queue behind it and go out together. From
            # here on a cancelled caller is cancelled in flight: its decision may be
            # admitted, reserved until reconciliation expires the unsent order after its
            # deadline (the case of a lost reply); only a queued request can be withdrawn.
            entry: asyncio.Future[Any] | list[asyncio.Future[Any]] = fut
            if packer is None:
                data = part
            else:
                try:
                    data = packer.pack_batch([part], [args])
                except Exception as e:  # a programming error: not sent
                    raise WireError(f"gate batch could not be packed: {e!r}", sent=False) from e
                entry = [fut]
            # written before it is listed: a write that raises (data of the wrong type)
            # leaves no waiting entry behind to shift every later reply by one
            transport.write(data)
            self._waiting.append(entry)
        else:
            self._out.append((packer, part, args, fut))
            if self._flush is None:
                self._flush = loop.call_soon(self._write)
        if self._timeout is None:
            return await fut
        handle = loop.call_later(self._timeout, self._expire, fut)
        try:
            return await fut
        finally:
            handle.cancel()

    async def load_script(self, text: str | bytes | memoryview) -> None:
        """SCRIPT LOAD ``text`` on the wire (after a NOSCRIPT): concurrent callers that
        all met the same NOSCRIPT share one load instead of one connection each."""
        body = text.encode() if isinstance(text, str) else bytes(text)
        pending = self._loading.get(body)
        if pending is None:
            pending = asyncio.ensure_future(self.call(pack(b"SCRIPT", b"LOAD", body)))
            self._loading[body] = pending
            pending.add_done_callback(lambda _: self._loading.pop(body, None))
        await asyncio.shield(pending)

    def _write(self) -> None:
        self._flush = None
        # a queued request whose caller was cancelled before it left is not sent at all:
        # a decision nobody waits for would reserve exposure for an order never submitted
        out, self._out = [o for o in self._out if not o[3].done()], []
        transport = self._transport
        if transport is None or transport.is_closing():
            err = WireError("connection to Redis lost before sending", sent=False)
            for *_, fut in out:
                if not fut.done():
                    fut.set_exception(err)
            return
        chunks: list[bytes] = []
        i, end = 0, len(out)
        while i < end:
            packer, part, _, fut = out[i]
            if packer is None:
                chunks.append(part)
                self._waiting.append(fut)
                i += 1
                continue
            # consecutive decisions of one packer: one batch of up to its batch_max
            j = min(end, i + packer.batch_max)
            k = i + 1
            while k < j and out[k][0] is packer:
                k += 1
            batch = out[i:k]
            try:
                chunks.append(packer.pack_batch([b[1] for b in batch], [b[2] for b in batch]))
            except Exception as e:  # a programming error: these decisions are not sent
                err = WireError(f"gate batch could not be packed: {e!r}", sent=False)
                for *_, f in batch:
                    if not f.done():
                        f.set_exception(err)
            else:
                self._waiting.append([b[3] for b in batch])
            i = k
        if chunks:
            transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _expire(self, fut: asyncio.Future[Any]) -> None:
        if not fut.done():  # no reply within socket_timeout: nothing after it can be trusted
            fut.set_exception(RedisTimeoutError("Timeout reading from Redis (gate wire)"))
            self._broken(WireError("an earlier request on the gate wire timed out", sent=True))

    def _broken(self, err: WireError) -> None:
        """Fail every request (written ones: ``err``; unwritten: not sent) and close the
        transport; the next call takes a fresh connection."""
        while self._waiting:
            entry = self._waiting.popleft()
            for fut in entry if isinstance(entry, list) else (entry,):
                if not fut.done():
                    fut.set_exception(err)
        out, self._out = self._out, []
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        unsent = WireError(f"not sent: {err}", sent=False)
        for *_, fut in out:
            if not fut.done():
                fut.set_exception(unsent)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    async def _release(self) -> None:
        """Give a dead connection back to the pool (closed; the pool reconnects it)."""
        conn, self._conn, self._transport = self._conn, None, None
        if conn is None:
            return
        try:
            await conn.disconnect(nowait=True)
        except Exception:  # closing a dead socket; nothing to report
            pass
        try:
            await self._pool.release(conn)
        except KeyError:  # the pool was reset meanwhile: the connection is not its
            pass
