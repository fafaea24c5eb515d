"""Progress display for long syncs, and how the Admin key is read (env, stdin, hidden prompt)."""

from __future__ import annotations

import io

import pytest

from worker import cli
from worker.secret import AdminKey
from worker.sync.progress import BarProgress

KEY = "sk-ant-admin01-abcdefghijklmnopqrstuvwxyz0123456789-x7Qa"


class TestBar:
    def test_shows_days_pages_rows_and_wait(self) -> None:
        """The bar line carries days done, pages, rows and time spent waiting for the rate limit."""
        out = io.StringIO()
        bar = BarProgress(out)
        bar.start("[1] prod", "backfill", 365)
        bar.wait("[1] prod", 59.6)
        bar.page("[1] prod", 31, 1200)
        bar.page("[1] prod", 31, 800)
        bar.wait("[1] prod", 60)
        bar.finish("[1] prod", True, "done")
        text = out.getvalue()
        last_bar = text.split("\r")[-1]
        assert "31/365 days" in last_bar and "2 pages" in last_bar and "2000 rows" in last_bar
        assert "waited 2m00s" in last_bar
        assert "rate limit: next request in 1m00s" in text
        assert text.endswith("[1] prod: done\n")


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
        monkeypatch.setattr(cli.sys, "stdin", Tty())
        monkeypatch.setattr(cli.getpass, "getpass", lambda prompt: asked.append(prompt) or KEY)
        assert cli.read_admin_key() == AdminKey(KEY)
        assert asked and "hidden" in asked[0]

    def test_piped_stdin(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Piped stdin is read when there is no env var."""
        monkeypatch.delenv("ANTHROPIC_ADMIN_KEY", raising=False)
        monkeypatch.setattr(cli.sys, "stdin", io.StringIO(KEY + "\n"))
        assert cli.read_admin_key() == AdminKey(KEY)
