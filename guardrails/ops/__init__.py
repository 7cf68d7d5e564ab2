"""What operators run: one module per command, and their shared plumbing.

``common.py`` (Redis target, config, account, operator identity) serves every command;
``status``, ``doctor/`` (gather, judge), ``dashboard`` (+ ``web/``), ``kill`` (and
resume), ``limits``, ``reconcile``, ``fence``, ``migrate``, ``embedded_redis``, ``init`` are the
bodies of the CLI commands of those names (``cli.py`` only parses and dispatches);
``notify`` sends alerts for the runtime and for ``doctor --notify``. The core logic each
command drives stays in the core module named for it (``killswitch``, ``limits``,
``reconcile``, ``fencing``); nothing in the core imports this package.
"""
