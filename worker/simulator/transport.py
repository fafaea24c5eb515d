"""The simulator in-process: an httpx transport (sync and async) answered by a ``SimulatorApp``.

No socket and no thread: a test hands ``SimulatorTransport(app)`` to an ``httpx`` client (or calls
``handle_request`` from a respx route) and gets the very answers the HTTP server would send. Faults
end the way a client sees them over a network: ``cutoff`` raises ``httpx.RemoteProtocolError`` (the
body stopped short), and a ``delay`` of at least the request's read timeout raises
``httpx.ReadTimeout`` at once, without waiting; a shorter delay is slept.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from worker.simulator.app import Response, SimulatorApp


class SimulatorTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Answers httpx requests from ``app``, whatever the URL's host (the path selects the endpoint)."""

    def __init__(self, app: SimulatorApp) -> None:
        self.app = app

    def _answer(self, request: httpx.Request, body: bytes) -> tuple[httpx.Response, float]:
        answer = self.app.handle(
            request.method,
            request.url.path,
            list(request.url.params.multi_items()),
            {name.lower(): value for name, value in request.headers.items()},
            body,
        )
        delay = answer.delay
        timeout = request.extensions.get("timeout", {}).get("read")
        if delay and timeout is not None and delay >= timeout:
            raise httpx.ReadTimeout(f"simulated: no answer within the read timeout ({timeout:g}s)",
                                    request=request)
        if answer.cutoff is not None:
            sent = int(len(answer.body) * answer.cutoff)
            raise httpx.RemoteProtocolError(
                f"peer closed connection without sending complete message body "
                f"(received {sent} bytes, expected {len(answer.body)})",
                request=request,
            )
        return _response(answer, request), delay

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response, delay = self._answer(request, request.read())
        if delay:
            time.sleep(delay)
        return response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response, delay = self._answer(request, await request.aread())
        if delay:
            await asyncio.sleep(delay)
        return response


def _response(answer: Response, request: httpx.Request) -> httpx.Response:
    headers = {"content-type": "application/json", **answer.headers}
    return httpx.Response(answer.status, headers=headers, content=answer.body, request=request)


__all__ = ["SimulatorTransport"]
