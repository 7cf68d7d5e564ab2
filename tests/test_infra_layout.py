"""Shape checks for infra/ and the test-only switches (the import-graph walker is
``tests/test_layout.py``'s)."""

from __future__ import annotations

from tests.test_layout import PKG, _graph


def test_package_when_searched_then_no_test_only_switch_is_read_from_the_environment() -> None:
    """Test-only behaviour is injected (constructor arguments a test sets, or a wrapper in
    tests/ such as tests/stale_leader.py), never read from a GUARDRAILS_TEST_* variable."""
    readers = [p.relative_to(PKG.parent).as_posix() for p in PKG.rglob("*.py")
               if "GUARDRAILS_TEST_" in p.read_text()]
    assert readers == []


ROLE_PACKAGES = ("guardrails.runtime", "guardrails.ops", "guardrails.venues", "guardrails.sim",
         "guardrails.chaos")


def test_infra_when_graph_walked_then_it_imports_no_role() -> None:
    """infra/ (connection, embedded server, launcher) is what roles stand on: it imports
    the core at most, never a role."""
    graph = _graph()
    upward = {m: sorted(d for d in deps if d.startswith(ROLE_PACKAGES))
              for m, deps in graph.items() if m.startswith("guardrails.infra")}
    assert {m: d for m, d in upward.items() if d} == {}
