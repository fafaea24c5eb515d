"""Errors the simulated API answers with, in the Admin API's documented body shape."""

from __future__ import annotations

import json
import secrets

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def new_request_id() -> str:
    return "req_sim" + secrets.token_hex(12)


class ApiError(Exception):
    """An error response: HTTP status, the API's error type and a human-readable message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or {}

    def body(self, request_id: str) -> bytes:
        return json.dumps(
            {
                "type": "error",
                "error": {"type": self.error_type, "message": self.message},
                "request_id": request_id,
            }
        ).encode()


def invalid(message: str) -> ApiError:
    return ApiError(400, message)
