"""Real ``guardrails run`` processes for the benchmarks, and their one-line-per-event logs.

Each ``Instance`` is a child ``python -m guardrails run`` with its own instance id, in a
state and lock directory private to the benchmark run. Its stderr is read continuously
(so the pipe never fills), each line kept with the moment the benchmark received it and
the timestamp the process itself wrote (``logs.py``: UTC, millisecond resolution).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

_TS = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\.(\d{3})Z ")
_FIELD = re.compile(r'(\w[\w.:-]*)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass
class LogLine:
    text: str
    recv_wall: float
    """time.time() when the benchmark read the line."""
    logged_wall: float | None
    """The process's own timestamp (ms resolution, truncated)."""
    event: str | None
    fields: dict[str, str] = field(default_factory=dict)


def parse_line(text: str, recv_wall: float) -> LogLine:
    m = _TS.match(text)
    logged = None
    if m:
        whole = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
        logged = whole + int(m.group(2)) / 1000
    fields = {k: v.strip('"') for k, v in _FIELD.findall(text)}
    return LogLine(text, recv_wall, logged, fields.pop("event", None), fields)


def private_env(root: Path) -> dict[str, str]:
    """The environment for a child: this venv, state and lock dirs under ``root``."""
    env = dict(os.environ)
    env.pop("GUARDRAILS_REDIS_URL", None)
    env["GUARDRAILS_STATE_DIR"] = str(root / "state")
    env["GUARDRAILS_LOCK_DIR"] = str(root / "locks")
    env["GUARDRAILS_LOCK_DIR_ISOLATED"] = "1"  # the bench's copies never meet the host's
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Instance:
    """One ``guardrails run`` child process."""

    def __init__(
        self, config: Path, instance_id: str, env: dict[str, str], *, standby: bool = True
    ) -> None:
        self.config = config
        self.instance_id = instance_id
        self.env = env
        self.standby = standby
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[LogLine] = []
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> Instance:
        cmd = [sys.executable, "-m", "guardrails", "run", "--config", str(self.config),
               "--instance-id", self.instance_id]
        if self.standby:
            cmd.append("--standby")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                break
            self.lines.append(parse_line(raw.decode(errors="replace").rstrip("\n"), time.time()))
            self._new_line.set()
        self._new_line.set()

    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def wait_line(
        self, pred: Callable[[LogLine], bool], *, within: float, start: int = 0
    ) -> LogLine:
        """The first line from index ``start`` on that satisfies ``pred``."""
        deadline = time.monotonic() + within
        i = start
        while True:
            while i < len(self.lines):
                if pred(self.lines[i]):
                    return self.lines[i]
                i += 1
            if self._reader is not None and self._reader.done():
                rc = self.proc.returncode if self.proc else None
                raise RuntimeError(f"{self.instance_id} exited ({rc}) before the expected"
                                   f" log line; last lines:\n{self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.instance_id}: expected log line not seen in {within}s;"
                                   f" last lines:\n{self.tail()}")
            self._new_line.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_line.wait(), left)

    async def wait_event(self, name: str, *, within: float, start: int = 0) -> LogLine:
        return await self.wait_line(lambda ln: ln.event == name, within=within, start=start)

    def tail(self, n: int = 15) -> str:
        return "\n".join(ln.text for ln in self.lines[-n:])

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    async def wait_exit(self, within: float) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), within)
        if self._reader is not None:
            await self._reader
        return rc

    async def close(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc is None:
            return
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.signal(signal.SIGKILL)
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


@contextlib.asynccontextmanager
async def workspace(prefix: str) -> AsyncIterator[tuple[Path, list[Instance]]]:
    """A private temp dir and a list of instances; every instance is closed on exit."""
    instances: list[Instance] = []
    with tempfile.TemporaryDirectory(prefix=f"gr-bench-{prefix}-") as tmp:
        try:
            yield Path(tmp), instances
        finally:
            for inst in instances:
                await inst.close()
