"""A local, deterministic copy of Anthropic's Admin API cost and usage reports.

Shares no code with ``worker.api`` on purpose: it is the independent ground truth the worker is
tested against. Modules: ``prices`` (own price table), ``data`` (organizations, generated usage,
exact truth), ``reports`` (validation, cursors, pages), ``ratelimit``, ``faults`` (and ``tamper``,
the page faults), ``app`` (request handling and the ``/_sim/`` control API), ``server`` (asyncio
HTTP/1.1), ``transport`` (the app as an in-process httpx transport), ``command`` (the ``simulate``
click command).

From Python (tests, benchmarks)::

    with running_simulator(orgs=3, seed=7, today=date(2026, 3, 10), requests_per_minute=0) as sim:
        httpx.get(sim.base_url + "/v1/organizations/me",
                  headers={"x-api-key": sim.keys[0], "anthropic-version": "2023-06-01"})
        sim.data.truth(0, date(2026, 3, 1), date(2026, 3, 8))   # exact Decimal dollars, tokens
        sim.add_fault("529:count=2")

In-process, without a server (tests: one model of the API, no sockets)::

    sim = in_process(today=date(2026, 3, 10), requests_per_minute=0, record_requests=True)
    async with httpx.AsyncClient(base_url=sim.base_url, transport=sim.transport()) as client: ...
    sim.requests[0].param("limit")   # every request as received, with its status and request-id

From the shell: ``python -c "from worker.simulator.command import simulate_command;
simulate_command()" --orgs 3 --port 0`` (``cost-worker simulate`` once registered). For large
benchmarks run it as a separate process: client and server in one process share the GIL.
"""

from worker.simulator.app import RecordedRequest, SimulatorApp
from worker.simulator.data import Org, SimulatorData, TruthRow, UsageRecord
from worker.simulator.faults import Fault, FaultSpecError, fault_from_mapping, parse_fault
from worker.simulator.server import (
    SimulatorHandle,
    SimulatorServer,
    build_app,
    in_process,
    running_simulator,
)
from worker.simulator.transport import SimulatorTransport

__all__ = [
    "Fault",
    "FaultSpecError",
    "Org",
    "RecordedRequest",
    "SimulatorApp",
    "SimulatorData",
    "SimulatorHandle",
    "SimulatorServer",
    "SimulatorTransport",
    "TruthRow",
    "UsageRecord",
    "build_app",
    "fault_from_mapping",
    "in_process",
    "parse_fault",
    "running_simulator",
]
