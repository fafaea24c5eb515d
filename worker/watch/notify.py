"""Webhook notifications: events queued once per state change, delivered from a database outbox.

- An `Event` has a key unique to the state change it reports (`budget:<name>:<period>:<status>`,
  `anomaly:<integration>:<day>`, `integration:<id>:<n>:<state>`, `reconcile:<scope>:<n>:drift`).
  `enqueue` inserts one `notifications` row per (event, webhook) and ignores one that exists (the
  unique key): replicas that evaluate the same change queue it once.
- `deliver` sends due rows. Each is claimed first (a conditional UPDATE that one process wins), then
  posted, then marked `sent`; a failure (timeout, connection error, 408, 429, 5xx) is retried with
  exponential backoff and jitter, up to `MAX_ATTEMPTS`; another 4xx is final (`failed`). A process
  killed between the post and the mark leaves a claim that expires after `CLAIM_SECONDS`, and the row
  is posted again: delivery is at least once, never twice by two live replicas. Receivers can drop a
  repeat by the `Idempotency-Key` header.
- The URL is a secret: it is never logged, stored or put in an error; rows name their webhook by a
  fingerprint (`target_id`) and messages by its position and host (`describe`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker import __version__
from worker.api.client import tls_context
from worker.settings import Notify
from worker.storage.tables import notifications

if TYPE_CHECKING:
    from worker.app import App

log = logging.getLogger("worker.notify")

MAX_ATTEMPTS = 10
FIRST_RETRY_SECONDS = 30.0
MAX_RETRY_SECONDS = 3600.0
CLAIM_SECONDS = 60.0
REQUEST_SECONDS = 5.0  # one whole POST, connect to last byte
BATCH = 20  # rows looked at per delivery round
_RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class Event:
    key: str
    kind: str  # budget | anomaly | integration | reconcile
    title: str
    text: str
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"event": self.kind, "key": self.key, "title": self.title, "text": self.text,
                "details": self.details, "source": "cost-worker"}


def target_id(target: Notify) -> str:
    """A stable fingerprint of a webhook URL that cannot be turned back into it."""
    return hashlib.sha256(b"cost-worker:webhook:" + target.url.get_secret_value().encode()).hexdigest()[:32]


def describe(targets: Sequence[Notify], target: Notify) -> str:
    """`[[notify]] #2 (slack, hooks.slack.com)`: enough to find it in the config, nothing secret."""
    host = urlsplit(target.url.get_secret_value()).hostname or "?"
    return f"[[notify]] #{list(targets).index(target) + 1} ({target.format}, {host})"


def render(payload: dict[str, Any], fmt: str) -> bytes:
    """The request body for a webhook format: Slack's `{"text": ...}` or the event itself."""
    if fmt == "slack":
        return json.dumps({"text": f"*{payload['title']}*\n{payload['text']}"}).encode()
    return json.dumps(payload, sort_keys=True).encode()


def enqueue(conn: Connection, event: Event, targets: Sequence[Notify], now: datetime) -> int:
    """Queue `event` for every webhook (once per event and webhook, whoever queues it); returns rows added."""
    if not targets:
        return 0
    insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    payload = json.dumps(event.as_json(), sort_keys=True, default=str)
    rows = [{"event_key": event.key, "target": target_id(t), "kind": event.kind, "payload": payload,
             "created_at": now, "status": "pending", "attempts": 0, "next_attempt_at": now} for t in targets]
    added = 0
    for row in rows:
        result = conn.execute(insert(notifications).values(**row)
                              .on_conflict_do_nothing(index_elements=["event_key", "target"]))
        added += result.rowcount or 0
    return added


def backoff(attempts: int) -> float:
    """Seconds before attempt `attempts + 1`: 30 s doubling to at most an hour, +-20 % jitter."""
    doublings = min(max(attempts - 1, 0), 30)
    base = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * float(2**doublings))
    return base * random.uniform(0.8, 1.2)  # jitter, not a secret


@dataclass(frozen=True)
class _Due:
    id: int
    event_key: str
    target: str
    payload: str
    attempts: int


