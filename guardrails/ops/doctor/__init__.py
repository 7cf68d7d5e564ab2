"""``guardrails doctor``: gather one snapshot, judge it with pure ordered checks, report."""
