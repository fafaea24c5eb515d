"""The simulator in-process: its httpx transport answers as the server does, and records every request."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest

from worker.simulator import SimulatorHandle, in_process

from .helpers import COST, ME, TODAY, USAGE, VERSION, client, local_client, report_params

START = TODAY - timedelta(days=20)


class TestSameAnswers:
    @pytest.mark.parametrize(("path", "params"), [
        (ME, {}),
        (COST, report_params(START, TODAY, 7, "workspace_id", "description")),
        (USAGE, report_params(START, TODAY, 31, "model", "api_key_id")),
        (COST, {"limit": 7}),  # a 400
    ])
    def test_bytes_equal_the_servers(self, sim: SimulatorHandle, path: str, params: dict[str, Any]) -> None:
        """Same seed, same request: the transport's status, body and headers are the server's (but the
        request-id and the date)."""
        local = in_process(orgs=3, seed=7, today=TODAY, requests_per_minute=0)
        with client(sim) as served, local_client(local) as direct:
            a, b = served.get(path, params=params), direct.get(path, params=params)
        assert (a.status_code, a.headers["content-type"]) == (b.status_code, b.headers["content-type"])
        if a.status_code == 200:
            assert a.content == b.content
        else:
            assert a.json()["error"] == b.json()["error"]
        skip = {"request-id", "date", "connection", "content-length"}
        assert {k: v for k, v in a.headers.items() if k not in skip} == {
            k: v for k, v in b.headers.items() if k not in skip}

    def test_async_client(self, local_sim: SimulatorHandle) -> None:
        """The same transport serves httpx.AsyncClient."""
        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=local_sim.base_url, transport=local_sim.transport(),
                                         headers={"x-api-key": local_sim.keys[1],
                                                  "anthropic-version": VERSION}) as c:
                return await c.get(ME)
        r = asyncio.run(main())
        assert r.status_code == 200 and r.json()["id"] == local_sim.orgs[1].id


class TestRecording:
    def test_every_api_request_with_its_status(self, local_sim: SimulatorHandle) -> None:
        """Each /v1/ request is kept with its number, path, parameters, headers, status and request-id; the
        control API is not."""
        with local_client(local_sim) as c:
            ok = c.get(COST, params=report_params(START, TODAY, 7, "description"))
            wrong = c.get(ME, headers={"x-api-key": "sk-ant-admin01-wrong"})
            c.get("/_sim/stats")
        first, second = local_sim.requests
        assert (first.number, first.path, first.status, first.request_id) == (
            1, COST, 200, ok.headers["request-id"])
        assert first.params["group_by[]"] == ["description"] and first.param("limit") == "7"
        assert first.headers["x-api-key"] == local_sim.keys[0]
        assert first.headers["anthropic-version"] == VERSION
        assert (second.path, second.status, second.request_id) == (ME, 401, wrong.headers["request-id"])
        assert wrong.json()["error"]["type"] == "authentication_error"

    def test_off_unless_asked(self) -> None:
        """A simulator built for benchmarks keeps no log (it would grow without bound)."""
        quiet = in_process(today=TODAY, requests_per_minute=0)
        assert quiet.app.requests is None
        with pytest.raises(RuntimeError, match="record_requests"):
            _ = quiet.requests

    def test_reset_forgets_them(self, local_sim: SimulatorHandle) -> None:
        with local_client(local_sim) as c:
            c.get(ME)
        local_sim.reset()
        assert local_sim.requests == []


class TestNetworkFaults:
    def test_cutoff_is_a_protocol_error(self, local_sim: SimulatorHandle) -> None:
        """A body cut short raises what httpx raises over a socket; the next request works."""
        local_sim.add_fault("cutoff")
        with local_client(local_sim) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                c.get(ME)
            assert c.get(ME).status_code == 200

    def test_delay_past_the_timeout_is_a_read_timeout_at_once(self, local_sim: SimulatorHandle) -> None:
        """A delay of at least the read timeout raises ReadTimeout without waiting for it."""
        local_sim.add_fault("delay:seconds=3600")
        with local_client(local_sim) as c:
            with pytest.raises(httpx.ReadTimeout):
                c.get(ME, timeout=30)
            assert c.get(ME).status_code == 200

    def test_short_delay_is_answered(self, local_sim: SimulatorHandle) -> None:
        local_sim.add_fault("delay:seconds=0.01")
        with local_client(local_sim) as c:
            assert c.get(ME, timeout=30).status_code == 200
