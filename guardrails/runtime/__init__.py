"""Running strategies: the embedding API (``guard``), process bootstrap, one term,
background services, the strategy ``Context``, the strategy loader, the host lock,
the account identity and the health endpoint."""
