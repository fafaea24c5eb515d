"""Reading an events file (issue 10, item 8): a broken first line never takes the file with it, gzip is
read transparently, and a line longer than the bound is one bad row in bounded memory."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import zlib
from datetime import date
from pathlib import Path

import pytest
from billgen import Call, days, generate_calls
from click.testing import CliRunner, Result
from seed import Record, write
from sqlalchemy import Engine

from worker.cli import cli
from worker.reconcile import BadRecord, TrackedEvent
from worker.reconcile.formats import read_events
from worker.reconcile.formats._common import BrokenLine
from worker.reconcile.formats.source import MAX_LINE_BYTES, bounded_lines, open_source
from worker.reconcile.store import count_events
from worker.vault import MasterKey

SONNET = "claude-sonnet-4-6"
JSON_FORMATS = ["jsonl", "anthropic", "fluxgate", "marginfront"]


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return generate_calls(days(date(2026, 3, 1), 11), [SONNET], per_day=91)[:1001]  # 1,001 calls


@pytest.fixture
def env(db_url: str, tmp_path: Path, master_key: MasterKey) -> dict[str, str]:
    return {"COST_WORKER_DATABASE_URL": db_url, "COST_WORKER_MASTER_KEY": master_key.to_text(),
            "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_LOG_FORMAT": "json"}


def invoke(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Result:
    result = CliRunner().invoke(cli, list(args), env=env, input=stdin, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def truncated_first_line(calls: list[Call], fmt: str) -> bytes:
    """The first line cut in the middle (a log rotated mid-write), then 1,000 whole lines."""
    lines = write([Record.of(c) for c in calls], fmt).splitlines(keepends=True)
    return (lines[0][: len(lines[0]) // 2] + "\n" + "".join(lines[1:])).encode()


def items(data: bytes | list[bytes], fmt: str = "auto") -> tuple[str, list[TrackedEvent], list[BadRecord]]:
    detected, parsed = read_events(io.BytesIO(data) if isinstance(data, bytes) else data, fmt)
    found = list(parsed)
    return (detected, [i for i in found if isinstance(i, TrackedEvent)], [i for i in found if isinstance(i, BadRecord)])


class TestBrokenFirstLine:
    @pytest.mark.parametrize("fmt", JSON_FORMATS)
    @pytest.mark.parametrize("given", ["auto", "named"])
    def test_the_other_1000_lines_are_imported(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                               tmp_path: Path, fmt: str, given: str) -> None:
        """A truncated first line then 1,000 valid lines: the 1,000 are imported and line 1 is the one bad row
        (it was read as one pretty-printed document: `read 1 imported 0 bad 1`)."""
        path = tmp_path / f"events.{fmt}"
        path.write_bytes(truncated_first_line(calls, fmt))
        result = invoke(env, "events", "import", *(["--format", fmt] if given == "named" else []), "--source", "s",
                        str(path))
        assert result.exit_code == 0, result.output
        assert f"format {fmt}, source s" in result.stdout
        assert "read 1001  imported 1000  duplicates 0  bad 1" in result.stdout
        assert "bad line 1: invalid JSON" in result.stdout
        with engine.connect() as conn:
            assert count_events(conn, "s") == 1000

    @pytest.mark.parametrize("head", ['{"timestamp": "2026-03-01T00:07:00+00:00", "model": [', "{", "["])
    def test_first_line_cut_at_a_bracket(self, calls: list[Call], head: str) -> None:
        """Even cut right after an opening bracket (where a pretty-printer breaks a line), JSON lines follow and
        are read: only line 1 is bad."""
        rest = write([Record.of(c) for c in calls[1:21]], "jsonl").encode()
        fmt, events, bad = items(head.encode() + b"\n" + rest)
        assert fmt == "jsonl" and len(events) == 20 and [b.line for b in bad] == [1]

    def test_two_broken_lines_then_json_lines(self, calls: list[Call]) -> None:
        """Two truncated lines in a row (so the second does not prove JSON lines): still only those two are bad."""
        lines = truncated_first_line(calls[:30], "jsonl").splitlines(keepends=True)
        data = lines[0] + lines[1][:20] + b"\n" + b"".join(lines[2:])
        _, events, bad = items(data, "jsonl")
        assert len(events) == 28 and [b.line for b in bad] == [1, 2]

    def test_pretty_printed_documents_are_still_read_whole(self) -> None:
        """A pretty-printed array or `{"records": [...]}` is one document, whichever line it breaks at."""
        records = [{"timestamp": "2026-03-02T00:00:00Z", "model": SONNET, "input_tokens": i, "cache_read_tokens": 1,
                    "event_id": f"id{i}"} for i in range(3)]
        for text in (json.dumps(records, indent=2), "[\n" + ",\n".join(map(json.dumps, records)) + "\n]",
                     "[" + ",\n".join(map(json.dumps, records)) + "]", "[\n" + json.dumps(records[0]) + "\n]"):
            fmt, events, bad = items(text.encode())
            assert (fmt, len(events), bad) == ("jsonl", len(events), []) and len(events) in (1, 3), text
        mf = {"records": [{"customerExternalId": "c", "agentCode": "a", "signalName": "s", "model": SONNET,
                           "inputTokens": 1, "usageDate": "2026-03-02T00:00:00Z", "idempotencyKey": f"k{i}"}
                          for i in range(4)]}
        fmt, events, bad = items(json.dumps(mf, indent=1).encode())
        assert (fmt, len(events), bad) == ("marginfront", 4, [])

    def test_a_broken_document_is_one_bad_row(self) -> None:
        """A pretty-printed document cut short (no line a record of its own) stays one bad row, at its error."""
        text = json.dumps([{"timestamp": "2026-03-02T00:00:00Z", "model": SONNET, "input_tokens": 1,
                            "cache_read_tokens": 1}], indent=2)[:-4]
        _, events, bad = items(text.encode(), "jsonl")
        assert events == [] and len(bad) == 1 and "invalid JSON" in bad[0].reason


class TestGzip:
    @pytest.mark.parametrize("name", ["events.jsonl.gz", "events.jsonl", "events.csv.gz"])
    def test_gzip_is_read_by_its_magic_bytes(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                             tmp_path: Path, name: str) -> None:
        """A gzip file (several members, as `cat a.gz b.gz` makes), named .gz or not, imports like the plain file."""
        fmt = "csv" if ".csv" in name else "jsonl"
        text = write([Record.of(c) for c in calls], fmt).encode()
        half = text.index(b"\n", len(text) // 2) + 1
        (tmp_path / name).write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
        result = invoke(env, "events", "import", "--source", "z", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert f"format {fmt}, source z" in result.stdout and "read 1001  imported 1001  duplicates 0  bad 0" in result.stdout
        with engine.connect() as conn:
            assert count_events(conn, "z") == 1001

    def test_gzip_on_stdin(self, env: dict[str, str], engine: Engine, calls: list[Call]) -> None:
        """`zcat`-free: a gzip stream piped to `events import -` is decompressed too."""
        data = gzip.compress(write([Record.of(c) for c in calls[:50]], "anthropic").encode())
        result = invoke(env, "events", "import", "-", "--source", "piped", stdin=data)
        assert result.exit_code == 0, result.output
        assert "<stdin>: format anthropic, source piped" in result.stdout and "imported 50 " in result.stdout

    def test_truncated_gzip_keeps_what_was_readable(self, env: dict[str, str], engine: Engine, calls: list[Call],
                                                    tmp_path: Path) -> None:
        """A download cut short: every line before the cut is imported, the cut is one bad row saying why."""
        text = write([Record.of(c) for c in calls], "jsonl").encode()
        cut = gzip.compress(text)[: len(gzip.compress(text)) * 2 // 3]
        (tmp_path / "cut.jsonl.gz").write_bytes(cut)
        readable = zlib.decompressobj(31).decompress(cut)  # what the bytes before the cut hold
        whole = readable.count(b"\n")
        assert 300 < whole < 1001 and not readable.endswith(b"\n")
        result = invoke(env, "events", "import", "--source", "cut", str(tmp_path / "cut.jsonl.gz"))
        assert result.exit_code == 0, result.output
        assert f"read {whole + 1}  imported {whole}  duplicates 0  bad 1" in result.stdout
        assert f"bad line {whole + 1}: the compressed data cannot be read from here on" in result.stdout
        with engine.connect() as conn:
            assert count_events(conn, "cut") == whole  # every whole line before the cut

    def test_corrupt_block(self) -> None:
        """Corrupted compressed bytes end the lines with one BrokenLine, never an exception."""
        packed = bytearray(gzip.compress(b"".join(b'{"n": %d}\n' % i for i in range(20000))))
        packed[len(packed) // 2] ^= 0xFF
        lines = list(bounded_lines(gzip.GzipFile(fileobj=io.BytesIO(bytes(packed)))))
        assert type(lines[-1]) is BrokenLine and "cannot be read" in lines[-1].reason
        assert all(type(line) is bytes for line in lines[:-1])


class TestLineBound:
    def test_a_long_line_is_one_broken_line(self) -> None:
        """Lines up to the bound pass as they are; a longer one is skipped in chunks and handed over as one
        BrokenLine; the lines after it follow."""
        data = b"a\n" + b"x" * 99 + b"\n" + b"y" * 101 + b"\n" + b"z" * 5000 + b"\nlast"
        lines = list(bounded_lines(io.BufferedReader(io.BytesIO(data)), max_line=100))
        assert lines[:2] == [b"a\n", b"x" * 99 + b"\n"] and lines[-1] == b"last"
        assert [type(line) for line in lines] == [bytes, bytes, BrokenLine, BrokenLine, bytes]
        long_line, longer_line = lines[2], lines[3]
        assert isinstance(long_line, BrokenLine) and isinstance(longer_line, BrokenLine)
        assert "line longer than 100 bytes (102 bytes)" in long_line.reason
        assert "(5,001 bytes)" in longer_line.reason

    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_a_long_line_is_one_bad_row_with_its_number(self, fmt: str) -> None:
        """Every parser reports the BrokenLine as one bad row at its line number, and reads on."""
        good = write([Record.of(c) for c in generate_calls([date(2026, 3, 2)], [SONNET], per_day=3)], fmt)
        first, *rest = good.splitlines(keepends=True)
        lines = [first.encode(), BrokenLine("line longer than 64 bytes"), *(r.encode() for r in rest)]
        _, events, bad = items(lines, fmt)
        assert len(events) == 3 and [(b.line, b.reason) for b in bad] == [(2, "line longer than 64 bytes")]

    @pytest.mark.slow
    def test_a_one_gigabyte_line_imports_the_rest_in_bounded_memory(self, tmp_path: Path) -> None:
        """A real `events import` of a 1 GiB line (gzip, so the test file stays small) between valid lines: one
        bad row, the other lines stored, and no process of it grows anywhere near the line's size."""
        chunk = zlib.compressobj(9, zlib.DEFLATED, 31)  # one gzip member of 1 MiB of "x", repeated 1,024 times
        member = chunk.compress(b"x" * 2**20) + chunk.flush()
        good = [json.dumps({"timestamp": "2026-03-02T00:00:00Z", "model": SONNET, "input_tokens": i,
                            "cache_read_tokens": 1, "event_id": f"e{i}"}) for i in range(3)]
        path = tmp_path / "huge.jsonl.gz"
        with path.open("wb") as out:
            out.write(gzip.compress((good[0] + "\n").encode()))
            for _ in range(1024):
                out.write(member)
            out.write(gzip.compress(("\n" + good[1] + "\n" + good[2] + "\n").encode()))
        assert path.stat().st_size < 4 * 2**20
        env = {**os.environ, "COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_LOG_FORMAT": "json",
               "COST_WORKER_MASTER_KEY": MasterKey.generate().to_text()}
        # maxrss of the children of a fresh interpreter: the import and its forked parsing process only
        probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
                 "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                 "print(r.stdout); print(r.stderr, file=sys.stderr)")
        done = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "worker", "events", "import",
                               str(path)], env=env, capture_output=True, text=True, timeout=600, check=False)
        code, peak_kib = map(int, done.stdout.splitlines()[0].split())
        assert code == 0, done.stdout + done.stderr
        assert "read 4  imported 3  duplicates 0  bad 1" in done.stdout, done.stdout
        assert f"bad line 2: line longer than {MAX_LINE_BYTES:,} bytes (1,073,741,825 bytes)" in done.stdout
        assert peak_kib * 1024 < 2**30 // 3, f"peak RSS {peak_kib} KiB"  # the line alone would be 1 GiB


def test_open_source_refuses_a_directory(tmp_path: Path) -> None:
    """A directory is an OSError before anything is read (the command reports it and exits 2)."""
    with pytest.raises(IsADirectoryError), open_source(str(tmp_path)):
        pass
