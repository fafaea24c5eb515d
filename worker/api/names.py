"""The names behind report ids: `GET /v1/organizations/api_keys` and `GET /v1/organizations/workspaces`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from worker.api.errors import ProtocolViolation

API_KEYS_PATH = "/v1/organizations/api_keys"
WORKSPACES_PATH = "/v1/organizations/workspaces"
_MAX_TEXT = 500


@dataclass(frozen=True, slots=True)
class Named:
    """An API key or workspace: `kind` is `api_key` or `workspace`; a key also names its workspace."""

    kind: str
    id: str
    name: str
    workspace_id: str | None = None


def _text(obj: Mapping[str, object], field: str, what: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise ProtocolViolation(f"{what}.{field} must be a non-empty string of at most {_MAX_TEXT} characters")
    return value


def parse_api_key(raw: object) -> Named:
    if not isinstance(raw, Mapping):
        raise ProtocolViolation("an api_keys item must be an object")
    scope = raw.get("scope")
    workspace = scope.get("workspace_id") if isinstance(scope, Mapping) else None
    return Named("api_key", _text(raw, "id", "api key"), _text(raw, "name", "api key"),
                 workspace if isinstance(workspace, str) and workspace else None)


def parse_workspace(raw: object) -> Named:
    if not isinstance(raw, Mapping):
        raise ProtocolViolation("a workspaces item must be an object")
    return Named("workspace", _text(raw, "id", "workspace"), _text(raw, "name", "workspace"))


__all__ = ["API_KEYS_PATH", "WORKSPACES_PATH", "Named", "parse_api_key", "parse_workspace"]
