"""A sync's own transport (worker.sync.engine): the window ObservedTransport reads from the raw query, and
SocketBackend's asyncio streams over real sockets: TLS, errors mapped as httpcore's, and the client's deadline
and size cap still enforced on them."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.api.support import CountingGate
from worker.api import AdminApiClient, BodyTooLarge, RetriesExhausted
from worker.clock import FakeClock
from worker.logs import context
from worker.secret import AdminKey
from worker.sync.engine import ObservedTransport, SocketBackend, _query_value

KEY = AdminKey("sk-ant-admin01-TransportTestKey_0123456789abcdefghijklmnopqrstuvwxyz-AbCdEf")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.mark.parametrize("query", ["", "a=1", "starting_at=2026-11-28T00%3A00%3A00Z&ending_at=2026-12-01T00%3A00%3A00Z",
                                   "xstarting_at=1&starting_at=2", "starting_at&ending_at=",
                                   "starting_at=a+b%20c&starting_at=zz", "ending_at=%E2%82%AC2026-01"])
def test_window_is_read_as_the_parsed_params_read_it(query: str) -> None:
    url = httpx.URL("http://h/p" + (f"?{query}" if query else ""))
    for name in ("starting_at", "ending_at"):
        assert _query_value(url.query, name.encode()) == url.params.get(name, "")


def test_each_request_binds_its_endpoint_and_window() -> None:
    bound: list[dict[str, Any]] = []
    answers: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bound.append(context())
        return httpx.Response(200, headers={"request-id": "req_1"})

    async def main() -> None:
        transport = ObservedTransport(httpx.MockTransport(answer), lambda e, s: answers.append((e, s)))
        async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
            await client.get("/v1/organizations/usage_report/messages",
                             params={"starting_at": "2026-11-28T00:00:00Z", "ending_at": "2026-12-01T00:00:00Z"})
            assert context()["request_id"] == "req_1"

    asyncio.run(main())
    assert bound == [{"endpoint": "usage", "window": "2026-11-28..2026-12-01", "request_id": None}]
    assert answers == [("usage", "200")]


async def _serving(handler: Handler, body: Callable[[int], Awaitable[Any]], tls: ssl.SSLContext | None = None) -> Any:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    async with server:
        return await body(server.sockets[0].getsockname()[1])


def _answering(*answers: bytes, then: float = 0.0) -> Handler:
    """A server that answers each request with the next of `answers`, then waits `then` seconds."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answer in answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
                await writer.drain()
            await asyncio.sleep(then)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    return handler


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}"


def _pool(context: ssl.SSLContext | None = None) -> httpcore.AsyncConnectionPool:
    return httpcore.AsyncConnectionPool(ssl_context=context, network_backend=SocketBackend())


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, ssl.create_default_context(cafile=tmp_path / "cert.pem")


def test_tls_connection_is_verified_and_reused(tmp_path: Path) -> None:
    server_tls, client_tls = _self_signed(tmp_path)

    async def body(port: int) -> None:
        async with _pool(client_tls) as pool:
            for _ in range(3):
                response = await pool.request("GET", f"https://localhost:{port}/x")
                assert response.status == 200 and response.content == b"{}"
            assert len(pool.connections) == 1
            assert response.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.3"
        async with _pool(ssl.create_default_context()) as untrusting:
            with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.request("GET", f"https://localhost:{port}/x")

    asyncio.run(_serving(_answering(OK, OK, OK), body, server_tls))


def test_errors_are_httpcores() -> None:
    async def refused() -> None:
        server = await asyncio.start_server(_answering(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with _pool() as pool:
            with pytest.raises(httpcore.ConnectError):
                await pool.request("GET", f"http://127.0.0.1:{port}/")

    async def silent(port: int) -> None:
        async with _pool() as pool:
            with pytest.raises(httpcore.ReadTimeout):
                await pool.request("GET", f"http://127.0.0.1:{port}/", extensions={"timeout": {"read": 0.1}})

    async def cut(port: int) -> None:
        async with _pool() as pool:
            with pytest.raises(httpcore.RemoteProtocolError):  # the server closed the connection mid-answer
                await pool.request("GET", f"http://127.0.0.1:{port}/")

    asyncio.run(refused())
    asyncio.run(_serving(_answering(then=5), silent))
    asyncio.run(_serving(_answering(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"), cut))


def _client(port: int, **kw: Any) -> AdminApiClient:
    clock = FakeClock()
    return AdminApiClient(KEY, base_url=f"http://127.0.0.1:{port}", gate=CountingGate(clock), clock=clock,
                          transport=ObservedTransport(None), max_attempts=1, **kw)


def test_deadline_holds_over_a_real_socket() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
            for _ in range(100):
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.02)  # under the read timeout each time, over the deadline in all
        finally:  # cancelled once the client has given up
            writer.close()

    async def body(port: int) -> None:
        async with _client(port, timeout=0.3) as api:
            with pytest.raises(RetriesExhausted, match="did not arrive whole within 0.3s"):
                await api.organization()

    asyncio.run(_serving(trickle, body))


def test_size_cap_holds_over_a_real_socket() -> None:
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 8 + b"0\r\n\r\n"

    async def body(port: int) -> None:
        async with _client(port, max_response_bytes=4096) as api:
            with pytest.raises(BodyTooLarge, match="larger than 4096 bytes"):
                await api.organization()

    asyncio.run(_serving(_answering(chunked), body))
