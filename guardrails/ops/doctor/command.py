"""``guardrails doctor``: a census of what runs against what should run.

Gather one snapshot (``snapshot.gather``: the Redis registry, the lease and key types,
this host's process table, the server's persistence), judge it with pure ordered checks
(``checks.judge``) against the manifest (``manifest.py``), then report: one line per
instance and finding for people, or JSON (``docs/doctor.schema.json``), and with
``--notify`` one alert through the config's ``[[notify]]`` channels. Exit 0 healthy,
1 problems found, 2 could not check (Redis down, bad manifest). Doctor uses read-only
Redis commands only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import redacted
from guardrails.config import Config, ConfigError
from guardrails.infra import connect
from guardrails.ops import notify
from guardrails.ops.common import load_target
from guardrails.ops.doctor.checks import Census, judge
from guardrails.ops.doctor.manifest import Manifest, load_manifest
from guardrails.ops.doctor.snapshot import LocalProcess, gather
from guardrails.ops.status import printable

DOCTOR_SCHEMA_VERSION = 1

EXIT_HEALTHY = 0
EXIT_PROBLEMS = 1
EXIT_CANNOT_CHECK = 2


async def census(
    redis: aioredis.Redis,
    redis_target: str,
    manifest: Manifest | None,
    *,
    host: str | None = None,
    processes: list[LocalProcess] | None = None,
) -> Census:
    """Gather one snapshot and judge it. Redis connection errors propagate (exit 2)."""
    also = [a.account for a in manifest.accounts] if manifest else []
    snap = await gather(redis, redis_target, also, host=host, processes=processes)
    return judge(snap, manifest)


def exit_code(c: Census) -> int:
    return EXIT_PROBLEMS if any(f.problem for f in c.findings) else EXIT_HEALTHY


def report_json(c: Census, redis_target: str, manifest_path: str | None) -> dict[str, Any]:
    return {
        "schema_version": DOCTOR_SCHEMA_VERSION,
        "healthy": exit_code(c) == EXIT_HEALTHY,
        "exit_code": exit_code(c),
        "host": socket.gethostname(),
        "redis": connect.describe(redis_target),
        "manifest": manifest_path,
        "findings": [f.to_json() for f in c.findings],
        "instances": [i.to_json() for i in c.instances],
        "leases": c.leases,
        "persistence": c.persistence,
    }


def _cannot_check(as_json: bool, why: str, manifest_path: str | None) -> int:
    why = redacted.mask_text(why)  # it may quote the Redis URL or a driver's message
    if as_json:
        print(json.dumps({
            "schema_version": DOCTOR_SCHEMA_VERSION, "healthy": False,
            "exit_code": EXIT_CANNOT_CHECK, "host": socket.gethostname(), "redis": None,
            "manifest": manifest_path, "error": why, "findings": [], "instances": [],
            "leases": {},
        }, indent=2))
    print(f"guardrails doctor: could not check: {why}", file=sys.stderr)
    return EXIT_CANNOT_CHECK


async def _doctor(args: argparse.Namespace) -> int:
    manifest_path: str | None = args.manifest
    try:
        manifest = load_manifest(args.manifest) if args.manifest else None
        url, cfg = load_target(args)
        channels = _channels(args, cfg)
    except ConfigError as e:
        return _cannot_check(args.json, str(e), manifest_path)
    try:
        redis = await connect.connect(url)
    except Exception as e:  # embedded Redis that cannot start, bad URL
        return _cannot_check(args.json, f"{connect.describe(url)}: {e}", manifest_path)
    try:
        concrete = await connect.resolve_url(url)
        result = await census(redis, concrete, manifest)
    except RedisError as e:
        return _cannot_check(args.json, f"Redis at {connect.describe(url)}: {e}", manifest_path)
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(report_json(result, url, manifest_path), indent=2))
    else:
        # (each line printable: instance ids, hosts and messages carry Redis's text)
        for inst in result.instances:
            print(printable(f"instance {inst.account} {inst.id or '-'} host={inst.host} "
                            f"pid={inst.pid} role={inst.role or '-'} token={inst.token} "
                            f"seen by {'+'.join(inst.sources)}"))
        for f in result.findings:
            print(printable(f"{f.severity.upper()} [{f.code}] {f.account or ''}: {f.message}"))
            print(printable(f"    what to do: {f.action}"))
        problems = sum(f.problem for f in result.findings)
        print(f"{problems} problem(s)" if problems else "healthy")
    if channels:
        await _notify(channels, result, url)
    return exit_code(result)


def _channels(args: argparse.Namespace, cfg: Config | None) -> list[notify.Channel]:
    """``--notify``: the config's ``[[notify]]`` channels that take ``doctor`` alerts."""
    if not getattr(args, "notify", False):
        return []
    if cfg is None or not cfg.notify:
        raise ConfigError("doctor --notify: no [[notify]] entries (it sends through the "
                          "config's channels; pass --config)")
    try:
        chans = notify.channels_from_config(cfg.notify)
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: {e}") from None
    wanted = [c for c in chans if "doctor" in c.events]
    if not wanted:
        raise ConfigError(f"{cfg.source}: no [[notify]] entry lists the 'doctor' event")
    return wanted


async def _notify(channels: list[notify.Channel], result: Census, url: str) -> None:
    """Send the problems (not info findings) as one ``doctor`` alert; a healthy census
    sends nothing (cron runs this every few minutes). Bounded: 15 s at most."""
    problems = [f for f in result.findings if f.problem]
    if not problems:
        return
    text = f"doctor: {len(problems)} problem(s) on {connect.describe(url)}: " + "; ".join(
        f"[{f.code}] {f.account or ''} {f.message}" for f in problems[:5])
    n = notify.Notifier(channels, max_attempts=3, backoff_s=0.5)
    n.publish(notify.Alert("doctor", ",".join(sorted({f.account or "-" for f in problems})),
                           text, {"problems": str(len(problems))}))
    task = asyncio.create_task(n.run())
    try:
        if not await n.drain(15.0):
            print("warning: doctor --notify: the alert was not delivered within 15 s",
                  file=sys.stderr)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cmd_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_doctor(args))
