"""``guardrails redis status|start|stop``: the per-user embedded Redis, by hand.

``guardrails`` starts the embedded server on demand anyway (``[redis] url = "embedded"``);
this is for looking at it and stopping it (gracefully: its AOF is flushed). ``status``
exits 0 when it runs, 3 when it does not; ``start``/``stop`` exit 1 when they cannot.
"""

from __future__ import annotations

import argparse
import json
import sys

from guardrails.infra import connect, embedded


def cmd_redis(args: argparse.Namespace) -> int:
    """``guardrails redis start|stop|status`` (``--json`` for status)."""
    try:
        if args.redis_command == "start":
            # the URL carries the server's password: masked, as everywhere else
            print(f"embedded redis running at {connect.describe(embedded.ensure_running())}")
            return 0
        if args.redis_command == "stop":
            stopped = embedded.stop()
            print("embedded redis stopped" if stopped else "embedded redis was not running")
            return 0
        info = embedded.status()
    except embedded.EmbeddedRedisError as e:
        print(f"guardrails redis: {e}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>12}: {v}")
    return 0 if info["running"] else 3
