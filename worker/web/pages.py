"""The dashboard's HTML: Jinja2 templates of this package, autoescaped (every organization name, label, model
id, email and error from outside is text, never markup), forms for every action (no script needed; static/app.js
only refreshes a page whose sync is under way)."""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from functools import cache
from typing import TYPE_CHECKING, Any

import jinja2
from markupsafe import Markup, escape

from worker.money import money_text
from worker.web.auth import UiToken, cleared_cookie, session_cookie
from worker.web.messages import Request, Response, Route, redirect

if TYPE_CHECKING:
    from worker.app import App
    from worker.sync.scheduler import SyncService
    from worker.web.api import Api

CENT = Decimal("0.01")


def usd(value: Decimal | str | None) -> Markup:
    """Dollars rounded to the cent for reading; the exact stored value in the title (hover) and data-exact."""
    if value is None:
        return Markup('<span class="money">–</span>')
    exact = value if isinstance(value, Decimal) else Decimal(value)
    shown = money_text(exact.quantize(CENT, rounding=ROUND_HALF_EVEN), grouping=True)
    text = money_text(exact)
    return Markup('<span class="money" title="${0}" data-exact="{0}">${1}</span>').format(text, shown)


def when(value: datetime | str | None) -> str:
    if value is None:
        return "never"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("worker.web", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["usd"] = usd
    env.filters["when"] = when
    return env


def render(template: str, code: int = 200, headers: list[tuple[str, str]] | None = None, **context: Any) -> Response:
    body = environment().get_template(template).render(**context)
    return Response(code, body.encode(), "text/html; charset=utf-8", headers or [])


def error_page(status: int, message: str) -> Response:
    return render("error.html", status, status=status, message=message, csrf=None)


class Pages:
    def __init__(self, app: App, service: SyncService, token: UiToken, api: Api) -> None:
        self.app, self.service, self.token, self.web_api = app, service, token, api

    def csrf(self, request: Request) -> str | None:
        return self.token.csrf(request.session) if request.session else None

    def today(self) -> date:
        return self.app.clock.now().date()

    def _range(self, request: Request) -> tuple[date, date]:
        from worker.web.api import day_range
        from worker.web.views import default_range

        return day_range(request.query, default_range(self.today()))

    async def overview(self, request: Request, status: int = 200, **notes: Any) -> Response:
        from worker.web.api import BadRequest
        from worker.web.chart import colour, daily_spend_svg
        from worker.web.views import default_range, overview

        try:
            since, until = self._range(request)
        except BadRequest as exc:
            since, until = default_range(self.today())
            notes.setdefault("error", str(exc))
            status = 400

        def read() -> Any:
            with self.app.engine.connect() as conn:
                return overview(conn, self.app.settings, since, until, self.today())
        view = await self.app.db(read)
        chart = daily_spend_svg(view.daily, view.models, since, until)
        return render("overview.html", status, view=view, chart=chart, colour=colour, csrf=self.csrf(request),
                      busy=any(i["status"] in ("pending", "backfilling") for i in view.integrations), **notes)

    async def integration(self, request: Request, status: int = 200, **notes: Any) -> Response:
        from worker.web.views import integration_detail

        iid = int(request.params["id"])
        since, until = self._range(request)

        def read() -> Any:
            with self.app.engine.connect() as conn:
                return integration_detail(conn, iid, since, until)
        detail = await self.app.db(read)
        if detail is None:
            return error_page(404, f"no integration {iid}")
        running = any(r["outcome"] == "running" for r in detail.runs) or detail.integration["status"] in (
            "pending", "backfilling")
        started = request.query.get("run")
        return render("integration.html", status, d=detail, csrf=self.csrf(request), busy=running,
                      started=int(started) if started and started.isdigit() else None, **notes)

    # --- actions (forms) ------------------------------------------------------------------------

    async def connection_test(self, request: Request) -> Response:
        from worker.web.api import error_status

        form = request.form()
        try:
            _key, org = await self.web_api.test_key(form.get("admin_key", ""))
        except Exception as exc:
            known = error_status(exc)
            if known is None:
                raise
            return await self.overview(request, known[0], error=known[1])
        return await self.overview(request, notice=f"Connection OK: organization {org.name!r} ({org.id}); "
                                                   "cost report access confirmed.")

    async def connect(self, request: Request) -> Response:
        from worker.web.api import BadRequest, error_status

        form = request.form()
        body = {"admin_key": form.get("admin_key", ""), "label": form.get("label") or None,
                "tier": form.get("tier", "free"), "source": form.get("source", "both")}
        try:
            created = await self.web_api.connect_values(body)
        except BadRequest as exc:
            return await self.overview(request, 400, error=str(exc))
        except Exception as exc:
            known = error_status(exc)
            if known is None:
                raise
            return await self.overview(request, known[0], error=known[1])
        return redirect(f"/integrations/{created['id']}")

    async def sync(self, request: Request) -> Response:
        from worker.sync.scheduler import NoSuchIntegration, SyncRunning

        iid = int(request.params["id"])
        try:
            run_id = await self.service.force_sync(iid)
        except NoSuchIntegration:
            return error_page(404, f"no integration {iid}")
        except SyncRunning as busy:
            run = busy.run["id"] if busy.run else None
            return await self.integration(request, 409, error=f"integration {iid} is syncing already"
                                          + (f" (run {run})" if run else ""))
        return redirect(f"/integrations/{iid}?run={run_id}")

    async def delete(self, request: Request) -> Response:
        response = await self.web_api.delete(request)
        if response.status != 200:
            return error_page(response.status, f"no integration {request.params['id']}")
        return redirect("/")

    # --- login ----------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return render("login.html", csrf=None, error=None)

    async def login(self, request: Request) -> Response:
        presented = request.form().get("token", "")
        if not presented or not self.token.matches(presented.strip()):
            await asyncio.sleep(0.5)  # slows guessing down; the token itself is long
            return render("login.html", 401, csrf=None, error="wrong token")
        return redirect("/", [("set-cookie", session_cookie(self.token.new_session()))])

    async def logout(self, request: Request) -> Response:
        return redirect("/login", [("set-cookie", cleared_cookie())])


def routes(pages: Pages) -> list[Route]:
    return [
        Route("GET", "/", pages.overview),
        Route("GET", "/integrations/{id}", pages.integration),
        Route("POST", "/integrations", pages.connect),
        Route("POST", "/connection-test", pages.connection_test),
        Route("POST", "/integrations/{id}/sync", pages.sync),
        Route("POST", "/integrations/{id}/delete", pages.delete),
        Route("GET", "/login", pages.login_form, public=True),
        Route("POST", "/login", pages.login, public=True),
        Route("POST", "/logout", pages.logout),
    ]


__all__ = ["error_page", "escape", "render", "routes", "usd"]
