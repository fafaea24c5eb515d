"""A hostile Admin API: a proxy in front of a `cost-worker simulate` process that spoils chosen answers.

Run as its own process (`python -m tests.e2e.hostile --upstream URL`; `HostileProxy` in the tests): it
prints `listening on URL` and forwards every request to the simulator unchanged until told otherwise with
`POST /_hostile {"mode": ..., "path": ..., ...}` (`DELETE /_hostile` turns it off). Requests whose path
contains `path` then get, per mode:

    slow     200 with `content-length: length` (default 100000), then one byte every `interval` seconds
    huge     200 with `size` bytes of JSON-looking filler, chunked (no content-length) unless `declare`
    field    the simulator's answer with the first result's `field` replaced by the raw JSON text `raw`
             (spliced in as text, so `1.5e999999999` stays a JSON number no parser ever saw)

`GET /_hostile` reports what was served: requests per mode and the body bytes written.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx

from .procs import ROOT, clean_env

_SENTINEL = "__hostile_value__"
_FORWARDED = ("x-api-key", "anthropic-version", "user-agent", "accept", "authorization")


class _State:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.mode: dict[str, Any] | None = None
        self.served: dict[str, int] = {}
        self.body_bytes = 0

    def hit(self, name: str) -> None:
        with self.lock:
            self.served[name] = self.served.get(name, 0) + 1

    def sent(self, count: int) -> None:
        with self.lock:
            self.body_bytes += count


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            with state.lock:
                state.mode = json.loads(self.rfile.read(length))
            self._json(200, {"ok": True})

        def do_DELETE(self) -> None:
            with state.lock:
                state.mode = None
            self._json(200, {"ok": True})

        def do_GET(self) -> None:
            if self.path.startswith("/_hostile"):
                with state.lock:
                    self._json(200, {"served": dict(state.served), "body_bytes": state.body_bytes})
                return
            with state.lock:
                mode = dict(state.mode) if state.mode else None
            if mode is None or mode.get("path", "") not in self.path:
                self._forward(None)
            elif mode["mode"] == "slow":
                self._slow(int(mode.get("length", 100000)), float(mode.get("interval", 1.0)))
            elif mode["mode"] == "huge":
                self._huge(int(mode["size"]), bool(mode.get("declare", False)))
            elif mode["mode"] == "field":
                self._forward(mode)
            else:
                self._json(500, {"error": f"unknown mode {mode['mode']}"})

        def _forward(self, mode: dict[str, Any] | None) -> None:
            up = state.upstream
            conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
            try:
                conn.request("GET", self.path, headers={k: v for k, v in self.headers.items()
                                                        if k.lower() in _FORWARDED})
                answer = conn.getresponse()
                status, body = answer.status, answer.read()
                request_id = answer.getheader("request-id")
                retry_after = answer.getheader("retry-after")
            finally:
                conn.close()
            if mode is not None and status == 200:
                body = _spoil(body, mode["field"], mode["raw"])
                state.hit("field")
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if request_id:
                self.send_header("request-id", request_id)
            if retry_after:
                self.send_header("retry-after", retry_after)
            self.end_headers()
            self.wfile.write(body)

        def _slow(self, length: int, interval: float) -> None:
            state.hit("slow")
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(length))
            self.send_header("request-id", "req_hostile_slow")
            self.end_headers()
            try:
                for _ in range(length):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    state.sent(1)
                    time.sleep(interval)
            except OSError:
                pass  # the client gave up: what the test wants
            self.close_connection = True

        def _huge(self, size: int, declare: bool) -> None:
            state.hit("huge")
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("request-id", "req_hostile_huge")
            if declare:
                self.send_header("content-length", str(size))
            else:
                self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = b'{"data": [], "filler": "' + b"x" * (64 * 1024 - 25)
            sent = 0
            try:
                while sent < size:
                    part = chunk[: size - sent]
                    self.wfile.write(part if declare else b"%x\r\n%s\r\n" % (len(part), part))
                    sent += len(part)
                    state.sent(len(part))
                if not declare:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            self.close_connection = True

    return Handler


def _spoil(body: bytes, field: str, raw: str) -> bytes:
    """The first result of the first bucket that has one, with `field` (dotted for nested) set to `raw`."""
    doc = json.loads(body)
    for bucket in doc.get("data", []):
        if bucket.get("results"):
            target = bucket["results"][0]
            *parents, leaf = field.split(".")
            for name in parents:
                target = target.setdefault(name, {})
            target[leaf] = _SENTINEL
            break
    return json.dumps(doc).replace(f'"{_SENTINEL}"', raw).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(_State(args.upstream)))
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


class HostileProxy:
    """The proxy as a process in front of `upstream` (a simulator's base URL)."""

    def __init__(self, upstream: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.hostile", "--upstream", upstream],
                                     stdout=subprocess.PIPE, text=True, env=clean_env(), cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"hostile proxy did not start: {line!r}")
        self.base_url = line.split()[-1]
        self.http = httpx.Client(base_url=self.base_url, timeout=30)

    def spoil(self, mode: str, path: str, **options: object) -> None:
        self.http.post("/_hostile", json={"mode": mode, "path": path, **options}).raise_for_status()

    def served(self) -> dict[str, Any]:
        """{"served": {mode: requests}, "body_bytes": bytes written into spoiled bodies}."""
        report: dict[str, Any] = self.http.get("/_hostile").json()
        return report

    def __enter__(self) -> HostileProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()
        self.proc.terminate()
        self.proc.wait(10)
        if self.proc.stdout:
            self.proc.stdout.close()


if __name__ == "__main__":
    main()
