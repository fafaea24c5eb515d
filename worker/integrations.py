"""Integrations: the connection test, connecting (key sealed to its row), removing, and master-key rotation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Connection, Engine

from worker.api import Organization
from worker.app import App
from worker.ratelimit import OrgGate, org_bucket
from worker.secret import AdminKey
from worker.settings import Tier
from worker.storage import analytics as astore
from worker.storage import repo
from worker.sync.access import make_client
from worker.sync.streams import SOURCES, Source
from worker.sync.windows import latest_slot, window_ending
from worker.textsafe import clean, has_control
from worker.vault import Keyring, Sealed, VaultError, integration_aad

log = logging.getLogger(__name__)

LABEL_MAX = 200
"""Characters of a label (the `integrations.label` column)."""


class IntegrationError(Exception):
    """A user-facing failure about an integration (one line)."""


def _iso(value: datetime | date | None) -> str | None:
    return value.isoformat() if value is not None else None


def integration_records(conn: Connection, integration_id: int | None = None) -> list[dict[str, Any]]:
    """`integrations list --format json`'s records (also the HTTP API's): every integration, or one."""
    items = repo.list_integrations(conn)
    if integration_id is not None:
        items = [i for i in items if i.id == integration_id]
    states = astore.states(conn)
    rows = []
    for i in items:
        state = states.get(i.id) if i.source != "legacy" else None
        rows.append({
            "id": i.id, "label": i.label, "tier": i.tier, "status": i.status, "key_hint": i.key_hint,
            "source": i.source + (" (analytics refused)" if state is not None and state.status == "refused" else ""),
            "analytics_status": state.status if state is not None else None,
            "analytics_detail": state.detail if state is not None else None,
            "analytics_refreshed_at": _iso(state.refreshed_at) if state is not None else None,
            "organization_id": i.organization_id, "organization_name": i.organization_name,
            "last_success_at": _iso(i.last_success_at), "last_error": i.last_error,
            "backfill_start": _iso(i.backfill_start), "backfill_end": _iso(i.backfill_end),
            "backfill_done": i.backfill_done, "created_at": _iso(i.created_at),
        })
    return rows


def check_label(label: str | None) -> str | None:
    """A label typed by the user, stripped; None when absent or blank. Refused (IntegrationError) when it
    holds a control character (a newline, an escape sequence) or is longer than `LABEL_MAX`."""
    if label is None or not label.strip():
        return None
    if has_control(label):
        raise IntegrationError("--label must be one line of text, without control characters (newlines, tabs, "
                               "escape sequences)")
    label = label.strip()
    if len(label) > LABEL_MAX:
        raise IntegrationError(f"--label is longer than {LABEL_MAX} characters")
    return label


def default_label(org: Organization) -> str:
    """`Anthropic - <organization>`: the name as the API gave it, without control characters (it is shown
    on terminals and in /metrics), cut to `LABEL_MAX`."""
    return f"Anthropic - {clean(org.name) or org.id}"[:LABEL_MAX]


async def check_connection(app: App, key: AdminKey, *, transport: httpx.AsyncBaseTransport | None = None,
                           on_wait: Callable[[float, str], None] | None = None) -> Organization:
    """GET /me, then one cost_report request with limit=1 (proves report access). Raises ApiError.

    A base URL that cannot be connected to fails at once (ApiUnreachable): during onboarding that is
    a wrong setting, and retrying it would only hide the answer behind minutes of backoff."""
    # Before /me the organization is unknown: that first request is counted against a bucket of the key,
    # then charged to the organization's bucket so the report request after it waits its turn.
    key_gate = OrgGate(app.engine, f"key:{key.fingerprint}", app.budget, app.clock)
    async with make_client(app, key, key_gate, transport=transport, on_wait=on_wait,
                           retry_unreachable=False) as client:
        org = await client.organization()
        await key_gate.close()
        org_gate = OrgGate(app.engine, org_bucket(org.id), app.budget, app.clock)
        await asyncio.to_thread(org_gate.charge)
        client.gate = org_gate
        today = app.clock.now().date()
        try:
            async for _page in client.cost_pages(today, today + timedelta(days=1), limit=1):
                break
        finally:
            await org_gate.close()
    return org


def connect(app: App, key: AdminKey, org: Organization, *, label: str | None, tier: Tier,
            source: Source = "both") -> int:
    """Store a tested key for `org`, sealed with AES-256-GCM to the new row, and queue its backfill of `source`
    (`legacy` reports, the `analytics` API, or `both`)."""
    if source not in SOURCES:
        raise IntegrationError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    label = check_label(label) or default_label(org)
    now = app.clock.now()
    first, last = window_ending(now.date(), app.settings.backfill_days(tier))
    with app.engine.begin() as conn:
        existing = repo.find_by_organization(conn, org.id)
        if existing:
            raise IntegrationError(
                f"organization {org.name!r} is already connected as integration {existing[0].id}; to use this "
                f"key for it: `cost-worker integrations replace-key {existing[0].id}`")
        integration_id = repo.insert_integration(
            conn, label=label, tier=tier,
            organization_id=org.id, organization_name=org.name, key_ciphertext=b"", key_id="",
            key_hint=key.hint, status="pending", created_at=now, updated_at=now, backfill_start=first,
            backfill_end=last, cost_checkpoint=first, usage_checkpoint=first, backfill_done=False, source=source,
            # Today's 06:00 run is covered by the backfill itself, which reads through today.
            last_daily_slot=latest_slot(now, app.settings.daily_sync_time),
        )
        sealed = app.keyring.seal(key.reveal().encode(), aad=integration_aad(integration_id))
        repo.update_integration(conn, integration_id, key_ciphertext=sealed.blob, key_id=sealed.key_id)
    log.info("integration %d connected for organization %s (tier %s, backfill %s..%s)",
             integration_id, org.id, tier, first, last)
    return integration_id


def replace_key(app: App, integration_id: int, key: AdminKey, org: Organization) -> repo.Integration:
    """Store a new, tested key of the same organization in place of the integration's key (a revoked or
    rotated one), keeping its synced rows, checkpoints and history. Returns the integration as it was."""
    now = app.clock.now()
    with app.engine.begin() as conn:
        integ = repo.get_integration(conn, integration_id)
        if integ is None:
            raise IntegrationError(f"no integration {integration_id} (see `cost-worker integrations list`)")
        if org.id != integ.organization_id:
            # Another organization's key would mix two bills in one integration's rows.
            raise IntegrationError(
                f"this key belongs to organization {org.name!r} ({org.id}), but integration {integration_id} is "
                f"{integ.organization_name!r} ({integ.organization_id}); connect it with `cost-worker connect`")
        sealed = app.keyring.seal(key.reveal().encode(), aad=integration_aad(integration_id))
        values: dict[str, object] = {"key_ciphertext": sealed.blob, "key_id": sealed.key_id,
                                     "key_hint": key.hint, "updated_at": now}
        if integ.status == "error":
            values.update(failed_attempts=0, retry_at=now)  # a new key: `run` tries again at its next poll
            if not integ.backfill_done:
                values["status"] = "pending"  # `run` resumes the backfill from its checkpoints
        repo.update_integration(conn, integration_id, **values)
    log.info("integration %d: Admin key replaced (organization %s)", integration_id, org.id)
    return integ


def set_source(app: App, integration_id: int, source: Source) -> repo.Integration:
    """Change which bills an integration syncs. Days the new source still lacks are backfilled by the next
    sync (`run` picks it up; `sync-now` does it at once); stored rows of a source no longer synced stay.
    Returns the integration as it was."""
    if source not in SOURCES:
        raise IntegrationError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    now = app.clock.now()
    with app.engine.begin() as conn:
        integ = repo.get_integration(conn, integration_id)
        if integ is None:
            raise IntegrationError(f"no integration {integration_id} (see `cost-worker integrations list`)")
        values: dict[str, object] = {"source": source, "updated_at": now}
        # Anything but dropping a source adds days to read: analytics ones, or legacy ones from 2026 on.
        gains = source != integ.source and not (integ.source == "both" and source != "both")
        if gains:
            values["backfill_done"] = False
            if integ.status == "ok":
                values["status"] = "pending"  # `run` dispatches the backfill it now owes
        repo.update_integration(conn, integration_id, **values)
    log.info("integration %d: source %s -> %s", integration_id, integ.source, source)
    return integ


@dataclass
class RotationResult:
    rotated: int
    already_current: int
    failed: list[str]


def rotate_keys(engine: Engine, keyring: Keyring) -> RotationResult:
    """Re-seal every stored key under the current master key, one row per transaction (resumable)."""
    result = RotationResult(0, 0, [])
    with engine.begin() as conn:
        rows = repo.list_integrations(conn)
    for integ in rows:
        if not keyring.needs_rotation(integ.key_id):
            result.already_current += 1
            continue
        try:
            sealed = keyring.reseal(Sealed(integ.key_id, integ.key_ciphertext), aad=integration_aad(integ.id),
                                    context=integ.display)
        except VaultError as exc:
            result.failed.append(str(exc))
            continue
        with engine.begin() as conn:
            # Compare-and-set on the old key id: a concurrent rotation never overwrites newer work.
            done = repo.reseal_key(conn, integ.id, integ.key_id, sealed.blob, sealed.key_id)
        result.rotated += done
    return result


def remove(engine: Engine, integration_id: int) -> bool:
    with engine.begin() as conn:
        return repo.delete_integration(conn, integration_id)
