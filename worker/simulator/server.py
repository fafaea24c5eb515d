"""A small asyncio HTTP/1.1 server (keep-alive, one loop) in front of ``SimulatorApp``.

``serve`` runs it until an event is set (the CLI); ``running_simulator`` runs it in a background
thread for tests and benchmarks and hands back a ``SimulatorHandle``; ``in_process`` hands back one
with no server at all, for clients given its ``transport()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from worker.simulator.app import RecordedRequest, Response, SimulatorApp
from worker.simulator.data import Org, OrgShape, SimulatorData
from worker.simulator.errors import ApiError, new_request_id
from worker.simulator.faults import Fault, fault_from_mapping
from worker.simulator.transport import SimulatorTransport

_MAX_HEAD = 64 * 1024
_MAX_BODY = 1024 * 1024


def _reason(status: int) -> str:
    if status == 529:
        return "Overloaded"
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _DateHeader:
    """``Date`` header text, recomputed at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._text = ""

    def get(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second, self._text = now, formatdate(now, usegmt=True)
        return self._text


class SimulatorServer:
    """Serves one ``SimulatorApp`` over HTTP/1.1 with keep-alive on the running event loop."""

    def __init__(self, app: SimulatorApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._date = _DateHeader()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, limit=_MAX_HEAD, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def _head(self, response: Response, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {response.status} {_reason(response.status)}",
            "content-type: application/json",
            f"content-length: {len(response.body)}",
            f"date: {self._date.get()}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines.extend(f"{k}: {v}" for k, v in response.headers.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _plain_error(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        request_id = new_request_id()
        error = ApiError(status, message, error_type="invalid_request_error")
        response = Response(status, error.body(request_id), {"request-id": request_id})
        writer.write(self._head(response, keep_alive=False) + response.body)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels; ending quietly keeps asyncio's stream callback from logging it.
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        except asyncio.LimitOverrunError:
            self._plain_error(writer, 431, "request headers too large")
            await writer.drain()
            return False
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._plain_error(writer, 400, "malformed request line")
            await writer.drain()
            return False
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    self._plain_error(writer, 400, "malformed header line")
                    await writer.drain()
                    return False
                headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._plain_error(writer, 411, "chunked request bodies are not supported")
            await writer.drain()
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._plain_error(writer, 400, "bad content-length")
            await writer.drain()
            return False
        body = await reader.readexactly(length) if length else b""

        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        url = urlsplit(target)
        query = parse_qsl(url.query, keep_blank_values=True)
        response = self.app.handle(method, unquote(url.path), query, headers, body)
        if response.delay:
            await asyncio.sleep(response.delay)
        if response.cutoff is not None:
            sent = int(len(response.body) * response.cutoff)
            writer.write(self._head(response, keep_alive=True) + response.body[:sent])
            await writer.drain()
            return False
        writer.write(self._head(response, keep_alive) + response.body)
        await writer.drain()
        return keep_alive


def build_app(
    *,
    orgs: int = 1,
    seed: int = 0,
    today: date | None = None,
    requests_per_minute: float = 60.0,
    burst: float = 1.0,
    max_results: int | None = None,
    faults: Sequence[str | Fault] = (),
    clock: Callable[[], float] = time.monotonic,
    history_days: int = 730,
    traffic: str = "varied",
    record_requests: bool = False,
    hipaa_orgs: Sequence[int] = (),
    shapes: dict[int, OrgShape] | None = None,
    analytics_lag_minutes: int = 180,
) -> SimulatorApp:
    """A simulator's state: generated data, keys, rate limits, faults and stats.

    `hipaa_orgs` have HIPAA readiness (the Analytics API answers them 400); `shapes` fixes the size
    of some organizations; the Analytics API serves usage up to `analytics_lag_minutes` before now."""
    for index in hipaa_orgs:
        if not 0 <= index < orgs:
            raise ValueError(f"no org {index} (there are {orgs})")
    data = SimulatorData(seed, orgs, today, history_days=history_days, traffic=traffic, shapes=shapes,
                         analytics_lag_minutes=analytics_lag_minutes)
    return SimulatorApp(
        data,
        requests_per_minute=requests_per_minute,
        burst=burst,
        max_results=max_results,
        faults=faults,
        clock=clock,
        record_requests=record_requests,
        hipaa_orgs=hipaa_orgs,
    )


async def serve(
    app: SimulatorApp,
    host: str,
    port: int,
    stop: asyncio.Event,
    on_ready: Callable[[SimulatorServer], None] = lambda _: None,
) -> None:
    """Serve until ``stop`` is set, calling ``on_ready`` once listening."""
    server = SimulatorServer(app, host, port)
    await server.start()
    try:
        on_ready(server)
        await stop.wait()
    finally:
        await server.close()


@dataclass
class SimulatorHandle:
    """A simulator: running in a background thread, or in-process (reached through ``transport()``)."""

    base_url: str
    app: SimulatorApp

    @property
    def data(self) -> SimulatorData:
        return self.app.data

    @property
    def orgs(self) -> tuple[Org, ...]:
        return self.app.data.orgs

    @property
    def keys(self) -> list[str]:
        """Admin keys, by org index (as they are now: see ``rotate_key``)."""
        return [self.app.admin_key(o.index) for o in self.app.data.orgs]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every ``/v1/`` request so far, in order (needs ``record_requests=True``)."""
        if self.app.requests is None:
            raise RuntimeError("this simulator does not record requests: build it with record_requests=True")
        return self.app.requests

    def transport(self) -> SimulatorTransport:
        """An httpx transport answering from this simulator, in-process."""
        return SimulatorTransport(self.app)

    def add_fault(self, spec: str | Fault, **options: Any) -> Fault:
        """Add a fault: a spec string (``"529:count=2"``), a Fault, or a kind and its options
        (``add_fault("403", message="no, not with this key")``: text with commas needs this form)."""
        if options:
            if not isinstance(spec, str):
                raise TypeError("options go with a fault kind, not a Fault")
            spec = fault_from_mapping(spec, options)
        return self.app.add_fault(spec)

    def rotate_key(self, org: int) -> str:
        """Give the org a new admin key (the old one answers 401 from now on); returns the new key."""
        self.app.add_fault(f"rotate-key:org={org}")
        return self.app.admin_key(org)

    def clear_faults(self) -> None:
        with self.app.lock:
            self.app.faults.clear()

    def revoke(self, org: int) -> None:
        self.app.add_fault(f"revoke:org={org}")

    def restate(self, org: int, day: date) -> None:
        self.app.add_fault(f"restate:org={org},day={day.isoformat()}")

    def spike(self, org: int, day: date, factor: float = 5.0) -> None:
        self.app.add_fault(f"spike:org={org},day={day.isoformat()},factor={factor}")

    def stats(self) -> dict[str, Any]:
        with self.app.lock:
            return self.app.stats.as_json()

    def reset_stats(self) -> None:
        self.app.reset_stats()

    def reset(self) -> None:
        self.app.reset()


def in_process(base_url: str = "https://api.anthropic.com", **options: Any) -> SimulatorHandle:
    """A simulator without a server; ``options`` are those of ``build_app``. Point clients at
    ``base_url`` with ``transport=handle.transport()`` (any host reaches it: only paths matter)."""
    return SimulatorHandle(base_url, build_app(**options))


@contextlib.contextmanager
def running_simulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    app: SimulatorApp | None = None,
    **options: Any,
) -> Iterator[SimulatorHandle]:
    """Run a simulator in a background thread; ``options`` are those of ``build_app``.

    Example: ``with running_simulator(orgs=2, seed=1, today=date(2026, 3, 10),
    requests_per_minute=0) as sim:`` then call ``sim.base_url`` with ``sim.keys[0]``.
    """
    the_app = app if app is not None else build_app(**options)
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["loop"], box["stop"] = asyncio.get_running_loop(), stop

        def on_ready(server: SimulatorServer) -> None:
            box["url"] = server.base_url
            ready.set()

        try:
            await serve(the_app, host, port, stop, on_ready)
        except BaseException as exc:  # reported to the caller's thread
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="sim-server", daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in box or "url" not in box:
        thread.join(5)
        raise RuntimeError(f"simulator failed to start: {box.get('error')!r}")
    try:
        yield SimulatorHandle(box["url"], the_app)
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)
