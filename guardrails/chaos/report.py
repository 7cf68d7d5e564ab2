"""The chaos run's report: what was injected, what the account did, what the checker found.

One JSON document (saved with ``--report``) and the same content as a plain table on
stdout. ``violations`` is keyed by invariant number; the run fails when any list is
non-empty.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from guardrails.chaos.checker import INVARIANTS, CheckResult
from guardrails.chaos.faults import Fault, FaultKind

REPORT_VERSION = 1


def build(
    *,
    seed: int,
    duration_s: float,
    instances: int,
    schedule: list[Fault],
    injected: list[dict[str, Any]],
    result: CheckResult,
    run: dict[str, Any],
) -> dict[str, Any]:
    """The report document. ``injected`` holds what the harness actually did per fault."""
    by_kind = Counter(str(i["kind"]) for i in injected if i.get("ok", True))
    failed = Counter(str(i["kind"]) for i in injected if not i.get("ok", True))
    return {
        "version": REPORT_VERSION,
        "seed": seed,
        "duration_s": duration_s,
        "instances": instances,
        # every kind the run's schedule holds (a single-server run has no failover kind)
        "faults": {k.value: by_kind.get(k.value, 0) for k in FaultKind
                   if any(f.kind is k for f in schedule)},
        "faults_not_applied": dict(failed),
        "schedule": [f.to_json() for f in schedule],
        "injected": injected,
        "orders": result.stats,
        "late_sends": result.late_sends,
        "violations": {
            str(n): [v.to_json() for v in result.violations if v.invariant == n] for n in sorted(INVARIANTS)
        },
        "violation_count": len(result.violations),
        "problems": list(run.get("problems", [])),
        "run": run,
        "ok": not result.violations and not run.get("problems"),
    }


def render(doc: dict[str, Any]) -> str:
    """The report as a table for a terminal."""
    lines = [
        f"guardrails chaos run  seed={doc['seed']}  duration={doc['duration_s']}s  "
        f"instances={doc['instances']}",
        "",
        "faults injected",
    ]
    for kind, n in doc["faults"].items():
        lines.append(f"  {kind:<16} {n:>6}")
    for kind, n in doc.get("faults_not_applied", {}).items():
        lines.append(f"  {kind:<16} {n:>6}  (could not be applied)")
    orders = doc["orders"]
    lines += ["", "orders"]
    for key in (
        "admitted",
        "venue_orders",
        "venue_fills",
        "venue_expired",
        "venue_rejected",
        "journal_entries",
    ):
        if key in orders:
            lines.append(f"  {key:<16} {orders[key]:>6}")
    if orders.get("readmitted_after_lost_history"):
        lines.append(f"  {'re-admitted after a lost history (venue never saw the first)':<16} "
                     f"{orders['readmitted_after_lost_history']:>6}")
    denied = orders.get("denied", {})
    lines.append(f"  {'denied':<16} {sum(denied.values()):>6}")
    for reason, n in sorted(denied.items()):
        lines.append(f"    {reason:<22} {n:>6}")
    late = doc["late_sends"]
    lines += [
        "",
        f"late sends (reached the venue after the sender's lease): {late['total']}",
        f"  {'stopped by venue fence':<28} {late['venue_fenced']:>6}",
        f"  {'within reservation':<28} {late['within_reservation']:>6}",
        f"  {'escaped (violation)':<28} {late['escaped']:>6}",
        "",
        "violations per invariant",
    ]
    for n, name in sorted(INVARIANTS.items()):
        found = doc["violations"][str(n)]
        lines.append(f"  {n}. {name:<44} {len(found):>4}")
        for v in found[:5]:
            lines.append(f"       - {v['detail']}")
        if len(found) > 5:
            lines.append(f"       … and {len(found) - 5} more")
    run = doc.get("run", {})
    if run.get("history_losses"):
        histories = doc.get("orders", {}).get("histories") or []
        lines += ["", f"histories lost and recovered: {run['history_losses']} "
                      f"(redis {run.get('redis', 'single')}); admissions per history: "
                      + ", ".join(str(h.get("admitted", "?")) for h in histories)]
    if run.get("failovers"):
        lines.append(f"sentinel failovers: {run['failovers']}")
    problems = doc.get("problems", [])
    lines += ["", f"run problems (not invariant violations, but the run fails): {len(problems)}"]
    lines += [f"  - {p}" for p in problems]
    lines += ["", "RESULT: " + ("PASS (zero violations)" if doc["ok"] else "FAIL")]
    return "\n".join(lines)


def save(doc: dict[str, Any], path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
