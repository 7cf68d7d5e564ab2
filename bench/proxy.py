"""A counting TCP proxy in front of Redis: exactly which requests one process sends.

The idle-standby benchmark points the standby (only) at this proxy, so every request it
sends — on any of its connections, pub/sub included — is parsed (RESP arrays) and
counted by command name before being forwarded unchanged. Replies are passed through
untouched. No MONITOR, no sampling: a count, not an estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter


class _Parser:
    """Incremental parser of client->server RESP: yields each request's command name."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        names: list[str] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return names
            names.append(parsed)

    def _line(self, pos: int) -> tuple[bytes, int] | None:
        end = self.buf.find(b"\r\n", pos)
        return None if end < 0 else (self.buf[pos:end], end + 2)

    def _one(self) -> str | None:
        if not self.buf:
            return None
        if self.buf[:1] != b"*":  # inline command (redis-cli style): one line
            got = self._line(0)
            if got is None:
                return None
            line, self.buf = got[0], self.buf[got[1]:]
            return (line.split() or [b"?"])[0].decode(errors="replace").lower()
        got = self._line(0)
        if got is None:
            return None
        count, pos = int(got[0][1:]), got[1]
        name = "?"
        for i in range(count):
            head = self._line(pos)
            if head is None:
                return None
            size, pos = int(head[0][1:]), head[1]
            if len(self.buf) < pos + size + 2:
                return None
            if i == 0:
                name = self.buf[pos:pos + size].decode(errors="replace").lower()
            pos += size + 2
        self.buf = self.buf[pos:]
        return name


class CountingProxy:
    """``127.0.0.1:<port>`` -> ``target_port``; ``counts`` holds requests by command."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts: Counter[str] = Counter()
        self.port = 0
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> CountingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        parser = _Parser()

        async def upstream() -> None:
            while data := await reader.read(65536):
                self.counts.update(parser.feed(data))
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
