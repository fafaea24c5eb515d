"""config.example.toml stays true: it loads, lists every setting, and shows the defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

from worker.settings import Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"
SETTINGS_DOC = Path(__file__).parent.parent / "docs" / "settings.md"
DOCUMENTED_ONLY = {"data_dir", "master_key", "master_key_file", "ui_token", "ui_token_file"}  # commented out: their defaults depend on the machine


def test_example_lists_every_setting() -> None:
    """Every Settings field appears in the example (as a key or a commented key)."""
    text = EXAMPLE.read_text()
    for name in Settings.model_fields:
        assert f"{name} =" in text, name


def test_example_values_are_the_defaults(tmp_path: Path) -> None:
    """Loading the example gives exactly the defaults."""
    values = tomllib.loads(EXAMPLE.read_text())
    assert set(values) | DOCUMENTED_ONLY == set(Settings.model_fields)
    from_file = load_settings(EXAMPLE)
    defaults = Settings()
    for name in values:
        assert getattr(from_file, name) == getattr(defaults, name), name


def test_docs_document_every_setting() -> None:
    """docs/settings.md names each setting's environment variable."""
    text = SETTINGS_DOC.read_text()
    for name in Settings.model_fields:
        assert f"COST_WORKER_{name.upper()}" in text, name
