"""Access to the dashboard and the API: one token (COST_WORKER_UI_TOKEN or its _FILE), never shown.

- API clients send `Authorization: Bearer <token>`.
- A browser logs in once with the token and keeps a session cookie (`Secure; HttpOnly; SameSite=Strict`)
  whose value is an issue time, a random nonce and an HMAC of both under a key derived from the token: never
  the token, checkable by every replica without shared state, void once the token changes.
- State-changing requests refuse cross-site senders (`Sec-Fetch-Site`, `Origin`), and a cookie session must
  also send its CSRF token (an HMAC of the session nonce) as `X-CSRF-Token` or a `csrf` form field.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import NoReturn

from worker.settings import Settings, SettingsError

COOKIE = "cw_session"
SESSION_SECONDS = 7 * 24 * 3600
MIN_TOKEN_CHARS = 16


class UiToken:
    """The dashboard's token. Compared in constant time; its repr and str never show it."""

    __slots__ = ("_key", "_value")

    def __init__(self, value: str, source: str = "COST_WORKER_UI_TOKEN") -> None:
        value = value.strip()
        if len(value) < MIN_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in value):
            raise SettingsError(f"invalid setting {source}: the dashboard token needs at least {MIN_TOKEN_CHARS} "
                                "printable characters without spaces (e.g. `openssl rand -hex 32`)")
        self._value = value
        self._key = hashlib.sha256(b"cost-worker/ui-session/v1\x00" + value.encode()).digest()

    def matches(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self._value.encode())

    def _mac(self, purpose: str, text: str) -> str:
        return hmac.new(self._key, f"{purpose}\x00{text}".encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        """A fresh session cookie value: `<issued>.<nonce>.<mac>`."""
        body = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(18)}"
        return f"{body}.{self._mac('session', body)}"

    def session_ok(self, value: str, now: float | None = None) -> bool:
        issued, _, rest = value.partition(".")
        nonce, _, mac = rest.partition(".")
        if not (issued.isdigit() and nonce and mac):
            return False
        if not hmac.compare_digest(mac, self._mac("session", f"{issued}.{nonce}")):
            return False
        age = (now if now is not None else time.time()) - int(issued)
        return 0 <= age <= SESSION_SECONDS

    def csrf(self, session: str) -> str:
        """The CSRF token of a session (pages embed it; state-changing requests send it back)."""
        return self._mac("csrf", session)

    def csrf_ok(self, session: str, presented: str) -> bool:
        return bool(presented) and hmac.compare_digest(presented, self.csrf(session))

    def __repr__(self) -> str:
        return "UiToken('***')"

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("UiToken cannot be pickled")


def load_ui_token(settings: Settings) -> UiToken | None:
    """The configured token (from COST_WORKER_UI_TOKEN or the file of COST_WORKER_UI_TOKEN_FILE), None when
    neither is set; SettingsError (one line, never the value) when both are, or the value is unusable."""
    if settings.ui_token is not None and settings.ui_token_file is not None:
        raise SettingsError("set only one of COST_WORKER_UI_TOKEN and COST_WORKER_UI_TOKEN_FILE")
    if settings.ui_token is not None:
        return UiToken(settings.ui_token.get_secret_value())
    if settings.ui_token_file is not None:
        path = Path(settings.ui_token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SettingsError(f"invalid setting COST_WORKER_UI_TOKEN_FILE: cannot read {path}: {reason}") from None
        return UiToken(text, source="COST_WORKER_UI_TOKEN_FILE")
    return None


def cross_site(headers: dict[str, str], host: str) -> bool:
    """True when a browser says the request comes from another site: `Sec-Fetch-Site` other than same-origin
    or none (typed, bookmarked), or an `Origin` whose host is not ours. Clients without either (curl, SDKs)
    are not browsers and pass."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None:
        return False
    if origin == "null":
        return True
    return origin.split("://", 1)[-1].rstrip("/").lower() != host.lower()


def cookie_value(headers: dict[str, str], name: str = COOKIE) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def session_cookie(value: str) -> str:
    return f"{COOKIE}={value}; Path=/; Max-Age={SESSION_SECONDS}; Secure; HttpOnly; SameSite=Strict"


def cleared_cookie() -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
