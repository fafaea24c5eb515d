"""A local, deterministic copy of Anthropic's Admin API cost and usage reports.

Shares no code with ``worker.api`` on purpose: it is the independent ground truth the worker is
tested against. Modules: ``prices`` (own price table), ``data`` (organizations, generated usage,
exact truth), ``reports`` (validation, cursors, pages), ``ratelimit``, ``faults``, ``app``
(request handling and the ``/_sim/`` control API), ``server`` (asyncio HTTP/1.1), ``command``
(the ``simulate`` click command).
"""

from worker.simulator.app import SimulatorApp
from worker.simulator.data import Org, SimulatorData, TruthRow, UsageRecord
from worker.simulator.faults import Fault, FaultSpecError, parse_fault
from worker.simulator.server import SimulatorHandle, SimulatorServer, build_app, running_simulator

__all__ = [
    "Fault",
    "FaultSpecError",
    "Org",
    "SimulatorApp",
    "SimulatorData",
    "SimulatorHandle",
    "SimulatorServer",
    "TruthRow",
    "UsageRecord",
    "build_app",
    "parse_fault",
    "running_simulator",
]
