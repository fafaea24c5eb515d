"""The JSON API under /api/v1/: the same records as the CLI's `--format json`, and its onboarding actions.

Reads reuse the commands' code (`report`, `integrations list`, `budgets`, `anomalies`); actions reuse
`test-connection`/`connect` (worker.integrations) and `sync-now`'s sync, run by this process's service, so
a forced sync shares leases with every other process. Errors are `{"error": "<the CLI's one line>"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import date
from typing import TYPE_CHECKING, Any, cast

from worker.errors import EXIT_USAGE, known_error
from worker.web.messages import Request, Response, Route, json_response

if TYPE_CHECKING:
    from worker.api import Organization
    from worker.app import App
    from worker.secret import AdminKey
    from worker.settings import Tier
    from worker.sync.scheduler import SyncService
    from worker.sync.streams import Source

SPEND_BY = ("model", "workspace", "api_key", "actor", "service_tier")
TIERS = ("free", "pro", "ultimate")
MAX_DAYS = 3660


class BadRequest(Exception):
    """A request the API refuses (400) with this one line."""


def day_param(query: dict[str, str], name: str, default: date | None = None) -> date:
    value = query.get(name)
    if value is None or value == "":
        if default is None:
            raise BadRequest(f"missing query parameter {name} (a UTC day, YYYY-MM-DD)")
        return default
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: expected a date YYYY-MM-DD, got {value[:40]!r}") from None


def day_range(query: dict[str, str], default: tuple[date, date] | None = None) -> tuple[date, date]:
    since = day_param(query, "since", default[0] if default else None)
    until = day_param(query, "until", default[1] if default else None)
    if until < since:
        raise BadRequest("until is before since")
    if (until - since).days > MAX_DAYS:
        raise BadRequest(f"at most {MAX_DAYS} days at once")
    return since, until


def int_param(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise BadRequest(f"{name}: expected an integration id, got {value[:40]!r}")
    return int(value)


def body_object(request: Request) -> dict[str, Any]:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """The CLI's one line for a known error, with 400 (bad input) or 422 (the key or the API refused)."""
    known = known_error(exc)
    if known is None:
        return None
    return (400 if known[1] == EXIT_USAGE else 422), known[0]


