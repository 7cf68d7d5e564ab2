"""Child process of test_venue_ccxt_deadman: holds a kraken ccxt venue the way the
runtime does in a term (``begin_term``, then ``term_service``), rests one order through
the venue's own exchange object, writes its client order id to the ready file, and on
SIGTERM cancels the service (a graceful end of the term). Credentials come from the
environment, never argv."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import uuid
from pathlib import Path

from guardrails.venues.ccxt import CcxtVenue
from tests.test_venue_ccxt_deadman import ACCOUNT, LEASE, RISK, SYMBOL, venue_cfg


async def main(url: str, ready: Path) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    venue = CcxtVenue(venue_cfg(url), ACCOUNT, risk=RISK, lease=LEASE)
    await venue.start()
    try:
        await venue.begin_term()
        service = asyncio.create_task(venue.term_service())
        coid = "c" + uuid.uuid4().hex[:20]
        await venue._exchange().create_order(SYMBOL, "limit", "buy", "0.0010", "50000.00",
                                             {"clientOrderId": coid})
        tmp = ready.with_suffix(".tmp")
        await asyncio.to_thread(tmp.write_text, coid)
        await asyncio.to_thread(tmp.replace, ready)
        await stop.wait()
        service.cancel()
        await asyncio.gather(service, return_exceptions=True)
    finally:
        await venue.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], Path(sys.argv[2]))))
