"""What every command checks at its start, as real processes: exit codes as promised (0 ok, 1 failed,
2 bad usage or input), one line naming the setting, a wrong base URL answered in seconds, warnings about
quiet risks, and files created private."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from worker.vault import MasterKey

from .procs import WORKER, Worker

pytestmark = pytest.mark.slow

KEY = "sk-ant-admin01-StartupChecksTestKey_0123456789abcdefghijklmnopqrstuvwxyz-AbCd"
REPORT = ("report", "--since", "2026-01-01", "--until", "2026-01-02")


def _run(env: dict[str, str], *args: str, cwd: Path, key: str | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A command under the usual umask (022: what would make files world-readable by default)."""
    full = dict(env, **({"ANTHROPIC_ADMIN_KEY": key} if key else {}))
    return subprocess.run([*WORKER, *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, preexec_fn=lambda: os.umask(0o022), check=False)


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command's one `error:` line (and no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    return line


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    """Settings of a worker whose API is never reached (nothing here needs an answer)."""
    return Worker(tmp_path, "https://api.anthropic.com", requests_per_minute=1)


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in {f"COST_WORKER_{n}" for n in names}}


class TestUnreachableBaseUrl:
    def test_fails_in_seconds_naming_the_url(self, tmp_path: Path) -> None:
        """`test-connection` and `connect` against a port nobody listens on fail at once with one line
        naming the URL (no minutes of backoff, no message blaming the request budget), back to back."""
        worker = Worker(tmp_path, "http://127.0.0.1:1", requests_per_minute=1)
        for command in ("test-connection", "connect", "test-connection"):
            result = worker.run(command, key=KEY, check=False, timeout=60)  # main retried for 166 s
            assert result.returncode == 1, result.stderr[-2000:]
            line = _error_line(result)
            assert "http://127.0.0.1:1" in line and "COST_WORKER_API_BASE_URL" in line, line
            assert "waiting" not in result.stderr, result.stderr[-2000:]
        assert worker.integrations() == []


