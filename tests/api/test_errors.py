"""Classifying every non-2xx response into what to do next."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from worker.api import (
    ApiError,
    IntegrationBlocked,
    ProtocolViolation,
    RequestRejected,
    ResponseTooLarge,
    RetriesExhausted,
)
from worker.api.errors import Retryable, classify_response, parse_retry_after, safe_text

PATH = "/v1/organizations/cost_report"


def _response(status: int, message: str = "boom", error_type: str | None = None, headers: dict[str, str] | None = None,
              body_rid: str | None = "req_body") -> httpx.Response:  # fmt: skip
    body = {"type": "error", "error": {"type": error_type or "x_error", "message": message}, "request_id": body_rid}
    return httpx.Response(status, content=json.dumps(body).encode(), headers=headers or {})


class TestHierarchy:
    def test_tree(self) -> None:
        """The hierarchy is the one drawn in worker.api's docstring."""
        for cls in (IntegrationBlocked, RequestRejected, RetriesExhausted, ProtocolViolation):
            assert issubclass(cls, ApiError)
        assert issubclass(ResponseTooLarge, RequestRejected)


class TestClassify:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [(401, IntegrationBlocked), (402, IntegrationBlocked), (403, IntegrationBlocked), (400, RequestRejected),
         (404, RequestRejected), (413, RequestRejected), (422, RequestRejected), (301, RequestRejected),
         (429, Retryable), (500, Retryable), (502, Retryable), (503, Retryable), (504, Retryable),
         (529, Retryable), (408, Retryable)],
    )  # fmt: skip
    def test_status_table(self, status: int, expected: type) -> None:
        """Each status maps to its action."""
        assert type(classify_response(_response(status), path=PATH)) is expected

    @pytest.mark.parametrize(
        "message",
        ["Response too large", "response is TOO LARGE, reduce limit", "The result set exceeds the maximum size"],
    )
    def test_too_large(self, message: str) -> None:
        """A 400 saying the response is too large is a ResponseTooLarge (matched loosely)."""
        assert isinstance(classify_response(_response(400, message), path=PATH), ResponseTooLarge)

    def test_other_400_is_plain_rejection(self) -> None:
        """Other 400s are rejected without a shrink."""
        err = classify_response(_response(400, "Cannot specify more than 5 group_by[] dimensions"), path=PATH)
        assert type(err) is RequestRejected
        assert "group_by" in str(err)

    def test_request_id_header_wins_then_body(self) -> None:
        """request-id comes from the header, else from the error body."""
        with_header = classify_response(_response(404, headers={"request-id": "req_hdr"}), path=PATH)
        without = classify_response(_response(404), path=PATH)
        assert isinstance(with_header, ApiError) and with_header.request_id == "req_hdr"
        assert isinstance(without, ApiError) and without.request_id == "req_body"
        assert "req_body" in str(without)

    def test_actions(self) -> None:
        """401 asks for a new key; 402/403 show the API's own message."""
        e401 = classify_response(_response(401, "invalid x-api-key", "authentication_error"), path=PATH)
        e402 = classify_response(_response(402, "Your credit balance is too low", "billing_error"), path=PATH)
        e403 = classify_response(_response(403, "This key is not an admin key", "permission_error"), path=PATH)
        assert isinstance(e401, IntegrationBlocked) and "new Admin key" in e401.action
        assert isinstance(e402, IntegrationBlocked) and "credit balance is too low" in e402.action
        assert isinstance(e403, IntegrationBlocked) and "not an admin key" in e403.action
        assert e403.error_type == "permission_error" and e403.status == 403

    def test_retry_after_on_429(self) -> None:
        """A 429's retry-after is carried to the retry loop."""
        outcome = classify_response(_response(429, headers={"retry-after": "42"}), path=PATH)
        assert isinstance(outcome, Retryable) and outcome.retry_after == 42 and outcome.rate_limited

    def test_non_json_error_body(self) -> None:
        """An HTML error page still classifies, with a safe message."""
        outcome = classify_response(httpx.Response(502, content=b"<html>Bad gateway</html>"), path=PATH)
        assert isinstance(outcome, Retryable) and outcome.status == 502

    def test_messages_are_one_safe_line(self) -> None:
        """Server text is collapsed to one line and key-shaped strings are scrubbed."""
        err = classify_response(_response(404, "no\nsuch thing for sk-ant-admin01-SECRETSECRET please"), path=PATH)
        assert "\n" not in str(err) and "SECRETSECRET" not in str(err) and "SECRETSECRET" not in repr(err)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [("30", 30.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0), (None, None), ("soon", None), ("nan", None),
         ("Tue, 10 Mar 2026 12:01:00 GMT", 60.0)],
    )  # fmt: skip
    def test_parse(self, value: str | None, seconds: float | None) -> None:
        """Delta-seconds and HTTP dates are understood; garbage means absent."""
        assert parse_retry_after(value, now=datetime(2026, 3, 10, 12, 0, tzinfo=UTC)) == seconds


def test_safe_text_truncates() -> None:
    """Long server text is bounded."""
    assert len(safe_text("x" * 10_000)) <= 400
