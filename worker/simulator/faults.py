"""Fault injection: scripted failures for the next N requests or at a rate, and state changes.

Spec syntax (CLI ``--fault`` and ``POST /_sim/faults {"spec": ...}``)::

    KIND[:key=value[,key=value...]]

Per-request kinds (at most one fires per request, first added first):

    400 | 401 | 402 | 403 | 404 | 500 | 502 | 503 | 504 | 529
                      error response with the status's documented error type; ``message``
                      replaces the default message
    429               rate_limit_error with ``retry_after`` seconds (default 1; ``none``: no
                      retry-after header)
    cutoff            headers with the full Content-Length, ``fraction`` of the body (default
                      0.5), then the connection is closed
    bad-json          a complete 200 whose body is the first ``fraction`` of the JSON (not JSON)
    410               a request that follows a page cursor (the Analytics API's) answers 410: expired
    delay             answer after ``seconds`` (default 1)

Page kinds (change a report page after it is built; every one that matches applies):

    no-next-page      the page says ``has_more: true`` with ``next_page: null``
    empty-next-page   a page with more to come says ``next_page: ""``
    repeat-next-page  a page asked for with a cursor names that same cursor as its next page
    missing-day       the bucket of ``day`` is left out of the page holding it
    duplicate-day     the bucket of ``day`` is served twice
    bad-amount        the page's first cost ``amount`` becomes ``amount`` (any JSON value through
                      the control API or Python; text in a spec string; default null)
    novel-fields      fields the worker does not know: unknown counters and fields in every result
                      and, in every cost bucket with results, one row of an unknown cost type (its
                      0.0125 cents are not in the truth)

    keys: count=N (default 1 unless rate is given), rate=P (0..1, seeded so reproducible; 1: every
          matching request), org=I (default every org), path=TEXT (substring of the request path),
          after=N (let the first N requests the fault matches through, whether or not another
          fault answers them, then fire), message=TEXT, amount=VALUE, day=YYYY-MM-DD

State kinds (applied once, immediately):

    revoke[:org=I]             the org's admin key answers 401 from now on (default every org)
    restore[:org=I]            undo revoke
    restate:day=YYYY-MM-DD[,org=I]   the day's numbers change (version bump of its seed)
    spike:day=YYYY-MM-DD[,org=I,factor=F,api_key=ID]   the day's token volume times F (default 5; 1 removes
                               it); with api_key, only that API key's calls (every tier)
    rotate-key[:org=I]         the org gets a new admin key (``/_sim/keys``); the old one answers
                               401 "revoked"
    rename:name=TEXT[,org=I]   the org's name (``/v1/organizations/me``) becomes TEXT, any
                               characters at all (through Python or the control API's JSON)

Examples: ``529:count=3``, ``500:rate=0.05,path=cost_report``, ``cutoff:org=2``,
``401:after=6,rate=1`` (every request after the sixth), ``restate:org=0,day=2026-03-01``,
``spike:day=2026-03-01,factor=5``, ``revoke:org=1``, ``missing-day:day=2026-03-02,rate=1``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

ERROR_KINDS: dict[str, tuple[int, str, str]] = {
    "400": (400, "invalid_request_error", "Invalid request (simulated)"),
    "401": (401, "authentication_error", "invalid x-api-key (simulated)"),
    "402": (402, "billing_error", "Billing problem (simulated)"),
    "403": (403, "permission_error", "Permission denied (simulated)"),
    "404": (404, "not_found_error", "Not found (simulated)"),
    "500": (500, "api_error", "Internal server error (simulated)"),
    "502": (502, "api_error", "Bad gateway (simulated)"),
    "503": (503, "api_error", "Service unavailable (simulated)"),
    "504": (504, "timeout_error", "Request timed out (simulated)"),
    "529": (529, "overloaded_error", "Overloaded (simulated)"),
}
PRE_KINDS = frozenset({*ERROR_KINDS, "429", "cutoff", "bad-json", "delay"})
PAGE_KINDS = frozenset({
    "no-next-page", "empty-next-page", "repeat-next-page", "missing-day", "duplicate-day", "bad-amount",
    "novel-fields",
})
CURSOR_KINDS = frozenset({"410"})  # fire only on a request that follows a cursor
REQUEST_KINDS = PRE_KINDS | PAGE_KINDS | CURSOR_KINDS
STATE_KINDS = frozenset({"revoke", "restore", "restate", "spike", "rotate-key", "rename"})
_DAY_KINDS = frozenset({"restate", "spike", "missing-day", "duplicate-day"})
_INT_KEYS = {"count", "org", "after"}
_FLOAT_KEYS = {"rate", "fraction", "seconds", "factor"}
_KEYS = _INT_KEYS | _FLOAT_KEYS | {"path", "day", "retry_after", "message", "amount", "name", "api_key"}


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
    retry_after: int | None = 1
    day: date | None = None
    factor: float = 5.0
    after: int = 0  # matching requests still to let through before firing
    message: str | None = None
    amount: Any = None
    name: str | None = None
    api_key: str | None = None  # spike: only this API key's calls
    id: int = 0
    fired: int = field(default=0)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "kind": self.kind, "fired": self.fired}
        for k in ("count", "rate", "org", "path", "message", "name", "api_key"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        if self.after:
            out["after"] = self.after
        if self.kind in ("cutoff", "bad-json"):
            out["fraction"] = self.fraction
        if self.kind == "delay":
            out["seconds"] = self.seconds
        if self.kind == "429":
            out["retry_after"] = self.retry_after
        if self.kind == "bad-amount":
            out["amount"] = self.amount
        if self.day is not None:
            out["day"] = self.day.isoformat()
        if self.kind == "spike":
            out["factor"] = self.factor
        return out


def _option(key: str, raw: Any) -> Any:
    if key in _INT_KEYS:
        return int(raw)
    if key in _FLOAT_KEYS:
        return float(raw)
    if key == "retry_after":
        return None if raw is None or str(raw).strip().lower() in ("", "none") else int(raw)
    if key == "day":
        return date.fromisoformat(str(raw))
    if key == "amount":
        return raw  # any JSON value, kept as given
    return str(raw)


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
            value = _option(key, raw)
        except (TypeError, ValueError):
            raise FaultSpecError(f"fault option {key}={raw!r} is not valid") from None
        setattr(fault, key, value)
    if fault.count is not None and fault.count < 1:
        raise FaultSpecError("count must be at least 1")
    if fault.rate is not None and not 0 < fault.rate <= 1:
        raise FaultSpecError("rate must be in (0, 1]")
    if not 0 <= fault.fraction < 1:
        raise FaultSpecError("fraction must be in [0, 1)")
    if (fault.retry_after or 0) < 0 or fault.seconds < 0 or fault.after < 0:
        raise FaultSpecError("retry_after, seconds and after must not be negative")
    if kind in _DAY_KINDS and fault.day is None:
        raise FaultSpecError(f"{kind} needs day=YYYY-MM-DD")
    if not 0 < fault.factor <= 1000:
        raise FaultSpecError("factor must be in (0, 1000]")
    if kind == "rename" and fault.name is None:
        raise FaultSpecError("rename needs name=TEXT")
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

    def has(self, kinds: frozenset[str]) -> bool:
        """Whether any active fault is of ``kinds`` (lets the hot path skip work)."""
        return any(f.kind in kinds for f in self._faults)

    def take(self, org: int, path: str, kinds: frozenset[str]) -> Fault | None:
        """The first fault of ``kinds`` that fires for this request, consuming one of its count."""
        fired = self._take(org, path, kinds, None, first_only=True)
        return fired[0] if fired else None

    def take_all(
        self, org: int, path: str, kinds: frozenset[str], applies: Callable[[Fault], bool]
    ) -> list[Fault]:
        """Every fault of ``kinds`` that ``applies`` to this page and fires, in the order added."""
        return self._take(org, path, kinds, applies, first_only=False)

    def _take(
        self,
        org: int,
        path: str,
        kinds: frozenset[str],
        applies: Callable[[Fault], bool] | None,
        *,
        first_only: bool,
    ) -> list[Fault]:
        fired: list[Fault] = []
        for fault in list(self._faults):
            if fault.kind not in kinds:
                continue
            if fault.org is not None and fault.org != org:
                continue
            if fault.path is not None and fault.path not in path:
                continue
            if applies is not None and not applies(fault):
                continue
            if fault.after > 0:  # this request counts towards the ones it lets through
                fault.after -= 1
                continue
            if first_only and fired:
                continue
            if fault.rate is not None and self._rng.random() >= fault.rate:
                continue
            fault.fired += 1
            if fault.count is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
            fired.append(fault)
        return fired
