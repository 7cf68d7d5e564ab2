"""``make example``: the plain bot, then the same bot guarded, against a Binance-protocol
simulator (``guardrails venue serve --protocol binance``, started here on a free port).

Each bot places ``BOT_ORDERS`` (default 3) resting bids and exits. They use two demo
accounts of the simulator (the plain bot's orders are foreign to the guarded account's
ledger, so they must not share one); the guarded bot keeps its state in an embedded
Redis, like ``make run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from guardrails.sim.binance import demo_credentials
from guardrails.sim.daemon import SimulatorProcess

HERE = Path(__file__).resolve().parent


def main() -> int:
    sim = SimulatorProcess(config=str(HERE / "bot.toml"), protocol="binance")
    url = sim.start()
    print(f"Binance-protocol simulator at {url}", flush=True)
    base = {**os.environ, "EXCHANGE_URL": url, "BOT_ORDERS": os.environ.get("BOT_ORDERS", "3"),
            "BOT_INTERVAL": os.environ.get("BOT_INTERVAL", "0.5"),
            "BOT_CONFIG": str(HERE / "bot.toml")}
    try:
        for script, account in (("plain_bot.py", "binance:plain"),
                                ("guarded_bot.py", "binance:example")):
            key, secret = demo_credentials(account)
            print(f"--- {script} (account {account})", flush=True)
            done = subprocess.run([sys.executable, str(HERE / script)],
                                  env={**base, "BOT_API_KEY": key, "BOT_SECRET": secret},
                                  check=False)
            if done.returncode != 0:
                print(f"{script} exited {done.returncode}", file=sys.stderr)
                return done.returncode
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
