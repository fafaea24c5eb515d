"""How a sync (or a connection test) reaches the Admin API: the client built from the settings, and an
integration's Admin key opened from its sealed row."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from worker.api import AdminApiClient, RequestGate, RequestStats
from worker.app import App
from worker.secret import AdminKey
from worker.storage.repo import Integration
from worker.vault import Keyring, Sealed, VaultError, integration_aad

__all__ = ["make_client", "open_key"]


def make_client(app: App, key: AdminKey, gate: RequestGate, stats: RequestStats | None = None,
                transport: httpx.AsyncBaseTransport | None = None,
                on_wait: Callable[[float, str], None] | None = None,
                retry_unreachable: bool = True) -> AdminApiClient:
    """An Admin API client with the app's base URL, clock, timeout, body cap and retry budget;
    `retry_unreachable=False` for the connection test (see AdminApiClient)."""
    s = app.settings
    return AdminApiClient(key, base_url=s.api_base_url, gate=gate, clock=app.clock, timeout=s.http_timeout,
                          transport=transport, max_attempts=s.max_attempts, max_retry_seconds=s.max_retry_seconds,
                          stats=stats, on_wait=on_wait, max_response_bytes=s.max_response_bytes,
                          retry_unreachable=retry_unreachable)


def open_key(keyring: Keyring, integration: Integration) -> AdminKey:
    """The integration's Admin key; a VaultError names the integration (never garbage sent to the API)."""
    plaintext = keyring.open(Sealed(integration.key_id, integration.key_ciphertext),
                             aad=integration_aad(integration.id), context=integration.display)
    try:
        return AdminKey(plaintext.decode())
    except (UnicodeDecodeError, ValueError):
        raise VaultError(f"{integration.display}: the stored key is not an Admin key; store one with "
                         f"`cost-worker integrations replace-key {integration.id}`") from None
