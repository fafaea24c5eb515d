"""The router of the dashboard and the API: authentication, cross-site refusal, security headers.

`worker.http` hands it every request that is not a probe or /metrics, and only when a UI token is set.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING

from worker.web.auth import UiToken, cookie_value, cross_site
from worker.web.messages import Request, Response, Route, json_response, redirect

if TYPE_CHECKING:
    from worker.app import App
    from worker.sync.scheduler import SyncService

log = logging.getLogger("worker.web")

# No inline script or style anywhere: every script and stylesheet is a file of this package. The referrer
# policy is same-origin, not no-referrer: with no-referrer Chromium sends `Origin: null` on form posts.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [("content-security-policy", CSP), ("x-content-type-options", "nosniff"),
                    ("referrer-policy", "same-origin"), ("x-frame-options", "DENY")]
STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


class WebApp:
    """Everything on the port besides /healthz, /readyz and /metrics."""

    def __init__(self, app: App, service: SyncService, token: UiToken) -> None:
        from worker.web import api, pages

        self.app, self.service, self.token = app, service, token
        self.api = api.Api(app, service)
        self.routes: list[Route] = [*api.routes(self.api), *pages.routes(pages.Pages(app, service, token, self.api))]
        self._patterns = [(r, r.pattern) for r in self.routes]

    async def handle(self, request: Request) -> Response:
        response = await self._dispatch(request)
        response.headers.extend(SECURITY_HEADERS)
        return response

    def _match(self, request: Request) -> tuple[Route | None, bool]:
        """(the route, whether the path exists under another method)."""
        known = False
        for route, pattern in self._patterns:
            found = pattern.match(request.path)
            if found:
                known = True
                if route.method == request.method or (route.method == "GET" and request.method == "HEAD"):
                    request.params = found.groupdict()
                    return route, True
        return None, known

    async def _dispatch(self, request: Request) -> Response:
        if request.method == "GET" and request.path.startswith("/static/"):
            return self._static(request.path.removeprefix("/static/"))
        route, known = self._match(request)
        api = request.path.startswith("/api/")
        if route is None:
            if known:
                return self._error(api, 405, "method not allowed")
            return self._error(api, 404, "not found")
        authorization = request.headers.get("authorization", "")
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() == "bearer" and presented and self.token.matches(presented.strip()):
            request.bearer = True
        else:
            session = cookie_value(request.headers)
            if session is not None and self.token.session_ok(session):
                request.session = session
        if not route.public and not request.bearer and request.session is None:
            if api:
                return json_response(401, {"error": "authentication required: send Authorization: Bearer <token> "
                                                    "(COST_WORKER_UI_TOKEN)"}, [("www-authenticate", "Bearer")])
            return redirect("/login")
        if request.method not in ("GET", "HEAD"):
            if cross_site(request.headers, request.headers.get("host", "")):
                return self._error(api, 403, "cross-site request refused")
            if not request.bearer and request.session is not None and not self._csrf_ok(request):
                return self._error(api, 403, "missing or wrong CSRF token: reload the page and try again")
        try:
            return await route.handler(request)
        except Exception:
            log.exception("web: %s %s failed", request.method, route.path)
            return self._error(api, 500, "internal error (see the worker's log)")

    def _csrf_ok(self, request: Request) -> bool:
        assert request.session is not None
        presented = request.headers.get("x-csrf-token", "")
        if not presented and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            presented = request.form().get("csrf", "")
        return self.token.csrf_ok(request.session, presented)

    def _error(self, api: bool, status: int, message: str) -> Response:
        if api:
            return json_response(status, {"error": message})
        from worker.web.pages import error_page

        return error_page(status, message)

    def _static(self, name: str) -> Response:
        if name not in STATIC:
            return Response(404, b"not found\n", "text/plain; charset=utf-8")
        body = resources.files("worker.web").joinpath("static", name).read_bytes()
        return Response(200, body, STATIC[name], [("cache-control", "max-age=300")])
