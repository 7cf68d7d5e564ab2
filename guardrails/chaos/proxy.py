"""A TCP proxy between one instance and Redis that the chaos harness controls.

Each instance reaches Redis only through its own ``ChaosProxy``, so the harness can
hurt one instance's link without touching the others:

- ``set_latency(ms)``: every byte is delivered ``ms`` later, in order, both ways;
- ``blackhole()``: connections stay open and new ones are accepted, but nothing is
  forwarded in either direction, so the client's requests time out (the nastiest
  partition: no RST, no FIN, just silence);
- ``partition()``: every open connection is closed and new ones are closed as soon as
  they are accepted (the client sees connection errors at once);
- ``lose_replies()``: requests are forwarded (the server acts on them) but the first
  byte of a reply closes the connection instead of reaching the client: the client
  cannot tell whether its request was applied (used in front of the venue);
- ``heal()``: back to forwarding. Connections that lost bytes while blackholed are
  closed, because a byte stream with a hole in it is not a Redis protocol stream
  any more; the client reconnects on a clean connection.

When Redis itself goes away (the harness restarts it) the upstream side closes and
the proxy closes the client side too, exactly as a direct connection would behave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from enum import StrEnum

log = logging.getLogger("guardrails.chaos.proxy")

_CHUNK = 65536


class ProxyMode(StrEnum):
    PASS = "pass"
    BLACKHOLE = "blackhole"
    PARTITION = "partition"
    LOSE_REPLIES = "lose_replies"


class _Conn:
    """One client connection and its upstream twin."""

    def __init__(self, client_w: asyncio.StreamWriter) -> None:
        self.client_w = client_w
        self.upstream_w: asyncio.StreamWriter | None = None
        self.tainted = False
        """True once a byte was dropped: the stream can never be healed."""
        self.closed = asyncio.Event()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for w in (self.client_w, self.upstream_w):
            if w is not None:
                # Closing a transport whose peer is gone, or whose loop is closing, can
                # raise OSError or RuntimeError; the pair is torn down either way.
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()


class ChaosProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream_host:upstream_port`` under harness control."""

    def __init__(self, name: str, upstream_host: str, upstream_port: int) -> None:
        self.name = name
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.mode = ProxyMode.PASS
        self.latency_s = 0.0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"proxy {self.name} is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for conn in list(self._conns):
            conn.close()  # every pipe sees its connection closed and returns
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- controls ---------------------------------------------------------------------

    def set_latency(self, ms: float) -> None:
        self.latency_s = max(0.0, ms / 1000)

    def blackhole(self) -> None:
        self.mode = ProxyMode.BLACKHOLE

    def lose_replies(self) -> None:
        self.mode = ProxyMode.LOSE_REPLIES

    def partition(self) -> None:
        self.mode = ProxyMode.PARTITION
        for conn in list(self._conns):
            conn.close()

    def heal(self) -> None:
        """Forward again; drop connections that lost bytes, clear added latency."""
        self.mode = ProxyMode.PASS
        self.latency_s = 0.0
        for conn in list(self._conns):
            if conn.tainted:
                conn.close()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- plumbing ---------------------------------------------------------------------

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        conn = _Conn(client_w)
        if self.mode is ProxyMode.PARTITION:
            conn.close()
            return
        self._conns.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self.mode is ProxyMode.BLACKHOLE:
                # Accept, never connect upstream, swallow whatever the client says.
                conn.tainted = True
                await self._swallow(client_r, conn)
                return
            try:
                up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                conn.close()  # Redis is down: the client sees the connection drop
                return
            conn.upstream_w = up_w
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._pipe(client_r, up_w, conn, reply=False))
                tg.create_task(self._pipe(up_r, client_w, conn, reply=True))
        except (OSError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # A connection handler is a top-level task nobody awaits: end quietly (the
            # server's done-callback would otherwise report the cancellation as an error).
            pass
        finally:
            conn.close()
            self._conns.discard(conn)
            if task is not None:
                self._tasks.discard(task)

    async def _swallow(self, reader: asyncio.StreamReader, conn: _Conn) -> None:
        while not conn.closed.is_set():
            data = await _read_or_closed(reader, conn)
            if not data:
                return

    def _forwards(self, reply: bool) -> bool:
        if self.mode is ProxyMode.PASS:
            return True
        return self.mode is ProxyMode.LOSE_REPLIES and not reply

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: _Conn,
        *,
        reply: bool,
    ) -> None:
        """Copy one direction, in order, each chunk delivered ``latency`` after it arrived."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

        async def deliver() -> None:
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    due, data = item
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    if conn.closed.is_set():
                        return
                    if not self._forwards(reply):
                        conn.tainted = True
                        if self.mode is ProxyMode.LOSE_REPLIES:
                            conn.close()  # the reply is lost; the client sees a dead socket
                            return
                        continue
                    writer.write(data)
                    await writer.drain()
            except (OSError, ConnectionError):
                conn.close()

        deliverer = asyncio.create_task(deliver())
        try:
            while not conn.closed.is_set():
                data = await _read_or_closed(reader, conn)
                if not data:
                    break
                if not self._forwards(reply):
                    conn.tainted = True  # dropped on the floor
                    if self.mode is ProxyMode.LOSE_REPLIES:
                        conn.close()
                        break
                    continue
                queue.put_nowait((time.monotonic() + self.latency_s, data))
            queue.put_nowait(None)
            await deliverer
        except (OSError, ConnectionError):
            pass
        finally:
            deliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await deliverer
            conn.close()


async def _read_or_closed(reader: asyncio.StreamReader, conn: _Conn) -> bytes:
    """Read a chunk, or return b"" as soon as the connection is closed by the harness."""
    read = asyncio.ensure_future(reader.read(_CHUNK))
    closed = asyncio.ensure_future(conn.closed.wait())
    try:
        done, _ = await asyncio.wait({read, closed}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in (read, closed):
            if not f.done():
                f.cancel()
        # return_exceptions: the two children's own errors and cancellations are collected,
        # never raised; only a cancellation of this task itself propagates (as it should).
        await asyncio.gather(read, closed, return_exceptions=True)
    if read in done and not read.cancelled() and read.exception() is None:
        return read.result()
    return b""
