"""README stays true: .ci/run runs exactly its test line, and every command it documents exists."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from worker.cli import cli

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_test_line() -> None:
    """The README's test command is the one .ci/run executes."""
    readme = (ROOT / "README.md").read_text()
    line = "python3 -m pip install -e '.[test]' && python3 -m pytest"
    assert line in readme
    assert line in (ROOT / ".ci" / "run").read_text().splitlines()


def test_documented_commands_exist() -> None:
    """Every `cost-worker X Y` in the commands table answers --help."""
    readme = (ROOT / "README.md").read_text()
    commands = set(re.findall(r"^\| `cost-worker ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", readme, re.M))
    assert len(commands) >= 10
    for command in commands:
        result = CliRunner().invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, (command, result.output)
