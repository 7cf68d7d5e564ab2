"""The docs are true: generated references match the code they describe."""

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
