"""The per-user exchange simulator daemon behind ``[venue] kind = "http"``, ``url = "embedded"``.

Invariant upheld: *one writer per account* must be testable against one exchange. Every
``guardrails run`` of a user on a host — the active instance and its standbys — reaches
the SAME simulator, so a failover meets the book and fills a real venue would show.
Like the embedded Redis (``guardrails.infra.embedded``), the daemon lives in the state
directory (``embedded.state_dir()/simulator``, never under ``$HOME``):

* ``start.lock`` — ``flock`` around check-and-start: of several processes starting at
  once, exactly one spawns the daemon, the others reuse it;
* ``sim.pid`` / ``sim.json`` — the daemon's pid, and its URL (``127.0.0.1``, a free TCP
  port) with its pid and market digest, written by the daemon once it listens and
  removed when it stops;
* ``market.json`` — the market it simulates (written by the process that starts it);
* ``record.jsonl`` — its append-only record, which *is* its state: replayed at start
  (orders, tombstones, fills, balances, last marks) and fsynced before every answer,
  so a restarted daemon agrees with the ledger in the persistent embedded Redis;
* ``sim.log`` — its log;
* ``daemon.lock`` — ``flock``-ed by the daemon for its life: the record's only writer.

Health check: ``GET /v1/info`` must answer with the pid of ``sim.json``. A second
client whose market differs from the running daemon's is refused (``SimDaemonError``)
rather than silently trading another market.

Not guaranteed: the market walks only while the daemon runs (after a restart the marks
resume from the last checkpoint); the daemon is a demo/test exchange holding no funds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrails import logs
from guardrails.config import PaperVenueConfig, RiskConfig
from guardrails.infra import embedded

log = logging.getLogger("guardrails.simulator")

_DIGEST_KEYS = ("quote_decimals", "instruments")


class SimDaemonError(RuntimeError):
    """The simulator daemon could not be started, reached or stopped."""


@dataclass(frozen=True)
class MarketSpec:
    """What the daemon simulates: the market, the instruments' units and the chain id."""

    market: PaperVenueConfig
    risk: RiskConfig
    chain_id: int
    protocol: str = "eip712"
    """``eip712`` (the HTTP venue's API) or ``binance`` (``guardrails.sim.binance``)."""
    clob_tokens: dict[str, str] | None = None
    """Set: the daemon serves the Polymarket CLOB API (``guardrails.sim.clob``) on these
    outcome tokens (symbol -> token id) instead of the HTTP venue's protocol."""

    def digest(self) -> str:
        """Equal markets have equal digests (limits other than units do not count)."""
        risk = self.risk.model_dump(mode="json")
        units = {k: risk[k] for k in _DIGEST_KEYS}
        for inst in units["instruments"].values():
            inst.pop("max_position", None)
        doc: dict[str, Any] = {"market": self.market.model_dump(mode="json"), "units": units,
                               "chain_id": self.chain_id}
        if self.protocol != "eip712":
            doc["protocol"] = self.protocol
        if self.clob_tokens:
            doc["clob"] = self.clob_tokens
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        market = self.market.model_dump(mode="json")
        return json.dumps({
            "market": market,
            "risk": self.risk.model_dump(mode="json"),
            "chain_id": self.chain_id,
            "protocol": self.protocol,
            "clob_tokens": self.clob_tokens,
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> MarketSpec:
        data = json.loads(text)
        return cls(
            PaperVenueConfig.model_validate(data["market"]),
            RiskConfig.model_validate(data["risk"]),
            int(data["chain_id"]),
            str(data.get("protocol", "eip712")),
            data.get("clob_tokens"),
        )


@dataclass(frozen=True)
class DaemonPaths:
    root: Path

    @property
    def lockfile(self) -> Path:
        return self.root / "start.lock"

    @property
    def pidfile(self) -> Path:
        return self.root / "sim.pid"

    @property
    def infofile(self) -> Path:
        return self.root / "sim.json"

    @property
    def market(self) -> Path:
        return self.root / "market.json"

    @property
    def record(self) -> Path:
        return self.root / "record.jsonl"

    @property
    def logfile(self) -> Path:
        return self.root / "sim.log"

    @property
    def errorfile(self) -> Path:
        return self.root / "sim.error"

    @property
    def ownerlock(self) -> Path:
        return self.root / "daemon.lock"


PROTOCOLS = ("eip712", "binance")


def paths(root: Path | None = None, protocol: str = "eip712") -> DaemonPaths:
    """The daemon's files: one daemon per protocol (``simulator``, ``simulator-binance``)."""
    if root is not None:
        return DaemonPaths(root)
    name = "simulator" if protocol == "eip712" else f"simulator-{protocol}"
    return DaemonPaths(embedded.state_dir() / name)


def clob_root() -> Path:
    """State directory of the per-user CLOB simulator daemon (Polymarket, ``embedded``)."""
    return embedded.state_dir() / "clob-simulator"


def _read_info(p: DaemonPaths) -> dict[str, Any] | None:
    try:
        data = json.loads(p.infofile.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _get_info(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/v1/info", timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) else None


def _healthy(p: DaemonPaths) -> dict[str, Any] | None:
    """The running daemon's info (with its ``url``), or None: it must answer with the
    pid it wrote, so a stale file never points us at some other process's port."""
    info = _read_info(p)
    if info is None or "url" not in info:
        return None
    live = _get_info(str(info["url"]))
    if live is None or live.get("pid") != info.get("pid"):
        return None
    return {**live, "url": info["url"]}


def _log_tail(p: DaemonPaths, n: int = 2000) -> str:
    try:
        return p.logfile.read_text(errors="replace")[-n:]
    except OSError:
        return ""


DAEMON_ENV_NAMES = frozenset({
    "PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
    "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONSAFEPATH", "VIRTUAL_ENV",
    "COVERAGE_PROCESS_START", "COVERAGE_RCFILE",
})
"""Environment variables the daemon inherits (plus ``LC_*``); nothing else. It reads its
state directory from its argument, holds no key and needs no token: a signing key, the
operator token, a Redis password or any ``GUARDRAILS_*`` variable in the starter's
environment stays out of the daemon's (``/proc/<pid>/environ``)."""


def daemon_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of ``environ`` (default ``os.environ``) for the daemon."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items() if k in DAEMON_ENV_NAMES or k.startswith("LC_")}


def ensure_running(spec: MarketSpec, *, root: Path | None = None, timeout: float = 30.0) -> str:
    """Start the daemon unless it already runs; return its base URL.

    Safe from several processes at once: a file lock serialises the check and the start.
    Raises ``SimDaemonError`` if the running daemon (or its record) simulates another
    market, or if it does not come up (the message quotes its log). It starts with
    ``daemon_environment()`` only: no key, token or password reaches it.
    """
    p = paths(root, spec.protocol)
    p.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = spec.digest()
    with p.lockfile.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _healthy(p)
        if info is not None:
            if info.get("market_digest") != digest:
                raise SimDaemonError(
                    f"the simulator daemon at {info['url']} (state {p.root}) simulates another "
                    f"market (digest {info.get('market_digest')}, this config {digest}); stop it "
                    "with `guardrails venue stop` (and move its record.jsonl away for a fresh "
                    "exchange)"
                )
            return str(info["url"])
        p.infofile.unlink(missing_ok=True)
        p.errorfile.unlink(missing_ok=True)
        p.market.write_text(spec.to_json())
        with p.logfile.open("a") as logf:
            # The child forks the daemon off and exits at once (double fork): the daemon
            # is nobody's child, so it outlives this process and leaves no zombie.
            subprocess.run(
                [sys.executable, "-m", "guardrails", "venue", "serve", "--daemon-dir",
                 str(p.root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                start_new_session=True, check=False, timeout=timeout,
                env=daemon_environment(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _healthy(p)
            if info is not None:
                return str(info["url"])
            if p.errorfile.exists():
                raise SimDaemonError(
                    f"the simulator daemon refused to start: {p.errorfile.read_text().strip()} "
                    f"(log {p.logfile})"
                )
            time.sleep(0.05)
        raise SimDaemonError(f"the simulator daemon did not answer within {timeout}s "
                             f"(log {p.logfile}):\n{_log_tail(p)}")


def status(root: Path | None = None, protocol: str = "eip712") -> dict[str, Any]:
    """What ``guardrails venue status`` shows."""
    p = paths(root, protocol)
    info = _healthy(p)
    out: dict[str, Any] = {
        "running": info is not None,
        "url": info["url"] if info else None,
        "pid": info["pid"] if info else None,
        "state_dir": str(p.root),
        "record": str(p.record),
        "log": str(p.logfile),
    }
    if info is not None:
        for k in ("market_digest", "chain_id", "orders", "open_orders", "tombstones", "fills",
                  "replayed"):
            out[k] = info.get(k)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(*, root: Path | None = None, timeout: float = 10.0, protocol: str = "eip712") -> bool:
    """SIGTERM the daemon and wait until it is gone. False if it was not running."""
    p = paths(root, protocol)
    if not p.root.exists():
        return False
    with p.lockfile.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _healthy(p)
        if info is None:
            return False
        pid = int(info["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The daemon removes sim.json as its last act; a zombie child counts as gone.
            if not p.infofile.exists() and (not _pid_alive(pid) or _get_info(info["url"]) is None):
                return True
            time.sleep(0.05)
        raise SimDaemonError(f"the simulator daemon (pid {pid}) did not stop within {timeout}s")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve_daemon(root: Path) -> int:
    """The daemon itself (``guardrails venue serve --daemon-dir DIR``): replay, listen,
    publish ``sim.json``, serve until SIGTERM, then checkpoint and unpublish."""
    from guardrails.sim.clob import ClobExchange, ClobSimulator
    from guardrails.sim.exchange import SimExchange, SimStateError, Simulator

    p = paths(root)
    spec = MarketSpec.from_json(p.market.read_text())
    if os.fork() != 0:
        os._exit(0)  # the first child returns at once; the grandchild is the daemon
    os.setsid()
    # One writer per record: held for the daemon's life, so a second daemon (say, started
    # while this one hung and failed its health check) refuses instead of appending too.
    owner = p.ownerlock.open("a")
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        msg = f"another simulator daemon holds {p.ownerlock} (its record's only writer)"
        logs.event(log, "simulator.refused", logging.ERROR, error=msg)
        _write_atomic(p.errorfile, msg + "\n")
        return 1

    async def run() -> int:
        try:
            sim: Simulator
            exchange: SimExchange
            if spec.protocol == "binance":
                from guardrails.sim import binance

                exchange = binance.make_exchange(spec.market, spec.risk, chain_id=spec.chain_id,
                                                 record_path=p.record, resume=True,
                                                 market_digest=spec.digest())
                front = binance.BinanceSim(exchange, accept_demo_keys=True)
                sim = Simulator(exchange, app=lambda: binance.build_binance_app(front))
            elif spec.clob_tokens:
                clob = ClobExchange(spec.market, spec.risk, spec.clob_tokens,
                                    chain_id=spec.chain_id, record_path=p.record,
                                    resume=True, market_digest=spec.digest())
                exchange, sim = clob, ClobSimulator(clob)
            else:
                exchange = SimExchange(spec.market, spec.risk, chain_id=spec.chain_id,
                                       record_path=p.record, resume=True,
                                       market_digest=spec.digest())
                sim = Simulator(exchange)
        except (SimStateError, OSError, KeyError, ValueError) as e:
            logs.event(log, "simulator.refused", logging.ERROR, error=f"{type(e).__name__}: {e}")
            _write_atomic(p.errorfile, f"{type(e).__name__}: {e}\n")
            return 1
        url = await sim.start()
        stop_ev = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_ev.set)
        _write_atomic(p.pidfile, f"{os.getpid()}\n")
        _write_atomic(p.infofile, json.dumps({"pid": os.getpid(), "url": url,
                                              "market_digest": spec.digest()}))
        logs.event(log, "simulator.listening", url=url, record=p.record, daemon=1,
                   replayed=exchange.replayed, chain_id=spec.chain_id, protocol=spec.protocol)
        try:
            await stop_ev.wait()
        finally:
            await sim.stop()
            p.infofile.unlink(missing_ok=True)
            p.pidfile.unlink(missing_ok=True)
            logs.event(log, "simulator.stopped", url=url)
        return 0

    try:
        return asyncio.run(run())
    finally:
        owner.close()


# -- CLI -----------------------------------------------------------------------------------


def cmd_venue(args: argparse.Namespace) -> int:
    """``guardrails venue serve|status|stop``."""
    if args.venue_command == "serve":
        if getattr(args, "daemon_dir", None):
            logs.setup()
            return serve_daemon(Path(args.daemon_dir))
        if getattr(args, "protocol", "eip712") == "binance":
            from guardrails.sim.binance import cmd_serve as serve_binance

            return serve_binance(args)
        from guardrails.sim.exchange import cmd_serve

        return cmd_serve(args)
    protocol = getattr(args, "protocol", "eip712")
    try:
        if args.venue_command == "stop":
            stopped = stop(protocol=protocol)
            print("simulator daemon stopped" if stopped else "simulator daemon was not running")
            if stop(root=clob_root()):
                print("CLOB simulator daemon stopped")
            return 0
        info = status(protocol=protocol)
    except SimDaemonError as e:
        print(f"guardrails venue: {e}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0 if info["running"] else 3
