"""Errors of the Admin API, typed by what the caller must do next, and the one function that decides which.

Every message is a single safe line: server text is collapsed, truncated and scrubbed of anything shaped
like an Anthropic key (`worker.secret.mask_keys`), and no error ever carries request headers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from worker.secret import mask_keys

_TOO_LARGE = re.compile(r"too large|exceed", re.IGNORECASE)
_CURSOR = re.compile(r"\bcursor\b", re.IGNORECASE)
_REFUSED = re.compile(r"\bhipaa\b", re.IGNORECASE)
_MAX_MESSAGE = 400

#: Statuses worth another try: rate limited, timeouts, server trouble, overloaded (529).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


def safe_text(text: str, limit: int = _MAX_MESSAGE) -> str:
    """One line, bounded, with anything that looks like an Anthropic key replaced."""
    line = " ".join(mask_keys(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class ApiError(Exception):
    """Base of every Admin API failure. `str()` is a safe one-line message."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status = status
        self.error_type = error_type
        self.request_id = request_id
        self.message = safe_text(message)
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"error_type={self.error_type!r}, request_id={self.request_id!r})"
        )


class IntegrationBlocked(ApiError):
    """401/402/403: the key or the account cannot be used; stop this integration until the user acts."""

    def __init__(self, message: str, *, action: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.action = safe_text(action)


class RequestRejected(ApiError):
    """Any other 4xx: the request itself is wrong; retrying it unchanged cannot help."""


class ResponseTooLarge(RequestRejected):
    """400 saying the answer would be too large, even at the smallest page size."""


class BodyTooLarge(ResponseTooLarge):
    """A 2xx whose body is over our own cap (COST_WORKER_MAX_RESPONSE_BYTES): dropped unread. Like the
    API's "too large", a report page shrinks its `limit` first; only a one-day page over the cap fails."""


class ApiUnreachable(ApiError):
    """No connection could be made to the base URL (refused, unknown host, connect timeout), when the
    caller asked not to retry that (the connection test)."""


class CursorRejected(RequestRejected):
    """410, or 400 about the page cursor: the cursor expired or the server no longer knows it; the paging
    strategy may restart its window without one."""


class SourceRefused(RequestRejected):
    """400 saying the organization may not use this API at all (the Analytics API refuses organizations
    with HIPAA readiness): keep the other source, say why."""


class RetriesExhausted(ApiError):
    """Retryable failures went on past the attempt or time budget; names the last cause."""

    def __init__(self, message: str, *, attempts: int, last_cause: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.attempts = attempts
        self.last_cause = safe_text(last_cause)


class ProtocolViolation(ApiError):
    """The API answered 2xx with something that breaks its documented contract (shape, paging, days)."""


@dataclass(frozen=True, slots=True)
class Retryable:
    """A failure worth retrying: `retry_after` (seconds) is the server's own wait, when it gave one."""

    status: int | None
    error_type: str | None
    request_id: str | None
    message: str
    retry_after: float | None = None

    @property
    def rate_limited(self) -> bool:
        return self.status == 429

    def describe(self) -> str:
        status = self.status if self.status is not None else "no response"
        error_type = self.error_type or "error"
        return safe_text(f"{status} {error_type}: {self.message} (request-id {self.request_id})")


def _error_fields(response: httpx.Response, content: bytes) -> tuple[str | None, str, str | None]:
    """(error.type, error.message, request_id from the body) from the documented error envelope."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        body_rid = body.get("request_id")
        rid = body_rid if isinstance(body_rid, str) else None
        if isinstance(error, dict):
            etype = error.get("type")
            msg = error.get("message")
            return (
                etype if isinstance(etype, str) else None,
                msg if isinstance(msg, str) and msg else response.reason_phrase,
                rid,
            )
        return None, response.reason_phrase, rid
    return None, response.reason_phrase or f"HTTP {response.status_code}", None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `retry-after` header (delta-seconds or HTTP-date); None when absent or unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


_ACTION_401 = (
    "The Admin API key is invalid, revoked or expired: create a new Admin key in the Anthropic Console "
    "(Settings > Admin API Keys, organization admins only) and store it with "
    "`cost-worker integrations replace-key ID` (or `connect` for a new organization)."
)


def _action(status: int, message: str) -> str:
    if status == 401:
        return _ACTION_401
    if status == 402:
        return f"Anthropic reports a billing problem ({message}): resolve it in the Console, then resume."
    return (
        f"Anthropic refused the key ({message}): it is not an Admin key, lacks permission, or belongs to an "
        "individual account (the Admin API needs an organization). Reconnect with an organization Admin key."
    )


def classify_response(
    response: httpx.Response, *, path: str, now: datetime | None = None, body: bytes | None = None
) -> ApiError | Retryable:
    """Decide what a non-2xx response means: an error to raise, or a failure to retry. `body` is the
    content when the response was streamed (default: `response.content`)."""
    status = response.status_code
    error_type, message, body_rid = _error_fields(response, response.content if body is None else body)
    request_id = response.headers.get("request-id") or body_rid
    where = f"GET {path}"
    kw: dict[str, Any] = {"status": status, "error_type": error_type, "request_id": request_id}
    detail = f"{status} {error_type or 'error'}: {safe_text(message, 200)} (request-id {request_id})"
    if status in RETRYABLE_STATUSES or status >= 500:
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return Retryable(status, error_type, request_id, safe_text(message, 200), retry_after)
    if status in (401, 402, 403):
        action = _action(status, safe_text(message, 200))
        return IntegrationBlocked(f"{where} -> {detail}; {action}", action=action, **kw)
    if status == 400 and _TOO_LARGE.search(message):
        return ResponseTooLarge(f"{where} -> response too large: {detail}", **kw)
    if status == 410 or (status == 400 and _CURSOR.search(message)):
        return CursorRejected(f"{where} -> page cursor rejected: {detail}", **kw)
    if status == 400 and _REFUSED.search(message):
        return SourceRefused(f"{where} -> refused for this organization: {detail}", **kw)
    return RequestRejected(f"{where} -> {detail}", **kw)
