"""Real ``guardrails run`` processes for multi-process tests, and their story from their logs.

Each ``RunProc`` is a ``python -m guardrails run`` child with its stderr in a file; a
test proves its claims from the events the process logged (``event=... k=v`` lines,
each with a millisecond UTC timestamp) and from what the venue recorded — never from
the process's own opinion of itself. Processes are always cleaned up (``stop_all``).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import subprocess_env

_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(?P<ms>\d{3})Z\s+(?P<level>\w+)\s+(?P<logger>\S+)\s+"
    r"event=(?P<event>\S+)(?P<rest>.*)$"
)
_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True)
class Event:
    ts: float
    """Unix seconds (ms resolution) when the process logged it."""
    name: str
    level: str
    logger: str
    fields: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.fields[key]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.fields.get(key, default)

    def int(self, key: str) -> int:
        return int(self.fields[key])


def parse_events(text: str) -> list[Event]:
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        ts = calendar.timegm(time.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S")) + int(m["ms"]) / 1000
        fields = {}
        for k, v in _FIELD.findall(m["rest"]):
            if v.startswith('"'):
                v = v[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            fields[k] = v
        out.append(Event(ts, m["event"], m["level"], m["logger"], fields))
    return out


def write_config(
    path: Path,
    *,
    redis_url: str,
    account: str = "t1",
    ttl: str = "1500ms",
    renew_deadline: str = "1s",
    renew_interval: str = "250ms",
    drift_margin: str = "50ms",
    looper: dict[str, str | int] | None = None,
    extra_strategies: str = "",
    daily_loss_limit: str = "1000000",
    venue_name: str | None = None,
    allow_non_durable: bool = False,
) -> Path:
    """A small paper-venue config with short lease timings and (by default) one Looper."""
    loop = {"symbol": "BTC-USD", "interval": "100ms", "offset": "-0.01"}
    loop.update(looper or {})
    params = ", ".join(f"{k} = {json.dumps(v)}" for k, v in loop.items())
    strategies = ""
    if looper is not None or not extra_strategies:
        strategies = (
            '[[strategies]]\nname = "looper"\nmodule = "strategies.looper:Looper"\n'
            f"params = {{ {params} }}\n"
        )
    path.write_text(f"""
[account]
venue = "paper"
id = "{account}"

[redis]
url = "{redis_url}"
socket_timeout = "500ms"
allow_non_durable = {str(allow_non_durable).lower()}

[lease]
ttl = "{ttl}"
renew_deadline = "{renew_deadline}"
renew_interval = "{renew_interval}"
drift_margin = "{drift_margin}"

[risk]
max_order_notional = "1000000"
max_gross_exposure = "100000000"
daily_loss_limit = "{daily_loss_limit}"
price_band = "0.05"
orders_per_second = "100"
burst = 100

[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "1000"

[venue]
kind = "paper"
name = "{venue_name or 'paper-' + account}"
seed = 7
step = "250ms"
volatility = "0.0005"
start_prices = {{ BTC-USD = "60000.00" }}

{strategies}
{extra_strategies}

[runtime]
heartbeat_interval = "500ms"
heartbeat_ttl = "3s"
""")
    return path


class RunProc:
    """One ``guardrails run`` child process; stderr (the event log) goes to ``log_path``."""

    def __init__(
        self,
        name: str,
        config: Path,
        log_dir: Path,
        *,
        standby: bool = False,
        env: dict[str, str] | None = None,
        extra_args: Iterable[str] = (),
        stale_leader_ms: int | None = None,
    ) -> None:
        """``stale_leader_ms``: run through ``tests/stale_leader.py`` (no local self-fence,
        step down that long after Redis refused a renew)."""
        self.name = name
        self.stale_leader_ms = stale_leader_ms
        self.config = config
        self.log_path = log_dir / f"{name}.log"
        self.standby = standby
        self.env = env or {}
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> RunProc:
        entry = ["guardrails"] if self.stale_leader_ms is None else [
            "tests.stale_leader", str(self.stale_leader_ms)]
        args = [sys.executable, "-m", *entry, "run", "--config", str(self.config),
                "--instance-id", self.name, *self.extra_args]
        if self.standby:
            args.append("--standby")
        self._log = self.log_path.open("ab")
        self.started_at = time.time()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=subprocess_env(**self.env),
            cwd=Path(__file__).resolve().parent.parent,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None, **match: str) -> list[Event]:
        return [
            e for e in parse_events(self.text())
            if (name is None or e.name == name)
            and all(e.fields.get(k) == v for k, v in match.items())
        ]

    def wait_for(
        self,
        name: str,
        timeout: float = 30.0,
        *,
        after: float = 0.0,
        where: Callable[[Event], bool] | None = None,
    ) -> Event:
        """The first ``name`` event logged at or after ``after`` (Unix s) that satisfies
        ``where``; fails with the log tail if none appears within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events(name):
                if e.ts >= after and (where is None or where(e)):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited ({self.proc.returncode}) before logging {name}:\n"
                    + self.text()[-4000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {name} within {timeout}s:\n" + self.text()[-4000:]
                )
            time.sleep(0.05)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout}s:\n" + self.text()[-4000:]
            ) from None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        if getattr(self, "_log", None) is not None:
            self._log.close()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0
            ) -> subprocess.CompletedProcess[str]:
    """``python -m guardrails <args>`` to completion (for short-lived commands)."""
    return subprocess.run(
        [sys.executable, "-m", "guardrails", *args], capture_output=True, text=True,
        env=subprocess_env(**(env or {})), timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )
