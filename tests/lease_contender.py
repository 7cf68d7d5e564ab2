"""Test helper process: contend for one account's lease in a loop, logging leaderships.

Run as ``python -m tests.lease_contender URL OUT SECONDS SEED``. Each leadership appends
one line ``<token> <start_ns> <end_ns> <pid> <valid_at_end>`` to OUT, with times from
``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for every process on the host), the
start taken when ``lead`` begins and the end just before it returns — so the lease is
held across the whole logged interval. The test proves from these logs alone that no
two leaderships overlapped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from typing import TextIO

import redis.asyncio as aioredis

from guardrails.config import LeaseConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.lease import LeaderElector, Leadership, Lease

KEYS = AccountKeys(AccountId("paper", "contended"))
TIMING = LeaseConfig.model_validate(
    {"ttl": "3s", "renew_deadline": "2s", "renew_interval": "250ms", "drift_margin": "50ms"}
)


async def main(url: str, f: TextIO, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=1)
    holder = f"contender-{os.getpid()}"
    log = logging.getLogger(holder)
    # lease.acquired lines go to stderr: a token acquired just as ``stop`` was set is
    # released without leading, and the test must be able to tell that from a lost token.
    log.setLevel(logging.INFO)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)

    async def lead(leadership: Leadership) -> None:
        start = time.monotonic_ns()
        try:
            await asyncio.sleep(rng.uniform(0.005, 0.12))
        finally:
            end = time.monotonic_ns()
            f.write(f"{leadership.token} {start} {end} {os.getpid()} {int(leadership.valid())}\n")

    def dump_and_exit() -> None:  # a hung contender explains itself instead of timing out
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    asyncio.get_running_loop().call_later(seconds + 30, dump_and_exit)
    try:
        while not stop.is_set():
            elector = LeaderElector(Lease(client, KEYS, holder, TIMING), log=log)
            await elector.run(lead, stop)  # returns once lead returned and lease released
            await asyncio.sleep(rng.uniform(0, 0.03))
    finally:
        await client.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with open(sys.argv[2], "a", buffering=1) as out:  # line-buffered: one write per line
        asyncio.run(main(sys.argv[1], out, float(sys.argv[3]), int(sys.argv[4])))
