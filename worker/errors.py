"""The one line a known error becomes, and its exit code: what the CLI prints and the HTTP API answers."""

from __future__ import annotations

EXIT_FAILED, EXIT_USAGE = 1, 2  # as worker.cli_support's (which imports only click)


def known_error(exc: BaseException) -> tuple[str, int] | None:
    """A known error's one line (keys masked) and exit code (2 bad usage or input, 1 a failure); None for a bug."""
    from worker.api import ApiError, IntegrationBlocked
    from worker.integrations import IntegrationError
    from worker.logs import scrub
    from worker.secret import InvalidAdminKey
    from worker.settings import SettingsError
    from worker.storage.db import DatabaseError
    from worker.vault import InvalidMasterKey, VaultError

    if isinstance(exc, (SettingsError, InvalidAdminKey, InvalidMasterKey, IntegrationError)):
        return scrub(str(exc)), EXIT_USAGE
    if isinstance(exc, (IntegrationBlocked, ApiError, VaultError, DatabaseError)):
        return scrub(str(exc)), EXIT_FAILED
    return None
