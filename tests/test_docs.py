"""The docs are true: generated references match the code they describe."""

import re
from pathlib import Path

from guardrails import configdoc

ROOT = Path(__file__).resolve().parent.parent


def test_config_reference_when_models_change_then_docs_match() -> None:
    expected = configdoc.render()
    actual = (ROOT / "docs" / "config.md").read_text()
    assert actual == expected, (
        "docs/config.md is out of date: "
        "run `.venv/bin/python -m guardrails.configdoc > docs/config.md`"
    )


PKG = ROOT / "guardrails"
TABLE_HEADING = "## Where to change a thing"


def _where_to_change_rows() -> list[tuple[str, str, str]]:
    """(concept, module cell, Lua cell) of docs/architecture.md's "where to change" table."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and not set(cells[0]) <= {"-"} and cells[0] != "concept":
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def _named(cell: str, suffixes: tuple[str, ...]) -> list[str]:
    """The backticked names in ``cell`` that end with one of ``suffixes``."""
    return [t for t in re.findall(r"`([^`]+)`", cell) if t.endswith(suffixes)]


def _resolve(name: str) -> list[Path]:
    """A module-column name: relative to the repo for docs/, bench/, tests/, examples/, else to
    guardrails/; a glob may name several files."""
    base = ROOT if name.split("/")[0] in ("docs", "bench", "tests", "examples") else PKG
    return sorted(base.glob(name.rstrip("/"))) if "*" in name else [base / name.rstrip("/")]


def test_where_to_change_table_when_read_then_every_file_it_names_exists() -> None:
    # Arrange
    rows = _where_to_change_rows()

    # Act
    missing = []
    for concept, module, lua in rows:
        for name in _named(module, (".py", "/", ".md")):
            if not all(p.exists() for p in _resolve(name)) or not _resolve(name):
                missing.append(f"{concept}: {name}")
        for name in _named(lua, (".lua",)):
            if not list((PKG / "lua").glob(name)):
                missing.append(f"{concept}: lua/{name}")

    # Assert
    assert len(rows) > 20
    assert missing == [], "docs/architecture.md names files that do not exist"


def test_where_to_change_table_when_tree_walked_then_every_module_has_a_row() -> None:
    # Arrange: a module is covered when a row names it, its package folder, or a glob;
    # a Lua script when a row's Lua cell names it (or a glob does)
    named: set[Path] = set()
    for _, module, _ in _where_to_change_rows():
        for name in _named(module, (".py", "/")):
            named.update(_resolve(name))
    scripts: set[Path] = set()
    for _, _module, lua in _where_to_change_rows():
        for name in _named(lua, (".lua",)):
            scripts.update((PKG / "lua").glob(name))
    modules = [p for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]

    # Act
    homeless = sorted(str(p.relative_to(PKG)) for p in modules
                      if p not in named and not any(d in named for d in p.parents))

    unnamed = sorted(str(p.relative_to(PKG)) for p in (PKG / "lua").rglob("*.lua")
                     if p not in scripts)

    # Assert
    assert homeless == [], "modules without a row in docs/architecture.md's table"
    assert unnamed == [], "Lua scripts no row of docs/architecture.md's table names"
