"""Exchange counterparties guardrails simulates (they are not adapters).

- ``exchange``: the one matching engine and record (``SimExchange``);
- ``market``: instruments, units and the seeded mark walk (shared with the paper venue);
- ``server``: the HTTP venue's EIP-712 API over the engine, the fault hooks, and
  ``Simulator`` (serve a front in this process);
- ``binance``: Binance's spot REST API, so the unmodified ccxt ``binance`` class trades
  against it; ``clob``: Polymarket's CLOB API, for py-clob-client;
- ``daemon``: the one way to run a simulator as a process (``guardrails venue serve``,
  ``SimulatorProcess``, and the per-user daemon behind ``url = "embedded"``).
"""