@dataclass
class Delivery:
    """What one `deliver` round did."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0


def _claim_due(app: App, limit: int) -> list[_Due]:
    """Claim up to `limit` due rows for this process (each claim a conditional UPDATE one process wins)."""
    now = app.clock.now()
    n = notifications.c
    free = or_(n.claimed_until.is_(None), n.claimed_until < now)
    with app.engine.begin() as conn:
        candidates = conn.execute(select(n.id).where(n.status == "pending", n.next_attempt_at <= now, free)
                                  .order_by(n.id).limit(limit)).scalars().all()
        claimed = []
        for row_id in candidates:
            result = conn.execute(update(notifications)
                                  .where(and_(n.id == row_id, n.status == "pending", free))
                                  .values(claimed_by=app.owner, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
                                  .returning(n.id, n.event_key, n.target, n.payload, n.attempts))
            row = result.first()
            if row is not None:
                claimed.append(_Due(*row))
    return claimed


def _finish(app: App, due: _Due, outcome: str, error: str | None) -> None:
    """Record a post's outcome: sent, retry later (with backoff) or failed for good; releases the claim."""
    now = app.clock.now()
    attempts = due.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "claimed_by": None, "claimed_until": None, "last_error": error}
    if outcome == "sent":
        values.update(status="sent", sent_at=now)
    elif outcome == "retry" and attempts < MAX_ATTEMPTS:
        values.update(next_attempt_at=now + timedelta(seconds=backoff(attempts)))
    else:
        values.update(status="failed")
    n = notifications.c
    with app.engine.begin() as conn:
        conn.execute(update(notifications).where(n.id == due.id, n.claimed_by == app.owner).values(**values))


async def _post(transport: httpx.AsyncBaseTransport, target: Notify, body: bytes,
                idempotency_key: str) -> tuple[str, str | None]:
    """POST one body; ("sent" | "retry" | "failed", a safe error line). Never raises, never shows the URL.

    Straight through the transport, not an `httpx.AsyncClient`: the client logs every request's URL (at
    INFO, logger `httpx`), and this URL is a secret. No redirect is followed.
    """
    headers = {"content-type": "application/json", "user-agent": f"cost-worker/{__version__}",
               "idempotency-key": idempotency_key}
    request = httpx.Request("POST", target.url.get_secret_value(), content=body, headers=headers,
                            extensions={"timeout": httpx.Timeout(REQUEST_SECONDS).as_dict()})
    try:
        async with asyncio.timeout(REQUEST_SECONDS):
            response = await transport.handle_async_request(request)
            # The answer's body is not read: a hostile receiver cannot make this process hold a large one.
            await response.aclose()
    except TimeoutError:
        return "retry", f"no answer within {REQUEST_SECONDS:.0f}s"
    except httpx.HTTPError as exc:
        return "retry", type(exc).__name__  # its message may quote the URL
    status = response.status_code
    if 200 <= status < 300:
        return "sent", None
    if status in _RETRYABLE or status >= 500:
        return "retry", f"HTTP {status}"
    return "failed", f"HTTP {status} (not retried: check the webhook URL and format)"


async def deliver(app: App, *, budget_seconds: float = 4.0,
                  transport: httpx.AsyncBaseTransport | None = None) -> Delivery:
    """Send the notifications that are due, for at most about `budget_seconds` (the rest wait a poll)."""
    targets = list(app.settings.notify)
    by_id = {target_id(t): t for t in targets}
    done = Delivery()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_seconds
    # The process's one TLS context: a new one per poll would load the CA bundle again (15-70 ms of CPU).
    async with transport or httpx.AsyncHTTPTransport(verify=tls_context()) as sender:
        while loop.time() < deadline:
            batch = await app.db(_claim_due, app, BATCH)
            if not batch:
                break
            for i, due in enumerate(batch):
                if loop.time() >= deadline:  # give the rest back at once rather than after their claim expires
                    for left in batch[i:]:
                        await app.db(_release, app, left)
                    return done
                target = by_id.get(due.target)
                if target is None:
                    await app.db(_finish, app, due, "failed", "webhook no longer configured")
                    done.failed += 1
                    continue
                payload = json.loads(due.payload)
                key = hashlib.sha256(f"{due.event_key}\x1f{due.target}".encode()).hexdigest()[:32]
                outcome, error = await _post(sender, target, render(payload, target.format), key)
                await app.db(_finish, app, due, outcome, error)
                where = describe(targets, target)
                if outcome == "sent":
                    done.sent += 1
                    log.info("notified %s: %s", where, payload.get("title"))
                elif outcome == "retry" and due.attempts + 1 < MAX_ATTEMPTS:
                    done.retrying += 1
                    log.warning("notification %s to %s failed (%s, attempt %d of %d); retrying later",
                                due.event_key, where, error, due.attempts + 1, MAX_ATTEMPTS)
                else:
                    done.failed += 1
                    log.error("notification %s to %s failed for good: %s", due.event_key, where, error)
    return done


def _release(app: App, due: _Due) -> None:
    n = notifications.c
    with app.engine.begin() as conn:
        conn.execute(update(notifications).where(n.id == due.id, n.claimed_by == app.owner)
                     .values(claimed_by=None, claimed_until=None))
