"""Fault injection: scripted failures for the next N requests or at a rate, and state changes.

Spec syntax (CLI ``--fault`` and ``POST /_sim/faults {"spec": ...}``)::

    KIND[:key=value[,key=value...]]

Per-request kinds (at most one fires per request, first added first):

    500 | 504 | 529   error response (api_error | timeout_error | overloaded_error)
    429               rate_limit_error with ``retry_after`` seconds (default 1)
    cutoff            headers with the full Content-Length, ``fraction`` of the body (default
                      0.5), then the connection is closed
    no-next-page      a report page says ``has_more: true`` with ``next_page: null``
    delay             answer after ``seconds`` (default 1)

    keys: count=N (default 1 unless rate is given), rate=P (0..1, seeded so reproducible),
          org=I (default every org), path=TEXT (substring of the request path)

State kinds (applied once, immediately):

    revoke[:org=I]             the org's admin key answers 401 from now on (default every org)
    restore[:org=I]            undo revoke
    restate:day=YYYY-MM-DD[,org=I]   the day's numbers change (version bump of its seed)
    spike:day=YYYY-MM-DD[,org=I,factor=F]   the day's token volume times F (default 5; 1 removes it)

Examples: ``529:count=3``, ``500:rate=0.05,path=cost_report``, ``cutoff:org=2``,
``restate:org=0,day=2026-03-01``, ``spike:day=2026-03-01,factor=5``, ``revoke:org=1``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

ERROR_KINDS: dict[str, tuple[int, str, str]] = {
    "500": (500, "api_error", "Internal server error (simulated)"),
    "504": (504, "timeout_error", "Request timed out (simulated)"),
    "529": (529, "overloaded_error", "Overloaded (simulated)"),
}
REQUEST_KINDS = frozenset({*ERROR_KINDS, "429", "cutoff", "no-next-page", "delay"})
STATE_KINDS = frozenset({"revoke", "restore", "restate", "spike"})
_INT_KEYS = {"count", "org", "retry_after"}
_FLOAT_KEYS = {"rate", "fraction", "seconds", "factor"}
_KEYS = _INT_KEYS | _FLOAT_KEYS | {"path", "day"}


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed."""


@dataclass(slots=True)
class Fault:
    kind: str
    count: int | None = None
    rate: float | None = None
    org: int | None = None
    path: str | None = None
    fraction: float = 0.5
    seconds: float = 1.0
    retry_after: int = 1
    day: date | None = None
    factor: float = 5.0
    id: int = 0
    fired: int = field(default=0)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "fired": self.fired}
        for k in ("count", "rate", "org", "path"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.kind == "cutoff":
            out["fraction"] = self.fraction
        if self.kind == "delay":
            out["seconds"] = self.seconds
        if self.kind == "429":
            out["retry_after"] = self.retry_after
        if self.day is not None:
            out["day"] = self.day.isoformat()
        if self.kind == "spike":
            out["factor"] = self.factor
        return out


def fault_from_mapping(kind: str, options: dict[str, Any]) -> Fault:
    """Build and validate a fault from a kind and its options (strings or JSON values)."""
    kind = str(kind).strip().lower()
    if kind not in REQUEST_KINDS | STATE_KINDS:
        allowed = ", ".join(sorted(REQUEST_KINDS | STATE_KINDS))
        raise FaultSpecError(f"unknown fault kind {kind!r}; allowed: {allowed}")
    fault = Fault(kind)
    for key, raw in options.items():
        if key not in _KEYS:
            allowed = ", ".join(sorted(_KEYS))
            raise FaultSpecError(f"unknown fault option {key!r}; allowed: {allowed}")
        try:
            if key in _INT_KEYS:
                value: Any = int(raw)
            elif key in _FLOAT_KEYS:
                value = float(raw)
            elif key == "day":
                value = date.fromisoformat(str(raw))
            else:
                value = str(raw)
        except (TypeError, ValueError):
            raise FaultSpecError(f"fault option {key}={raw!r} is not valid") from None
        setattr(fault, key, value)
    if fault.count is not None and fault.count < 1:
        raise FaultSpecError("count must be at least 1")
    if fault.rate is not None and not 0 < fault.rate <= 1:
        raise FaultSpecError("rate must be in (0, 1]")
    if not 0 <= fault.fraction < 1:
        raise FaultSpecError("fraction must be in [0, 1)")
    if fault.retry_after < 0 or fault.seconds < 0:
        raise FaultSpecError("retry_after and seconds must not be negative")
    if kind in ("restate", "spike") and fault.day is None:
        raise FaultSpecError(f"{kind} needs day=YYYY-MM-DD")
    if not 0 < fault.factor <= 1000:
        raise FaultSpecError("factor must be in (0, 1000]")
    if kind in REQUEST_KINDS and fault.count is None and fault.rate is None:
        fault.count = 1
    return fault


def parse_fault(spec: str) -> Fault:
    """Parse ``KIND[:key=value,...]``."""
    kind, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise FaultSpecError(f"fault option {part!r} is not key=value")
        options[key.strip()] = value.strip()
    return fault_from_mapping(kind, options)


class FaultSet:
    """Active per-request faults; rate draws come from a seeded generator (reproducible)."""

    def __init__(self, seed: int = 0) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1
        self._rng = random.Random(seed)

    def add(self, fault: Fault) -> Fault:
        fault.id = self._next_id
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def clear(self) -> None:
        self._faults.clear()

    def active(self) -> list[Fault]:
        return list(self._faults)

    def take(self, org: int, path: str, kinds: frozenset[str]) -> Fault | None:
        """The first fault of ``kinds`` that fires for this request, consuming one of its count."""
        for fault in self._faults:
            if fault.kind not in kinds:
                continue
            if fault.org is not None and fault.org != org:
                continue
            if fault.path is not None and fault.path not in path:
                continue
            if fault.rate is not None and self._rng.random() >= fault.rate:
                continue
            fault.fired += 1
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            return fault
        return None
