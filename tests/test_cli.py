"""The command line through click's runner, against the simulator (in-process, on a respx route): the
contract of every command (names, options, JSON fields, exit codes), one-line errors, and no secret in any output."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import pytest
import respx
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from tests.simulated import Truth, key_hint, make_sim, mount
from worker.cli import cli
from worker.clock import SystemClock
from worker.simulator import SimulatorHandle
from worker.storage.db import make_engine
from worker.storage.tables import integrations
from worker.vault import MasterKey

BASE = "https://api.test"
TODAY = datetime.now(UTC).date()  # the CLI runs on the real clock
SIM = make_sim(orgs=2, seed=21, today=TODAY, base_url=BASE)  # generated days are cached: one per module
KEY = SIM.keys[0]


@pytest.fixture
def sim() -> Iterator[SimulatorHandle]:
    SIM.reset()  # faults, revocations, rotated keys, stats and recorded requests
    with respx.mock(assert_all_called=False) as router:
        mount(SIM, router)
        yield SIM


@pytest.fixture
def env(db_url: str, tmp_path: Path, master_key: MasterKey, sim: SimulatorHandle) -> dict[str, str]:
    return {
        "COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
        "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_API_BASE_URL": BASE,
        # the CLI runs on the real clock: a generous budget keeps these tests from waiting
        "COST_WORKER_REQUESTS_PER_MINUTE": "6000", "COST_WORKER_BURST": "1000", "COST_WORKER_LOG_FORMAT": "json",
    }


def invoke(env: dict[str, str], *args: str, key: str | None = KEY, stdin: str | None = None) -> Result:
    full_env: dict[str, str | None] = {**env, "ANTHROPIC_ADMIN_KEY": key}
    result = CliRunner().invoke(cli, list(args), env=full_env, input=stdin, catch_exceptions=False)
    assert "Traceback" not in result.output
    for secret in {KEY, *SIM.keys, key or KEY}:
        if secret.startswith("sk-ant-"):
            assert secret not in result.output  # no command ever prints a key
    if env.get("COST_WORKER_MASTER_KEY"):
        assert env["COST_WORKER_MASTER_KEY"] not in result.output
    return result


def connect(env: dict[str, str], *extra: str) -> int:
    """`connect` of the test organization; its legacy reports only unless `--source` says otherwise."""
    result = invoke(env, "connect", *(extra if "--source" in extra else (*extra, "--source", "legacy")))
    assert result.exit_code == 0, result.output
    return int(result.stdout.strip().splitlines()[-1])


class TestOnboarding:
    def test_test_connection_prints_the_organization(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """Exit 0 and the organization's name."""
        result = invoke(env, "test-connection")
        assert result.exit_code == 0 and sim.orgs[0].name in result.stdout

    @pytest.mark.parametrize(("key", "expected"), [
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "regular API key (sk-ant-api...), not an Admin key"),
        ("hello", "Admin key (sk-ant-admin...) is needed"),
        ("   ", "no Admin API key given"),
    ])
    def test_wrong_keys_refused_before_any_request(self, env: dict[str, str], sim: SimulatorHandle, key: str,
                                                   expected: str) -> None:
        """Non-admin keys get a clear message, exit 2, and no request is sent."""
        result = invoke(env, "test-connection", key=key)
        assert result.exit_code == 2 and expected in result.output and "Console" in result.output
        assert sim.requests == []

    def test_revoked_key_fails_with_advice(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A 401 gives exit 1 and one line telling the user what to do."""
        sim.add_fault("revoke:org=0")
        result = invoke(env, "test-connection")
        assert result.exit_code == 1
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert "revoked" in line or "expired" in line

    def test_wait_message_says_what_it_waits_for(self, env: dict[str, str], sim: SimulatorHandle,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """A wait after a failed attempt is announced as a backoff after that failure, not as the budget. The
        CLI runs on the real clock: its waits are recorded here instead of slept."""
        waits: list[float] = []

        async def sleep(_: SystemClock, seconds: float) -> None:
            waits.append(seconds)

        monkeypatch.setattr(SystemClock, "sleep", sleep)
        sim.add_fault("503")
        result = invoke(env, "test-connection")
        assert result.exit_code == 0, result.output
        [line] = [ln for ln in result.stderr.splitlines() if ln.startswith("waiting")]
        assert "for backoff after 503" in line and "request budget" not in line
        assert [w for w in waits if w > 0] == [pytest.approx(1.5, abs=0.5)]  # the first backoff: 1 to 2 s

    def test_key_from_stdin_is_trimmed(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """With no ANTHROPIC_ADMIN_KEY, a piped key (with whitespace around it) is used."""
        result = invoke(env, "test-connection", key=None, stdin=f"  {KEY}\n\n")
        assert result.exit_code == 0, result.output

    def test_connect_prints_id_and_lists_with_hint(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """connect prints the new id; `integrations list --format json` has the contract's fields."""
        iid = connect(env, "--label", "prod", "--tier", "pro")
        items = json.loads(invoke(env, "integrations", "list", "--format", "json").stdout)
        (item,) = items
        assert {"id", "label", "tier", "status", "key_hint", "last_success_at", "last_error"} <= item.keys()
        assert (item["id"], item["label"], item["tier"], item["status"]) == (iid, "prod", "pro", "pending")
        assert item["key_hint"] == key_hint(KEY)
        table = invoke(env, "integrations", "list").stdout
        assert "prod" in table and key_hint(KEY) in table

    def test_bad_tier_is_usage_error(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """An unknown tier exits 2 before anything happens."""
        assert invoke(env, "connect", "--tier", "gold").exit_code == 2
        assert sim.requests == []


class TestReplaceKey:

    def stored(self, env: dict[str, str], iid: int) -> Any:
        engine = make_engine(env["COST_WORKER_DATABASE_URL"])
        try:
            with engine.connect() as conn:
                return conn.execute(select(integrations).where(integrations.c.id == iid)).one()
        finally:
            engine.dispose()

    def test_revoked_key_replaced_keeps_rows_and_syncs_again(self, env: dict[str, str],
                                                               sim: SimulatorHandle) -> None:
        """After a rotation (the old key revoked, a new one made): replace-key stores the new key (sealed),
        keeps every synced row, and the next sync-now with it succeeds and still equals the truth."""
        iid = connect(env)
        assert invoke(env, "sync-now").exit_code == 0
        since, until = str(TODAY - timedelta(days=29)), str(TODAY)
        report = invoke(env, "report", "--since", since, "--until", until, "--format", "json").stdout
        new_key = sim.rotate_key(0)
        assert invoke(env, "sync-now").exit_code == 1  # the old key is refused now
        assert self.stored(env, iid).status == "error"
        result = invoke(env, "integrations", "replace-key", str(iid), key=new_key)
        assert result.exit_code == 0, result.output
        assert f"{key_hint(KEY)} replaced by {key_hint(new_key)}" in result.stdout
        assert new_key not in result.output
        row = self.stored(env, iid)
        assert row.key_hint == key_hint(new_key) != key_hint(KEY)
        assert new_key.encode() not in row.key_ciphertext and KEY.encode() not in row.key_ciphertext
        # Nothing synced was lost by the swap.
        assert invoke(env, "report", "--since", since, "--until", until, "--format", "json").stdout == report
        synced = invoke(env, "sync-now")
        assert synced.exit_code == 0, synced.output
        assert self.stored(env, iid).status == "ok"
        rows = json.loads(invoke(env, "report", "--since", since, "--until", until, "--format", "json").stdout)
        total = sum((Decimal(r["cost_usd"]) for r in rows), Decimal(0))
        assert total == Truth(sim, TODAY - timedelta(days=29), TODAY + timedelta(days=1)).cost()

    def test_failed_backfill_is_queued_again(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A backfill stopped by the revocation goes back to pending, so `run` resumes it."""
        iid = connect(env)
        new_key = sim.rotate_key(0)
        assert invoke(env, "sync-now").exit_code == 1
        assert self.stored(env, iid).status == "error"
        assert invoke(env, "integrations", "replace-key", str(iid), key=new_key).exit_code == 0
        assert self.stored(env, iid).status == "pending"

    def test_key_of_another_organization_is_refused(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A key of a different organization: exit 2, one line, the stored key untouched."""
        iid = connect(env)
        before = self.stored(env, iid)
        result = invoke(env, "integrations", "replace-key", str(iid), key=sim.keys[1])
        assert result.exit_code == 2
        (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert "belongs to organization" in line and sim.orgs[1].id in line
        after = self.stored(env, iid)
        assert (after.key_ciphertext, after.key_hint) == (before.key_ciphertext, before.key_hint)

    def test_unknown_integration_sends_nothing(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        result = invoke(env, "integrations", "replace-key", "42", key=sim.keys[1])
        assert result.exit_code == 2 and "no integration 42" in result.output
        assert sim.requests == []

    def test_connecting_an_organization_again_points_to_replace_key(self, env: dict[str, str],
                                                                   sim: SimulatorHandle) -> None:
        iid = connect(env)
        result = invoke(env, "connect")
        assert result.exit_code == 2 and f"integrations replace-key {iid}" in result.output


class TestSyncAndReport:
    def test_sync_now_then_report_equals_truth(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """sync-now backfills; `report --format json` equals the simulator's truth per (date, model)."""
        connect(env)
        result = invoke(env, "sync-now")
        assert result.exit_code == 0, result.output
        since, until = TODAY - timedelta(days=29), TODAY
        rows = json.loads(invoke(env, "report", "--since", str(since), "--until", str(until), "--format",
                                 "json").stdout)
        assert rows, "report is empty"
        keys = {"date", "model", "cost_usd", "input_tokens", "output_tokens", "cache_read_tokens",
                "cache_write_tokens"}
        assert all(set(row) == keys and isinstance(row["cost_usd"], str) for row in rows)
        got = {(datetime.fromisoformat(r["date"]).date(), r["model"]): (
            Decimal(r["cost_usd"]), r["input_tokens"], r["output_tokens"], r["cache_read_tokens"],
            r["cache_write_tokens"]) for r in rows}
        truth = Truth(sim, since, until + timedelta(days=1))
        assert got == truth.report_rows()
        assert any(r["model"] is None for r in rows)  # web search / code execution fees
        total = sum(Decimal(r["cost_usd"]) for r in rows)
        assert total == truth.cost()
        # until is inclusive, and a single day works
        one = json.loads(invoke(env, "report", "--since", str(until), "--until", str(until), "--format",
                                "json").stdout)
        assert {r["date"] for r in one} <= {str(until)}
        # csv and table carry the same numbers
        out = invoke(env, "report", "--since", str(since), "--until", str(until), "--format", "csv").stdout
        parsed = list(csv.DictReader(io.StringIO(out)))
        assert [Decimal(r["cost_usd"]) for r in parsed] == [Decimal(r["cost_usd"]) for r in rows]
        table = invoke(env, "report", "--since", str(since), "--until", str(until)).stdout
        label, shown = table.splitlines()[-1].split()[:2]
        assert label == "total" and Decimal(shown) == total

    def test_sync_now_fails_with_exit_1(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A blocked integration makes sync-now exit 1 and shows the reason."""
        iid = connect(env)
        sim.add_fault("revoke:org=0")
        result = invoke(env, "sync-now", "--integration", str(iid))
        assert result.exit_code == 1 and "FAILED" in result.output
        item = json.loads(invoke(env, "integrations", "list", "--format", "json").stdout)[0]
        assert item["status"] == "error" and item["last_error"]

    @pytest.mark.parametrize("args", [
        ["report", "--since", "2026-01-05", "--until", "2026-01-01"],
        ["report", "--since", "yesterday", "--until", "2026-01-01"],
        ["report", "--since", "2026-01-01"],
        ["sync-now", "--integration", "99"],
        ["integrations", "remove", "99"],
        ["report", "--since", "2026-01-01", "--until", "2026-01-02", "--format", "xml"],
    ])
    def test_bad_usage_exits_2(self, env: dict[str, str], sim: SimulatorHandle, args: list[str]) -> None:
        """Bad dates, unknown ids and unknown formats are usage errors."""
        connect(env)
        assert invoke(env, *args).exit_code == 2

    def test_remove_deletes_integration_and_rows(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """integrations remove drops the integration and its data."""
        iid = connect(env)
        invoke(env, "sync-now")
        assert invoke(env, "integrations", "remove", str(iid)).exit_code == 0
        assert json.loads(invoke(env, "integrations", "list", "--format", "json").stdout) == []
        rows = json.loads(invoke(env, "report", "--since", str(TODAY - timedelta(days=40)), "--until", str(TODAY),
                                 "--format", "json").stdout)
        assert rows == []


class TestKeys:
    def test_rotation_reencrypts_and_old_key_no_longer_needed(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """keys rotate re-seals under the new master key while the old one still decrypts; then the old one can go."""
        connect(env)
        old = env["COST_WORKER_MASTER_KEY"]
        new = MasterKey.generate().to_text()
        without_old = {**env, "COST_WORKER_MASTER_KEY": new}
        failed = invoke(without_old, "sync-now")
        assert failed.exit_code == 1 and "integration 1" in failed.output
        with_old = {**without_old, "COST_WORKER_PREVIOUS_MASTER_KEYS": old}
        rotated = invoke(with_old, "keys", "rotate")
        assert rotated.exit_code == 0 and "1 re-encrypted" in rotated.output
        again = invoke(with_old, "keys", "rotate")
        assert "0 re-encrypted, 1 already current" in again.output  # resumable: nothing left to do
        assert invoke(without_old, "sync-now").exit_code == 0

    def test_tampered_ciphertext_names_the_integration(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A modified ciphertext fails decryption with a clear error; nothing is sent to the API."""
        iid = connect(env)
        engine = make_engine(env["COST_WORKER_DATABASE_URL"])
        with engine.begin() as conn:
            blob = conn.execute(integrations.select()).one().key_ciphertext
            flipped = blob[:-1] + bytes([blob[-1] ^ 1])
            conn.execute(update(integrations).where(integrations.c.id == iid).values(key_ciphertext=flipped))
        engine.dispose()
        sent = len(sim.requests)
        result = invoke(env, "sync-now")
        assert result.exit_code == 1 and f"integration {iid}" in result.output
        assert len(sim.requests) == sent

    def test_generate_writes_a_private_file(self, env: dict[str, str], tmp_path: Path) -> None:
        """keys generate writes a 0600 key file and refuses to overwrite it."""
        out = tmp_path / "new.key"
        assert invoke(env, "keys", "generate", "--out", str(out)).exit_code == 0
        assert out.stat().st_mode & 0o777 == 0o600
        assert invoke(env, "keys", "generate", "--out", str(out)).exit_code != 0

    def test_default_master_key_file_is_generated_with_warning(self, env: dict[str, str], sim: SimulatorHandle,
                                                               tmp_path: Path) -> None:
        """With no master key configured, one is generated in the data directory with a loud warning."""
        bare = {k: v for k, v in env.items() if k != "COST_WORKER_MASTER_KEY"}
        result = invoke(bare, "connect")
        assert result.exit_code == 0, result.output
        assert "PRODUCTION MUST SUPPLY ITS OWN" in result.output
        assert (tmp_path / "data" / "master.key").stat().st_mode & 0o777 == 0o600


class TestSettings:
    def test_config_file_and_env_precedence(self, env: dict[str, str], tmp_path: Path, sim: SimulatorHandle) -> None:
        """Values come from the TOML file; the environment wins over it."""
        cfg = tmp_path / "cw.toml"
        cfg.write_text('api_base_url = "https://elsewhere.test"\nresync_days = 5\n')
        result = invoke(env, "--config", str(cfg), "test-connection")
        assert result.exit_code == 0  # COST_WORKER_API_BASE_URL (env) beat the file's base URL
        no_env = {k: v for k, v in env.items() if k != "COST_WORKER_API_BASE_URL"}
        result = invoke(no_env, "--config", str(cfg), "test-connection")
        assert result.exit_code == 1  # the file's base URL is not mocked: connection fails, one line

    @pytest.mark.parametrize(("content", "expected"), [
        ("resync_days = 0\n", "resync_days"),
        ("requests_per_minute = 'fast'\n", "requests_per_minute"),
        ("daily_sync_time = '25:00'\n", "daily_sync_time"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("database_url = 'mysql://x'\n", "database_url"),
        ("this is not toml", "config file"),
    ])
    def test_invalid_setting_is_one_line_naming_it(self, env: dict[str, str], tmp_path: Path, content: str,
                                                   expected: str) -> None:
        """A malformed config fails at start with one line that names the setting, exit 2."""
        cfg = tmp_path / "bad.toml"
        cfg.write_text(content)
        clean = {k: env[k] for k in ("COST_WORKER_DATA_DIR", "COST_WORKER_MASTER_KEY")}
        result = invoke(clean, "--config", str(cfg), "integrations", "list")
        assert result.exit_code == 2
        (line,) = result.output.strip().splitlines()
        assert expected in line and line.startswith("error:")

    def test_env_setting_error_names_the_variable(self, env: dict[str, str]) -> None:
        """An invalid environment value names the COST_WORKER_ variable."""
        result = invoke({**env, "COST_WORKER_BURST": "0"}, "integrations", "list")
        assert result.exit_code == 2 and "COST_WORKER_BURST" in result.output

    def test_bad_master_key_is_one_line(self, env: dict[str, str], sim: SimulatorHandle) -> None:
        """A master key that is not 32 urlsafe-base64 bytes is refused without echoing it."""
        result = invoke({**env, "COST_WORKER_MASTER_KEY": "short-not-a-key"}, "connect")
        assert result.exit_code == 2 and "COST_WORKER_MASTER_KEY" in result.output
        assert "short-not-a-key" not in result.output


def test_db_upgrade_reports_revision(env: dict[str, str]) -> None:
    """db upgrade migrates and names the revision."""
    from worker.storage.db import head_revision

    result = invoke(env, "db", "upgrade")
    assert result.exit_code == 0 and f"at revision {head_revision()}" in result.output


def test_help_lists_every_command() -> None:
    """--help shows the whole command set."""
    out = CliRunner().invoke(cli, ["--help"]).output
    for name in ("test-connection", "connect", "integrations", "sync-now", "run", "report", "db", "keys"):
        assert name in out


def _unused(*_: Any) -> None:
    pass


class TestHelp:
    def test_lazy_commands_listed_with_their_own_help(self) -> None:
        """--help lists the lazily imported commands by the help written in LazyGroup, which must be the
        commands' own first line, and each name resolves to its command."""
        from worker.cli import LazyGroup

        for name, (_module, _attr, text) in LazyGroup.lazy.items():
            command = cli.get_command(click.Context(cli), name)
            assert command is not None and command.name == name
            assert text == (command.help or "").split("\n\n")[0].strip(), name
        listed = CliRunner().invoke(cli, ["--help"]).stdout
        assert all(f"  {name}  " in listed for name in LazyGroup.lazy)

