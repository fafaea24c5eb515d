"""`GET /v1/organizations/api_keys` and `GET /v1/organizations/workspaces`: the names behind the ids.

Shapes follow the official SDK's `BetaAPIKey`, `BetaWorkspace` and `SyncPage` (`data`, `has_more`,
`first_id`, `last_id`; `after_id`/`before_id` cursors, `limit` 1-1000, default 20). A key's scope names
its workspace's real id, also for the default workspace; `/workspaces` lists the default one only with
`include_default=true`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.simulator.data import Org, stable_hash
from worker.simulator.errors import invalid

API_KEYS_PATH = "/v1/organizations/api_keys"
WORKSPACES_PATH = "/v1/organizations/workspaces"
_CREATED = "2025-06-01T12:00:00Z"
_KEY_PARAMS = {"after_id", "before_id", "created_by_user_id", "limit", "status", "workspace_id"}
_WORKSPACE_PARAMS = {"after_id", "before_id", "include_archived", "include_default", "limit"}


def api_key_objects(org: Org) -> list[dict[str, Any]]:
    out = []
    for ws in org.workspaces:
        for key in ws.api_keys:
            principal: dict[str, Any] | None = None
            if key.service_account_id is not None:
                principal = {"type": "service_account_actor", "service_account_id": key.service_account_id}
            elif key.user_id is not None:
                principal = {"type": "user_actor", "user_id": key.user_id}
            creator = org.users[stable_hash("creator", key.id) % len(org.users)]
            out.append({
                "id": key.id, "type": "api_key", "name": key.name, "status": "active",
                "created_at": _CREATED, "created_by": {"id": creator.id, "type": "user"}, "expires_at": None,
                "partial_key_hint": f"sk-ant-api03-...{key.id[-4:]}", "principal": principal,
                "scope": {"type": "workspace", "workspace_id": ws.tagged_id},
            })
    return out


def workspace_objects(org: Org, include_default: bool) -> list[dict[str, Any]]:
    return [{
        "id": ws.tagged_id, "type": "workspace", "name": ws.name, "archived_at": None,
        "compartment_id": f"cmpt_{ws.tagged_id[-12:]}", "created_at": _CREATED,
        "data_residency": {"allowed_inference_geos": "unrestricted", "default_inference_geo": "global",
                           "workspace_geo": "us"},
        "display_color": "#6C5BB9", "external_key_id": None, "tags": {}, "user_profile_id": None,
    } for ws in org.workspaces if include_default or ws.id is not None]


def _flag(name: str, value: str | None) -> bool:
    if value is None:
        return False
    if value.lower() not in ("true", "false"):
        raise invalid(f"{name}: must be true or false")
    return value.lower() == "true"


def _page(items: list[dict[str, Any]], params: dict[str, str]) -> bytes:
    try:
        limit = int(params.get("limit", "20"))
    except ValueError:
        raise invalid("limit: not an integer") from None
    if not 1 <= limit <= 1000:
        raise invalid(f"limit: must be between 1 and 1000, got {limit}")
    ids = [i["id"] for i in items]
    if "after_id" in params and "before_id" in params:
        raise invalid("after_id and before_id cannot both be given")
    if "after_id" in params:
        if params["after_id"] not in ids:
            raise invalid("after_id: no such object")
        start = ids.index(params["after_id"]) + 1
        chunk = items[start:start + limit]
        has_more = start + limit < len(items)
    elif "before_id" in params:
        if params["before_id"] not in ids:
            raise invalid("before_id: no such object")
        stop = ids.index(params["before_id"])
        chunk = items[max(0, stop - limit):stop]
        has_more = stop - limit > 0
    else:
        chunk, has_more = items[:limit], len(items) > limit
    return json.dumps({"data": chunk, "has_more": has_more, "first_id": chunk[0]["id"] if chunk else None,
                       "last_id": chunk[-1]["id"] if chunk else None}, separators=(",", ":")).encode()


def _params(query: Sequence[tuple[str, str]], allowed: set[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in query:
        if key not in allowed:
            raise invalid(f"{key}: unknown query parameter")
        if key in params:
            raise invalid(f"{key}: specified more than once")
        params[key] = value
    return params


def list_api_keys(org: Org, query: Sequence[tuple[str, str]]) -> bytes:
    params = _params(query, _KEY_PARAMS)
    items = api_key_objects(org)
    if "workspace_id" in params:
        items = [i for i in items if i["scope"].get("workspace_id") == params["workspace_id"]]
    if "status" in params:
        if params["status"] not in ("active", "archived", "expired", "inactive"):
            raise invalid("status: must be active, archived, expired or inactive")
        items = [i for i in items if i["status"] == params["status"]]
    if "created_by_user_id" in params:
        items = [i for i in items if i["created_by"]["id"] == params["created_by_user_id"]]
    return _page(items, params)


def list_workspaces(org: Org, query: Sequence[tuple[str, str]]) -> bytes:
    params = _params(query, _WORKSPACE_PARAMS)
    _flag("include_archived", params.get("include_archived"))
    return _page(workspace_objects(org, _flag("include_default", params.get("include_default"))), params)


__all__ = ["API_KEYS_PATH", "WORKSPACES_PATH", "api_key_objects", "list_api_keys", "list_workspaces",
           "workspace_objects"]
