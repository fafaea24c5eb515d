"""README stays true: .ci/run runs exactly its test line, its run line installs the worker, and every
command the docs list exists."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from worker.cli import cli

ROOT = Path(__file__).parent.parent
RUN_LINE = "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt . && .venv/bin/cost-worker run"
TEST_LINE = ("python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e '.[test]' "
             "&& .venv/bin/python -m pytest")


def _shell_lines(markdown: str) -> list[str]:
    return [line for block in re.findall(r"```sh\n(.*?)```", markdown, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_line() -> None:
    """The README's test command is the one .ci/run executes, in a virtualenv it deletes first."""
    readme = (ROOT / "README.md").read_text()
    assert TEST_LINE in _shell_lines(readme)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert TEST_LINE in ci
    assert "rm -rf .venv" in ci[: ci.index(TEST_LINE)]


def test_readme_run_line_starts_the_worker() -> None:
    """The install-and-run line installs into .venv with the constraints and runs `cost-worker run`."""
    assert RUN_LINE in _shell_lines((ROOT / "README.md").read_text())


def test_constraints_pin_every_declared_dependency() -> None:
    """constraints.txt pins each dependency pyproject.toml declares (runtime, test, lint)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    pinned = {line.split("==")[0].lower().replace("_", "-")
              for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    for requirement in declared:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, requirement


def test_documented_commands_exist() -> None:
    """Every `cost-worker X Y` in the docs' command tables answers --help."""
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    commands = set(re.findall(r"^\| `cost-worker ([a-z][a-z-]*(?: [a-z][a-z-]*)?)", docs, re.M))
    assert len(commands) >= 10
    for command in commands:
        result = CliRunner().invoke(cli, [*command.split(), "--help"])
        assert result.exit_code == 0, (command, result.output)
