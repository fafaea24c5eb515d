"""The OpenAPI 3.1 document of /api/v1/ (served at /api/v1/openapi.json). Written out here rather than
derived from the routes, so the test that compares the two catches a route added without its description."""

from __future__ import annotations

from typing import Any

from worker import __version__

_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}, "description": "Integration id."}
_DAY = {"type": "string", "format": "date"}
_MONEY = {"type": "string", "description": "Exact dollars as decimal text (every digit; never a float).",
          "examples": ["18.432075"]}
_ERROR = {"description": "The one-line error (the CLI's, for the same failure).",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_UNAUTHORIZED = {"description": "No or a wrong bearer token / session."}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _range(required: bool) -> list[dict[str, Any]]:
    return [{"name": "since", "in": "query", "required": required, "schema": _DAY, "description": "First UTC day."},
            {"name": "until", "in": "query", "required": required, "schema": _DAY,
             "description": "Last UTC day, inclusive."}]


def _key_body(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    properties: dict[str, Any] = {"admin_key": {"type": "string", "description": "An Admin API key (sk-ant-admin...); "
                                                "never echoed, stored only sealed."}}
    properties.update(extra or {})
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["admin_key"], "properties": properties}}}}


def document() -> dict[str, Any]:
    ref = "#/components/schemas/"
    return {
        "openapi": "3.1.0",
        "info": {"title": "cost-worker", "version": __version__,
                 "description": "The synced Anthropic bill and its integrations. Every route needs "
                                "`Authorization: Bearer <COST_WORKER_UI_TOKEN>` (or the dashboard's session "
                                "cookie with its CSRF token for POST and DELETE). See docs/dashboard.md."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": {
            "/openapi.json": {"get": {"summary": "This document.", "responses": {
                "200": _json({"type": "object"}, "The OpenAPI document.")}}},
            "/integrations": {
                "get": {"summary": "Every integration (the records of `integrations list --format json`, with "
                                   "backfill progress).",
                        "responses": {"200": _json({"type": "array", "items": {"$ref": ref + "Integration"}},
                                                   "The integrations."), "401": _UNAUTHORIZED}},
                "post": {"summary": "Connect an organization (`connect`): tests the key, stores it sealed, queues the "
                                    "tier's backfill.",
                         "requestBody": _key_body({
                             "label": {"type": ["string", "null"]},
                             "tier": {"type": "string", "enum": ["free", "pro", "ultimate"], "default": "free"},
                             "source": {"type": "string", "enum": ["legacy", "analytics", "both"], "default": "both"}}),
                         "responses": {"201": _json({"type": "object", "properties": {
                             "id": {"type": "integer"}, "organization": {"$ref": ref + "Organization"},
                             "key_hint": {"type": "string"}, "backfill_days": {"type": "integer"}}},
                             "Connected: the new integration's id."),
                             "400": _ERROR, "422": _ERROR, "401": _UNAUTHORIZED, "403": _ERROR}}},
            "/integrations/{id}": {
                "get": {"summary": "One integration, with its recent sync runs.", "parameters": [_ID],
                        "responses": {"200": _json({"allOf": [{"$ref": ref + "Integration"}, {
                            "type": "object", "properties": {"runs": {"type": "array",
                                                                      "items": {"$ref": ref + "SyncRun"}}}}]},
                            "The integration."), "404": _ERROR, "401": _UNAUTHORIZED}},
                "delete": {"summary": "Remove an integration, its sealed key and every row synced for it.",
                           "parameters": [_ID],
                           "responses": {"200": _json({"type": "object", "properties": {
                               "removed": {"type": "integer"}}}, "Removed."), "404": _ERROR, "401": _UNAUTHORIZED,
                               "403": _ERROR}}},
            "/integrations/{id}/sync": {"post": {
                "summary": "Force a sync now (`sync-now --integration ID`): the pending backfill, then the trailing "
                           "window.", "parameters": [_ID],
                "responses": {"202": _json({"type": "object", "properties": {"run_id": {"type": "integer"},
                                                                            "integration_id": {"type": "integer"}}},
                                           "Started: the run's id."),
                              "409": _json({"type": "object", "properties": {
                                  "error": {"type": "string"},
                                  "run": {"anyOf": [{"$ref": ref + "SyncRun"}, {"type": "null"}]}}},
                                  "A sync of it runs already (here or in another process): that run."),
                              "404": _ERROR, "401": _UNAUTHORIZED, "403": _ERROR}}},
            "/spend": {"get": {
                "summary": "Billed cost and tokens per UTC day and model (and `by`): the rows and fields of "
                           "`report [--by BY] --format json`.",
                "parameters": [*_range(True),
                               {"name": "by", "in": "query", "required": False, "schema": {
                                   "type": "string", "enum": ["model", "workspace", "api_key", "actor", "service_tier"]},
                                "description": "Also per this dimension (each day's bill of record); without it the "
                                               "legacy reports per day and model."},
                               {"name": "integration", "in": "query", "required": False,
                                "schema": {"type": "integer"}, "description": "Only this integration."}],
                "responses": {"200": _json({"type": "array", "items": {"$ref": ref + "SpendRow"}}, "The rows."),
                              "400": _ERROR, "404": _ERROR, "401": _UNAUTHORIZED}}},
            "/budgets": {"get": {"summary": "Each configured budget as of today (`budgets --format json`).",
                                 "responses": {"200": _json({"type": "array", "items": {"$ref": ref + "Budget"}},
                                                            "The budgets."), "401": _UNAUTHORIZED}}},
            "/anomalies": {"get": {"summary": "Spend anomalies of the complete days in the range "
                                              "(`anomalies --format json`).", "parameters": _range(True),
                                   "responses": {"200": _json({"type": "array", "items": {"$ref": ref + "Anomaly"}},
                                                              "The anomalies."), "400": _ERROR,
                                                 "401": _UNAUTHORIZED}}},
            "/connection-test": {"post": {
                "summary": "The onboarding test (`test-connection`): GET /v1/organizations/me and one small cost "
                           "report with this key.", "requestBody": _key_body(),
                "responses": {"200": _json({"type": "object", "properties": {
                    "ok": {"type": "boolean"}, "organization": {"$ref": ref + "Organization"}}},
                    "The key works: its organization."), "400": _ERROR, "422": _ERROR, "401": _UNAUTHORIZED,
                    "403": _ERROR}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Organization": {"type": "object", "properties": {"id": {"type": "string"},
                                                                  "name": {"type": "string"}}},
                "Integration": {"type": "object", "properties": {
                    **{k: {"type": ["string", "null"]} for k in (
                        "label", "tier", "status", "key_hint", "source", "analytics_status", "analytics_detail",
                        "analytics_refreshed_at", "organization_id", "organization_name", "last_success_at",
                        "last_error", "backfill_start", "backfill_end", "created_at")},
                    "id": {"type": "integer"}, "backfill_done": {"type": "boolean"},
                    "backfill_days_done": {"type": "integer"}, "backfill_days_total": {"type": "integer"}}},
                "SyncRun": {"type": "object", "properties": {
                    **{k: {"type": "integer"} for k in ("id", "integration_id", "requests", "pages", "rows",
                                                        "rate_limited", "retries")},
                    **{k: {"type": ["string", "null"]} for k in ("kind", "window_start", "window_end", "started_at",
                                                                 "finished_at", "outcome", "error")},
                    "waited_seconds": {"type": "number"}, "duration_seconds": {"type": ["number", "null"]}}},
                "SpendRow": {"type": "object", "properties": {
                    "date": _DAY, "model": {"type": ["string", "null"]}, "by": {"type": "string"},
                    "key": {"type": ["string", "null"]}, "name": {"type": ["string", "null"]}, "cost_usd": _MONEY,
                    "list_cost_usd": {"anyOf": [_MONEY, {"type": "null"}]},
                    **{k: {"type": "integer"} for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                                        "cache_write_tokens")}}},
                "Budget": {"type": "object", "properties": {
                    "name": {"type": "string"}, "scope": {"type": "string"}, "period_start": _DAY, "period_end": _DAY,
                    "limit_usd": _MONEY, "spend_usd": _MONEY, "forecast_usd": _MONEY,
                    "status": {"type": "string", "enum": ["ok", "warn", "over", "forecast_over"]},
                    "error": {"type": "string", "description": "Set instead of the figures when it cannot be "
                                                               "evaluated."}}},
                "Anomaly": {"type": "object", "properties": {
                    "date": _DAY, "integration_id": {"type": "integer"}, "scope": {"type": "string"},
                    "key": {"type": "string"}, "cost_usd": _MONEY, "baseline_usd": _MONEY, "score": {"type": "number"},
                    "direction": {"type": "string", "enum": ["spike", "drop"]}}},
            },
        },
    }