class Api:
    def __init__(self, app: App, service: SyncService) -> None:
        self.app, self.service = app, service

    def today(self) -> date:
        return self.app.clock.now().date()

    # --- reads ----------------------------------------------------------------------------------

    async def integrations(self, request: Request) -> Response:
        from worker.web.views import integration_summaries

        def read() -> list[dict[str, Any]]:
            with self.app.engine.connect() as conn:
                return integration_summaries(conn)
        return json_response(200, await self.app.db(read))

    async def integration(self, request: Request) -> Response:
        from worker.web.views import integration_summaries, run_records

        iid = int(request.params["id"])

        def read() -> dict[str, Any] | None:
            with self.app.engine.connect() as conn:
                found = integration_summaries(conn, iid)
                return {**found[0], "runs": run_records(conn, iid)} if found else None
        record = await self.app.db(read)
        if record is None:
            return json_response(404, {"error": f"no integration {iid}"})
        return json_response(200, record)

    async def spend(self, request: Request) -> Response:
        from worker.sources.report import report_records
        from worker.storage import repo

        since, until = day_range(request.query)
        by = request.query.get("by") or None
        if by is not None and by not in SPEND_BY:
            raise BadRequest(f"by must be one of {', '.join(SPEND_BY)}")
        iid = int_param(request.query, "integration")

        def read() -> list[dict[str, Any]] | None:
            with self.app.engine.connect() as conn:
                if iid is not None and repo.get_integration(conn, iid) is None:
                    return None
                return report_records(conn, since, until, by=by, integration_id=iid)
        records = await self.app.db(read)
        if records is None:
            return json_response(404, {"error": f"no integration {iid}"})
        return json_response(200, records)

    async def budgets(self, request: Request) -> Response:
        from worker.web.views import budgets

        def read() -> list[dict[str, Any]]:
            with self.app.engine.connect() as conn:
                return budgets(conn, self.app.settings, self.today())
        return json_response(200, await self.app.db(read))

    async def anomalies(self, request: Request) -> Response:
        from worker.web.views import anomalies

        since, until = day_range(request.query)

        def read() -> list[dict[str, Any]]:
            with self.app.engine.connect() as conn:
                return anomalies(conn, self.app.settings, since, until, self.today())
        return json_response(200, await self.app.db(read))

    async def openapi(self, request: Request) -> Response:
        from worker.web.openapi import document

        return json_response(200, document())

    # --- actions ------------------------------------------------------------------------------

    async def test_key(self, value: object) -> tuple[AdminKey, Organization]:
        """The onboarding test of `test-connection` on this process's transport and request budget."""
        from worker.integrations import check_connection
        from worker.secret import AdminKey

        if not isinstance(value, str):
            raise BadRequest("admin_key: expected the Admin API key as a string")
        key = AdminKey(value)
        return key, await check_connection(self.app, key, transport=self.service.transport)

    async def connection_test(self, request: Request) -> Response:
        body = body_object(request)
        _key, org = await self.test_key(body.get("admin_key"))
        return json_response(200, {"ok": True, "organization": {"id": org.id, "name": org.name}})

    async def connect(self, request: Request) -> Response:
        return json_response(201, await self.connect_values(body_object(request)))

    async def connect_values(self, body: dict[str, Any]) -> dict[str, Any]:
        """`connect` with these values: the new integration's id, organization, key hint and backfill days."""
        from worker.integrations import check_label, connect
        from worker.sync.streams import SOURCES

        tier, source, label = body.get("tier", "free"), body.get("source", "both"), body.get("label")
        if tier not in TIERS:
            raise BadRequest(f"tier must be one of {', '.join(TIERS)}")
        if source not in SOURCES:
            raise BadRequest(f"source must be one of {', '.join(SOURCES)}")
        if label is not None and not isinstance(label, str):
            raise BadRequest("label: expected a string")
        label = check_label(label)
        key, org = await self.test_key(body.get("admin_key"))
        iid = await self.app.db(lambda: connect(self.app, key, org, label=label, tier=cast("Tier", tier),
                                                source=cast("Source", source)))
        return {"id": iid, "organization": {"id": org.id, "name": org.name}, "key_hint": key.hint,
                "backfill_days": self.app.settings.backfill_days(cast("Tier", tier))}

    async def sync(self, request: Request) -> Response:
        from worker.sync.scheduler import NoSuchIntegration, SyncRunning

        iid = int(request.params["id"])
        try:
            run_id = await self.service.force_sync(iid)
        except NoSuchIntegration:
            return json_response(404, {"error": f"no integration {iid}"})
        except SyncRunning as busy:
            return json_response(409, {"error": f"integration {iid} is syncing already", "run": busy.run})
        return json_response(202, {"run_id": run_id, "integration_id": iid})

    async def delete(self, request: Request) -> Response:
        from worker.integrations import remove

        iid = int(request.params["id"])
        task = self.service.tasks.get(iid)
        if task is not None:  # its sync would only fail on the vanished row: stop it first
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), 10)
        if not await self.app.db(lambda: remove(self.app.engine, iid)):
            return json_response(404, {"error": f"no integration {iid}"})
        return json_response(200, {"removed": iid})


def guarded(handler: Any) -> Any:
    """Bad input and known errors as `{"error": ...}` (400/422), never a traceback or the key."""
    async def call(request: Request) -> Response:
        try:
            response: Response = await handler(request)
        except BadRequest as exc:
            return json_response(400, {"error": str(exc)})
        except json.JSONDecodeError:
            return json_response(400, {"error": "the body is not JSON"})
        except Exception as exc:
            known = error_status(exc)
            if known is None:
                raise
            return json_response(known[0], {"error": known[1]})
        return response
    return call


def routes(api: Api) -> list[Route]:
    v1 = "/api/v1"
    return [Route(method, v1 + path, guarded(handler)) for method, path, handler in [
        ("GET", "/openapi.json", api.openapi),
        ("GET", "/integrations", api.integrations),
        ("POST", "/integrations", api.connect),
        ("GET", "/integrations/{id}", api.integration),
        ("DELETE", "/integrations/{id}", api.delete),
        ("POST", "/integrations/{id}/sync", api.sync),
        ("GET", "/spend", api.spend),
        ("GET", "/budgets", api.budgets),
        ("GET", "/anomalies", api.anomalies),
        ("POST", "/connection-test", api.connection_test),
    ]]
