"""Fault injection with an independent checker (``python -m guardrails.chaos``).

Several real ``guardrails run`` processes trade one account, each reaching Redis
through a proxy the harness controls, against the HTTP exchange simulator; faults
drawn from a seed hit them (SIGKILL, SIGSTOP past the TTL, partitions and blackholes,
latency, a Redis restart from AOF, kill switch on/off, lost venue responses). Then
``checker`` — which reads only the venue's own record and Redis — decides whether the
five invariants held. See ``docs/chaos.md``.
"""
