"""``guardrails doctor``: what runs, against what should run.

- ``snapshot.py`` — gather: one read of the registry, the lease, the key types, the fence
  alarm, this host's process table and the server's persistence (I/O, nothing judged);
- ``checks.py`` — judge: pure checks over that snapshot, in a documented order;
- ``manifest.py`` — what should run (``config/manifest.toml``);
- ``command.py`` — the command: gather, judge, report (text or JSON), notify, exit code.
"""