class TestExitCodes:
    @pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
    def test_unusable_data_dir_is_a_setting_error(self, worker: Worker, tmp_path: Path, where: str) -> None:
        """A data directory that cannot be created: exit 2, one line naming COST_WORKER_DATA_DIR."""
        (tmp_path / "afile").write_text("")
        data_dir = tmp_path / "afile" / "sub" if where == "under-a-file" else Path("/proc/cost-worker-test")
        env = dict(_without(worker.env, "DATABASE_URL", "MASTER_KEY"), COST_WORKER_DATA_DIR=str(data_dir))
        for args in (("integrations", "list"), REPORT, ("db", "upgrade")):
            result = _run(env, *args, cwd=tmp_path)
            assert result.returncode == 2, result.stderr[-2000:]
            line = _error_line(result)
            assert "COST_WORKER_DATA_DIR" in line and str(data_dir) in line and "internal error" not in line

    def test_keys_generate_never_overwrites_nor_creates_directories(self, worker: Worker, tmp_path: Path) -> None:
        """`keys generate --out` onto an existing file, or into a missing directory: exit 2, nothing written."""
        existing = tmp_path / "existing.key"
        existing.write_text("keep me\n")
        result = _run(worker.env, "keys", "generate", "--out", str(existing), cwd=tmp_path)
        assert result.returncode == 2 and "already exists" in _error_line(result)
        assert existing.read_text() == "keep me\n"
        missing = tmp_path / "missing-dir" / "x.key"
        result = _run(worker.env, "keys", "generate", "--out", str(missing), cwd=tmp_path)
        assert result.returncode == 2 and "does not exist" in _error_line(result)
        assert not missing.parent.exists()
        fresh = tmp_path / "fresh.key"
        assert _run(worker.env, "keys", "generate", "--out", str(fresh), cwd=tmp_path).returncode == 0
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600

    @pytest.mark.parametrize(("setting", "value", "words"), [
        ("MASTER_KEY", "not-a-master-key", "COST_WORKER_MASTER_KEY"),
        ("MASTER_KEY_FILE", "/nonexistent/master.key", "/nonexistent/master.key"),
        ("PREVIOUS_MASTER_KEYS", "short", "COST_WORKER_PREVIOUS_MASTER_KEYS"),
    ])  # fmt: skip
    def test_every_command_checks_the_master_keys(self, worker: Worker, tmp_path: Path, setting: str,
                                                  value: str, words: str) -> None:
        """Even `report`, which never decrypts, refuses an invalid master key setting at start: exit 2."""
        env = dict(_without(worker.env, "MASTER_KEY"), **{f"COST_WORKER_{setting}": value})
        if setting == "PREVIOUS_MASTER_KEYS":
            env["COST_WORKER_MASTER_KEY"] = worker.env["COST_WORKER_MASTER_KEY"]
        for args in (REPORT, ("integrations", "list")):
            result = _run(env, *args, cwd=tmp_path)
            assert result.returncode == 2, result.stderr[-2000:]
            line = _error_line(result)
            assert words in line and value not in line.replace(words, "")

    def test_run_checks_its_port_before_writing_a_master_key(self, worker: Worker, tmp_path: Path) -> None:
        """`run` with its port taken exits 2 and leaves no generated master key behind."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            env = dict(_without(worker.env, "MASTER_KEY"), COST_WORKER_HTTP_PORT=str(port),
                       COST_WORKER_HTTP_HOST="127.0.0.1")
            result = _run(env, "run", cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert f"port {port}" in _error_line(result)
        assert not (tmp_path / "data" / "master.key").exists()
        assert "PRODUCTION MUST SUPPLY" not in result.stderr


class TestQuietRisks:
    @pytest.mark.parametrize(("url", "warned"), [
        ("http://api.example.com", True), ("http://10.0.0.7:8765", True), ("https://api.anthropic.com", False),
        ("http://127.0.0.1:8765", False), ("http://localhost:8765", False), ("http://[::1]:8765", False),
    ])  # fmt: skip
    def test_plain_http_to_another_host_is_warned(self, worker: Worker, tmp_path: Path, url: str,
                                                  warned: bool) -> None:
        """A plain-http base URL off this machine warns that the key would cross the network unencrypted."""
        result = _run(dict(worker.env, COST_WORKER_API_BASE_URL=url), *REPORT, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert ("unencrypted" in result.stderr) is warned, result.stderr[-2000:]

    @pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o600, False), (0o400, False)])
    def test_master_key_file_readable_by_others_is_warned(self, worker: Worker, tmp_path: Path, mode: int,
                                                          warned: bool) -> None:
        """A master key file group or others can read is used, with a warning naming its mode."""
        path = tmp_path / "master.key"
        path.write_text(MasterKey.generate().to_text() + "\n")
        path.chmod(mode)
        env = dict(_without(worker.env, "MASTER_KEY"), COST_WORKER_MASTER_KEY_FILE=str(path))
        result = _run(env, *REPORT, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert (f"mode {mode:04o}" in result.stderr) is warned, result.stderr[-2000:]

    def test_data_dir_and_database_are_created_private(self, worker: Worker, tmp_path: Path) -> None:
        """With the defaults, the data directory is created 0700 and the database (and its WAL files)
        0600, under a umask that would make them 0755/0644."""
        data_dir = tmp_path / "fresh" / "cost-worker"
        env = dict(_without(worker.env, "DATABASE_URL", "MASTER_KEY"), COST_WORKER_DATA_DIR=str(data_dir))
        assert _run(env, "integrations", "list", cwd=tmp_path).returncode == 0
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        files = list(data_dir.iterdir())
        assert data_dir / "cost-worker.db" in files
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert _run(env, "keys", "rotate", cwd=tmp_path).returncode == 0  # generates the default master key
        assert stat.S_IMODE((data_dir / "master.key").stat().st_mode) == 0o600

