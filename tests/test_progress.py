"""Progress display for long syncs, and how the Admin key is read (env, stdin, hidden prompt)."""

from __future__ import annotations

import getpass
import io
import logging
import re
import sys

import pytest
from rich.console import Console

from worker import cli
from worker.secret import AdminKey
from worker.sync.progress import BarProgress

KEY = "sk-ant-admin01-abcdefghijklmnopqrstuvwxyz0123456789-x7Qa"


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after `raw`: text, \\r, \\n, erase line (ESC[2K), cursor up (ESC[nA);
    other escape sequences (cursor visibility, colours) change nothing here."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\x1b\r\n]+", raw):
        if token == "\n":
            row, col = row + 1, 0
            lines.extend([""] * (row + 1 - len(lines)))
        elif token == "\r":
            col = 0
        elif token == "\x1b[2K":
            lines[row] = ""
        elif token.startswith("\x1b[") and token.endswith("A"):
            row = max(0, row - int(token[2:-1] or 1))
        elif not token.startswith("\x1b"):
            line = lines[row].ljust(col)
            lines[row] = line[:col] + token + line[col + len(token):]
            col += len(token)
    return [line.rstrip() for line in lines if line.strip()]


class TestBar:
    def terminal(self) -> tuple[BarProgress, io.StringIO]:
        out = io.StringIO()
        return BarProgress(Console(file=out, force_terminal=True, width=150, color_system=None)), out

    def test_shows_days_pages_rows_and_wait(self) -> None:
        """The bar line carries days done, pages, rows and time spent waiting for the rate limit."""
        bar, out = self.terminal()
        with bar:
            bar.start("[1] prod", "backfill", 365)
            bar.wait("[1] prod", 59.6)
            bar.page("[1] prod", 31, 1200)
            bar.page("[1] prod", 31, 800)
            bar.wait("[1] prod", 60)
            [line] = bar.lines()
            bar.finish("[1] prod", True, "done")
        assert "31/365 days" in line and "2 pages" in line and "2000 rows" in line
        assert "waited 2m00s" in line and "waiting 1m00s for the organization's request budget" in line
        assert screen(out.getvalue())[0] == "[1] prod: done"

    def test_one_line_per_integration_syncing_at_once(self) -> None:
        """Several integrations at once: the terminal shows one line each, each with its own figures (none
        overwrites another), and a finished one's message above them; labels are never read as markup."""
        bar, out = self.terminal()
        with bar:
            bar.start("[1] prod", "backfill", 365)
            bar.start("[2] staging", "manual", 30)
            bar.start("[3] dev", "backfill", 30)
            bar.page("[1] prod", 31, 1200)
            bar.page("[2] staging", 30, 500)
            bar.page("[1] prod", 31, 800)
            bar.wait("[3] dev", 5)
            bar.finish("[2] staging", True, "manual sync ok: 1 pages, 500 rows, 1 requests")
        shown = screen(out.getvalue())
        assert shown[0] == "[2] staging: manual sync ok: 1 pages, 500 rows, 1 requests"
        bars = shown[1:]
        assert [line.split()[:2] for line in bars] == [["[1]", "prod"], ["[2]", "staging"], ["[3]", "dev"]]
        assert "backfill" in bars[0] and "31/365 days | 2 pages | 2000 rows | waited 0s" in bars[0]
        assert "manual" in bars[1] and "15/30 days | 1 pages | 500 rows" in bars[1]
        assert "0/30 days | 0 pages | 0 rows | waited 5s (waiting 5s for the organization's request budget)" in bars[2]

    def test_log_lines_print_above_the_bars(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A warning logged to stderr while the bars run is printed above them, not through a bar's line."""
        bar, out = self.terminal()
        monkeypatch.setattr(sys, "stderr", out)  # the terminal: what the log handler and the bars write to
        handler = logging.StreamHandler(out)
        logging.getLogger().addHandler(handler)
        try:
            with bar:
                bar.start("[1] prod", "backfill", 30)
                logging.getLogger("worker.test").warning("retrying after a 529")
                bar.page("[1] prod", 30, 10)
        finally:
            logging.getLogger().removeHandler(handler)
        warning, line = screen(out.getvalue())
        assert warning == "retrying after a 529"
        assert line.startswith("[1] prod") and "15/30 days" in line
        assert handler.stream is out  # given back


class TestReadAdminKey:
    def test_env_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """ANTHROPIC_ADMIN_KEY is used first, trimmed."""
        monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", f"  {KEY}\n")
        assert cli.read_admin_key() == AdminKey(KEY)

    def test_hidden_prompt_on_a_terminal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """On a terminal with no env var, the key is asked for without echo (getpass)."""
        monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        asked: list[str] = []
        monkeypatch.setattr(sys, "stdin", Tty())

        def prompt_for(prompt: str) -> str:
            asked.append(prompt)
            return KEY
        monkeypatch.setattr(getpass, "getpass", prompt_for)
        assert cli.read_admin_key() == AdminKey(KEY)
        assert asked and "hidden" in asked[0]

    def test_piped_stdin(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Piped stdin is read when there is no env var."""
        monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
        monkeypatch.setattr(sys, "stdin", io.StringIO(KEY + "\n"))
        assert cli.read_admin_key() == AdminKey(KEY)
