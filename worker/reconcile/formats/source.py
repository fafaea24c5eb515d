"""An events file as the lines the parsers read: gzip-compressed files opened transparently, every
line bounded.

`open_source(path)` (`-` is stdin) yields an iterator of raw lines (bytes, line ending included),
exactly what iterating the file would give, with two differences:

- **gzip** is recognized by its magic bytes (`1f 8b`), whatever the file is called, on stdin too,
  and decompressed as it is read (several concatenated members are one stream, as `gunzip` reads
  them). Compressed data that turns unreadable (a truncated download, a corrupted block) ends the
  file with one `BrokenLine`: everything before it is imported, and the import reports it as a bad
  record with the reason.
- **A line longer than `MAX_LINE_BYTES`** is not read into memory: it is skipped in chunks and
  handed over as one `BrokenLine`, which the parsers report as one bad record ("line longer than
  ..."). Memory stays bounded by the bound, however long the line (a file without newlines, say).

The reading runs where the parsing runs (the import's forked parsing process, see
`importer.parsed_in_child`), so decompression uses the second core too.
"""

from __future__ import annotations

import gzip
import sys
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Protocol

from worker.reconcile.formats._common import BrokenLine

__all__ = ["GZIP_MAGIC", "MAX_LINE_BYTES", "bounded_lines", "open_source"]

MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest line read (bytes, line ending included). Real events are far shorter: a Messages API
response with its content is well under a megabyte; a line as long as this holds an entire export
(a one-line `{"records": [...]}`), which is still read, up to this size."""

GZIP_MAGIC = b"\x1f\x8b"
_SKIP_CHUNK = 1024 * 1024
_BUFFER = 1024 * 1024
_UNREADABLE = (EOFError, zlib.error, gzip.BadGzipFile)


class _Lines(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


@contextmanager
def open_source(path: str, *, max_line: int = MAX_LINE_BYTES) -> Iterator[Iterator[bytes]]:
    """The lines of the file at `path` (`-`: stdin), decompressed when gzip, each at most `max_line` bytes.

    Raises OSError (a missing file, a directory, no permission) before anything is read.
    """
    with ExitStack() as stack:
        if path == "-":
            raw: IO[bytes] = sys.stdin.buffer
        else:
            if Path(path).is_dir():
                raise IsADirectoryError(21, "is a directory")
            raw = stack.enter_context(open(path, "rb", buffering=_BUFFER))  # closed by the stack
        gunzip = _gzip_reader(raw)
        if gunzip is not None:
            stack.enter_context(gunzip)
        yield bounded_lines(gunzip if gunzip is not None else raw, max_line)


def _gzip_reader(raw: IO[bytes]) -> gzip.GzipFile | None:
    """A decompressing reader over `raw` when it starts with the gzip magic bytes, else None.

    GzipFile itself, not a larger buffer in front of it (which would read twice as fast): its small
    reads hand over every whole line decompressed before a corruption, where a large read would lose
    up to a buffer's worth of them with the exception.
    """
    if _peek(raw, len(GZIP_MAGIC)) != GZIP_MAGIC:
        return None
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _peek(raw: IO[bytes], size: int) -> bytes:
    """The first `size` bytes of `raw`, left unread: peeked in a buffered stream (stdin, a pipe, a file),
    else read and sought back."""
    peek = getattr(raw, "peek", None)
    if peek is not None:
        return bytes(peek(size)[:size])
    if raw.seekable():
        start = raw.tell()
        head = raw.read(size)
        raw.seek(start)
        return head
    return b""


def bounded_lines(stream: _Lines, max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """`stream`'s lines, as iterating it would give them; a line over `max_line` bytes is one `BrokenLine`,
    and compressed data that cannot be read any further ends the lines with one."""
    readline = stream.readline
    limit = max_line + 1
    while True:
        try:
            line = readline(limit)
        except _UNREADABLE as exc:
            yield BrokenLine(_unreadable(exc))
            return
        if len(line) <= max_line:
            if not line:
                return
            yield line
            continue
        size = len(line)  # too long: skip the rest of it without keeping it
        while not line.endswith(b"\n"):
            try:
                line = readline(_SKIP_CHUNK)
            except _UNREADABLE as exc:
                yield BrokenLine(_unreadable(exc))
                return
            if not line:
                break
            size += len(line)
        yield BrokenLine(f"line longer than {max_line:,} bytes ({size:,} bytes): skipped")


def _unreadable(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    return f"the compressed data cannot be read from here on ({detail}); the lines before it were read"

