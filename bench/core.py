"""The benchmark framework: result rows, statistics, progress lines, Redis servers.

Every benchmark returns ``Row`` values. A row carries the measured figure, the
baseline measured *in the same run* (so ratios hold on a noisy shared machine), the
target as text and a verdict: PASS, MISS, INFO (reported, no target) or NOT MEASURED
(with the reason — a benchmark never prints a number it did not measure).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from guardrails.infra.server import RedisProcess

PASS = "PASS"
MISS = "MISS"
INFO = "INFO"
NOT_MEASURED = "NOT MEASURED"


@dataclass
class Row:
    """One line of the report."""

    bench: str
    figure: str
    measured: str
    target: str = ""
    status: str = INFO
    baseline: str = ""
    note: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    """Raw numbers (ms, ratios, sample counts) for the JSON file."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def not_measured(bench: str, figure: str, target: str, why: str) -> Row:
    return Row(bench, figure, "not measured: " + why, target=target, status=NOT_MEASURED)


def verdict(ok: bool) -> str:
    return PASS if ok else MISS


# -- statistics -----------------------------------------------------------------------


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) — an observed sample, never interpolated."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def p50(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


def summary_ms(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples_ms),
        "p50_ms": round(p50(samples_ms), 4),
        "p99_ms": round(p99(samples_ms), 4),
        "min_ms": round(min(samples_ms), 4),
        "max_ms": round(max(samples_ms), 4),
    }


def fmt_ms(v: float) -> str:
    if v >= 100:
        return f"{v:.0f} ms"
    if v >= 10:
        return f"{v:.1f} ms"
    if v >= 1:
        return f"{v:.2f} ms"
    return f"{v * 1000:.0f} µs"


def fmt_pair(a: float, b: float) -> str:
    return f"{fmt_ms(a)} / {fmt_ms(b)}"


# -- progress -------------------------------------------------------------------------

_T0 = time.monotonic()


def progress(bench: str, msg: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {bench:<11} {msg}", file=sys.stderr, flush=True)


# -- redis ----------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(*, aof: bool = False) -> Iterator[RedisProcess]:
    """A throwaway redis-server on a free port (never 6379), stopped on exit."""
    server = RedisProcess(aof=aof).start()  # its own temporary directory, removed by stop()
    try:
        yield server
    finally:
        server.stop()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import platform

    import psutil
    import redis

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "cpus": os.cpu_count(),
        "loadavg_1m_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "mem_total_mb": psutil.virtual_memory().total // 2**20,
    }
    info["parser"] = parser()
    return info


def parser() -> str:
    """Which reply parser redis-py uses here: ``hiredis`` or ``pure-python``."""
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return "pure-python"
    return "hiredis"
