"""The chaos run's venue: ``guardrails venue serve`` (the HTTP exchange simulator, or with
``--venue ccxt`` the Binance-protocol one) as a separate process, so it outlives every
bot and its responses can be lost in flight.

The simulator keeps its own append-only JSONL record of every order received and fill
made; the checker reads that file and nothing else from the venue side.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from guardrails.sim.daemon import SimulatorProcess

FAULT_PATH = "/admin/faults"
"""The simulator's test-only fault hook (served only with ``--admin``)."""
LOSE_ALL = 1_000_000
"""A count of submits larger than any window: "every submit until switched off"."""

LOSS_MODES = ("drop", "error_applied", "error_not_applied")
"""How a lost venue response looks: ``drop`` applies the order and resets the
connection; ``error_applied`` applies it and answers 503; ``error_not_applied``
answers 503 without applying (the order never existed at the venue)."""


class VenueProcess:
    """The simulator as a process of its own (``sim.daemon.SimulatorProcess``) on a port
    chosen before the configs are written, with the fault hooks on."""

    def __init__(self, config: Path, port: int, record: Path, log_path: Path, *, seed: int,
                 protocol: str = "eip712", keys: dict[str, str] | None = None) -> None:
        """``protocol``: ``eip712`` (the HTTP venue's simulator) or ``binance`` (the
        Binance-protocol one, whose API ``keys`` are written to a 0600 file beside the
        record, never into argv)."""
        self.protocol = protocol
        self.keys = keys
        self.config = config
        self.port = port
        self.record = record
        self.log_path = log_path
        self.seed = seed
        self.sim: SimulatorProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, env: dict[str, str], timeout: float = 20.0) -> None:  # noqa: ASYNC109
        keys_file = None
        if self.keys is not None:
            keys_file = self.record.with_name("venue-keys.json")
            keys_file.touch(mode=0o600)
            keys_file.write_text(json.dumps(self.keys))
        self.sim = SimulatorProcess(
            config=str(self.config), record=self.record, admin=True, seed=self.seed, env=env,
            protocol=self.protocol, keys_file=keys_file, port=self.port, log=self.log_path)
        try:
            await asyncio.to_thread(self.sim.start, timeout)
        except RuntimeError as e:
            raise RuntimeError(f"venue simulator did not start ({e}); see {self.log_path}") from None

    async def lose_responses(self, mode: str | None) -> None:
        """Lose every submit's response in ``mode`` (``LOSS_MODES``) until called with None."""
        body: dict[str, object] = {"drop_submit_responses": 0, "fail_submits": 0}
        if mode == "drop":
            body["drop_submit_responses"] = LOSE_ALL
        elif mode in ("error_applied", "error_not_applied"):
            body.update(fail_submits=LOSE_ALL, fail_status=503, fail_applies=mode == "error_applied")
        elif mode is not None:
            raise ValueError(f"unknown loss mode {mode!r}; one of {LOSS_MODES}")
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url + FAULT_PATH, json=body, timeout=aiohttp.ClientTimeout(5)) as r:
                if r.status >= 300:
                    raise RuntimeError(f"venue fault hook answered {r.status}: {await r.text()}")

    async def stop(self) -> int | None:
        """Stop the simulator (SIGTERM, SIGKILL after 5 s); its exit code, None if never started."""
        if self.sim is None or self.sim.proc is None:
            return None
        await asyncio.to_thread(self.sim.stop)
        return self.sim.proc.returncode
