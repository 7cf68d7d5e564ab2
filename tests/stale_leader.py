"""A test-only ``guardrails`` entry point whose lease holder goes stale on purpose:
``python -m tests.stale_leader STEPDOWN_DELAY_MS run --config ...``.

It runs the real CLI (``guardrails.cli.main``) with every ``LeaderElector`` built with
``self_fence=False`` (it keeps leading past its local renew deadline) and an
``on_refused`` hook that waits ``STEPDOWN_DELAY_MS`` (or until stop) between Redis
refusing a renew and stepping down. For that long the process keeps submitting with its
old token, so a test can prove that Redis (the gate's fence) alone refuses a stale
holder's orders. Production code has no such switch: it lives here, in tests/.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any

from guardrails import cli
from guardrails.lease import LeaderElector


def install(stepdown_delay_s: float) -> None:
    """Make every ``LeaderElector`` built in this process a stale one (see the module doc)."""
    real_init = LeaderElector.__init__

    async def linger(stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):  # the delay ran out: step down now
            await asyncio.wait_for(stop.wait(), stepdown_delay_s)

    def init(self: LeaderElector, *args: Any, **kw: Any) -> None:
        kw["self_fence"] = False
        kw["on_refused"] = linger
        real_init(self, *args, **kw)

    LeaderElector.__init__ = init  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m tests.stale_leader STEPDOWN_DELAY_MS COMMAND ...", file=sys.stderr)
        return 2
    install(int(argv[0]) / 1000)
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
