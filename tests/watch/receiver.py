"""A local webhook receiver for the notification tests: an HTTP server on 127.0.0.1, port 0, in a thread."""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers the scripted statuses in order, then 200."""

    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    token: str = field(default_factory=lambda: "T0KEN" + secrets.token_hex(12))

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_: Any) -> None:  # keep the test output clean
                pass

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # shutdown() waits for serve_forever's next poll: the default 0.5 s would be most of a test's time
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.01,), name="webhook-receiver",
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The webhook URL; its path carries a secret token, like a Slack webhook's."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{self.token}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
