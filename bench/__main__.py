"""``python -m bench`` (``make bench``): run every benchmark, print ONE table, save JSON.

Options: ``--only NAME`` (repeatable or comma-separated), ``--quick`` (fewer samples,
shorter windows), ``--list``. Results go to ``bench/results/<UTC timestamp>.json`` and
``bench/results/latest.json``. See bench/README.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.core import MISS, NOT_MEASURED, Row, machine, not_measured, progress

BENCHMARKS: list[tuple[str, str]] = [
    ("gate", "gate decision latency vs PING (interleaved)"),
    ("symbols", "gate admit p50 with positions in 1/10/100/1000 symbols"),
    ("clients", "the gate's decision through redis-py, the gate's wire, coredis, valkey-glide"),
    ("noscript", "gate vs the same checks without a script (WATCH/MULTI)"),
    ("throughput", "64 concurrent intents: gate vs PING throughput"),
    ("failover", "crash takeover and graceful handover of `guardrails run`"),
    ("killswitch", "kill command's PUBLISH -> active instance's reaction"),
    ("standby", "idle standby: Redis commands/s and CPU %"),
    ("memory", "RSS of an idle active `guardrails run`; Redis memory over a sustained run"),
    ("ccxtvenue", "ccxt venue submit vs a bare signed HTTP POST of the same order"),
    ("scaleout", "30 accounts: one redis-server vs a three-primary cluster"),
    ("sentinel", "crash takeover after a Sentinel failover vs after a plain SIGKILL"),
]

RESULTS = Path(__file__).resolve().parent / "results"


def _table(rows: list[Row]) -> str:
    headers = ["benchmark", "figure", "measured", "baseline (same run)", "target", "result"]
    body = [[r.bench, r.figure, r.measured, r.baseline, r.target, r.status] for r in rows]
    widths = [min(60, max([len(h)] + [len(b[i]) for b in body])) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(headers), "-+-".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    notes = [f"  [{r.bench}] {r.figure}: {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


async def _run_one(name: str, quick: bool) -> list[Row]:
    try:
        module = importlib.import_module(f"bench.{name}")
        rows: list[Row] = await module.run(quick=quick)
        return rows
    except Exception as e:  # a broken benchmark must not hide the others' results
        traceback.print_exc(file=sys.stderr)
        return [not_measured(name, "(all)", "", f"benchmark failed: {type(e).__name__}: {e}")]


def main(argv: list[str] | None = None) -> int:
    names = [n for n, _ in BENCHMARKS]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help=f"one of {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter windows")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for n, d in BENCHMARKS:
            print(f"{n:<11} {d}")
        return 0
    chosen = [n.strip() for item in args.only for n in item.split(",") if n.strip()] or names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")

    # SIGTERM behaves like Ctrl-C: tasks are cancelled, so every benchmark's `finally`
    # stops its guardrails processes and its redis-server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.time()
    machine_info = machine()
    rows: list[Row] = []
    for name in [n for n in names if n in chosen]:
        progress(name, "starting" + (" (quick)" if args.quick else ""))
        t0 = time.monotonic()
        try:
            got = asyncio.run(_run_one(name, args.quick))
        except KeyboardInterrupt:
            progress(name, "interrupted: its processes and redis-server were stopped; no results")
            return 130
        progress(name, f"done in {time.monotonic() - t0:.1f}s")
        rows += got

    machine_info["loadavg_1m_end"] = os.getloadavg()[0]
    table = _table(rows) + (
        f"\n\nmachine: {machine_info['cpus']} CPUs, load average "
        f"{machine_info['loadavg_1m_start']:.1f} -> {machine_info['loadavg_1m_end']:.1f} during the "
        f"run, redis-py {machine_info['redis_py']} ({machine_info['parser']} parser); absolute "
        "times move with the load, the ratios are measured in the same run"
    )
    print()
    print(table)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    report: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "quick": args.quick,
        "only": chosen if args.only else None,
        "machine": machine_info,
        "rows": [r.as_json() for r in rows],
        "table": table,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp}.json"
    text = json.dumps(report, indent=2, default=str)
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"\nsaved {path.relative_to(RESULTS.parent.parent)} (and bench/results/latest.json)")
    misses = sum(r.status == MISS for r in rows)
    unmeasured = sum(r.status == NOT_MEASURED for r in rows)
    print(f"{len(rows)} figures: {misses} missed, {unmeasured} not measured")
    # Exit 0 even on a miss: a benchmark reports, the lead decides. Nonzero only on misuse.
    return 0


if __name__ == "__main__":
    sys.exit(main())
