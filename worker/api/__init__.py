"""The Anthropic Admin API: organization, daily cost and message usage reports.

Errors are typed by what the caller must do next::

    ApiError                  .status, .error_type, .request_id; str() is one safe line
     ├─ IntegrationBlocked    401/402/403: stop this integration; .action tells the user what to do
     ├─ RequestRejected       any other 4xx: not retried
     │   ├─ ResponseTooLarge  400 "too large" even at limit=1
     │   │   └─ BodyTooLarge  a body over COST_WORKER_MAX_RESPONSE_BYTES, even at limit=1 (never read whole)
     │   ├─ CursorRejected    410 / 400 about the cursor, past the window's restarts
     │   └─ SourceRefused     400: this organization may not use the API (HIPAA readiness, Analytics API)
     ├─ RetriesExhausted      429/5xx/529/timeouts/dropped connections past the attempt or time budget
     ├─ ApiUnreachable        no connection to the base URL, when not retried (the connection test)
     └─ ProtocolViolation     malformed body, broken pagination, missing days, amounts or counts out of bounds
"""

from worker.api.client import AdminApiClient, AdminKeyAuth, RequestGate, RequestStats
from worker.api.errors import (
    ApiError,
    ApiUnreachable,
    BodyTooLarge,
    CursorRejected,
    IntegrationBlocked,
    ProtocolViolation,
    RequestRejected,
    ResponseTooLarge,
    RetriesExhausted,
    SourceRefused,
)
from worker.api.models import CostRow, DayBucket, Organization, Page, UsageRow, cents_to_dollars

__all__ = [
    "AdminApiClient",
    "AdminKeyAuth",
    "ApiError",
    "ApiUnreachable",
    "BodyTooLarge",
    "CursorRejected",
    "CostRow",
    "DayBucket",
    "IntegrationBlocked",
    "Organization",
    "Page",
    "ProtocolViolation",
    "RequestGate",
    "RequestRejected",
    "RequestStats",
    "ResponseTooLarge",
    "RetriesExhausted",
    "SourceRefused",
    "UsageRow",
    "cents_to_dollars",
]
