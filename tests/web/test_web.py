"""The dashboard and the HTTP API of `run`, in process on the simulator (SQLite, and PostgreSQL when set):
off without a token; bearer, session cookie and CSRF; cross-site refusal; the API's records equal the CLI's
and the simulator's truth; onboarding, force sync (202, then 409), removal; every outside string escaped;
the token in no page, answer or log line; the OpenAPI document and the served routes are the same set."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import make_settings, master_key_text, premigrate
from tests.simulated import TODAY, Truth, make_sim
from worker.app import App
from worker.cli import cli
from worker.clock import FakeClock
from worker.http import HealthServer
from worker.money import money_text
from worker.settings import Settings, SettingsError
from worker.simulator import SimulatorHandle
from worker.simulator.faults import Fault
from worker.sync.scheduler import SyncService
from worker.vault import MasterKey
from worker.web.auth import UiToken, load_ui_token
from worker.web.openapi import document

TOKEN = "ui-token-4f1d0c2b9e8a7d6c5b4a"
HOSTILE = "<img src=x onerror=alert(1)>"
SINCE, UNTIL = TODAY - timedelta(days=29), TODAY


def synchronous(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run with asyncio.run (the suite has no async plugin); pytest still sees its fixtures."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


@pytest.fixture
def sim() -> SimulatorHandle:
    return make_sim(seed=9)


@pytest.fixture
def web_app(db_url: str, tmp_path: Path, master_key: MasterKey, migrated_sqlite: Path) -> Iterator[App]:
    premigrate(db_url, migrated_sqlite)
    clock = FakeClock(datetime.combine(TODAY, datetime.min.time(), UTC).replace(hour=12))
    application = App(make_settings(db_url, tmp_path, master_key, ui_token=TOKEN), clock=clock)
    yield application
    application.close()


class Client:
    """An HTTP client of the server: bearer by default, or as a browser with a session cookie."""

    def __init__(self, http: httpx.AsyncClient, service: SyncService) -> None:
        self.http, self.service = http, service
        self.auth = {"authorization": f"Bearer {TOKEN}"}

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.get(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.post(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.http.delete(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    async def connect(self, key: str, **body: Any) -> int:
        r = await self.post("/api/v1/integrations", json={"admin_key": key, "source": "legacy", **body})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    async def idle(self) -> None:
        while self.service.tasks:
            await asyncio.gather(*list(self.service.tasks.values()), return_exceptions=True)


@asynccontextmanager
async def serving(app: App, sim: SimulatorHandle) -> AsyncIterator[Client]:
    service = SyncService(app, transport=sim.transport())
    server = HealthServer(app, service, 0, host="127.0.0.1")
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30) as http:
            yield Client(http, service)
    finally:
        await service.shutdown()
        await server.close()


def cli_json(app: App, *args: str, env: dict[str, str] | None = None) -> Any:
    """What `cost-worker ARGS` prints (JSON) on the app's database."""
    base = {"COST_WORKER_DATABASE_URL": app.settings.effective_database_url,
            "COST_WORKER_MASTER_KEY": master_key_text(app),
            "COST_WORKER_DATA_DIR": str(app.settings.data_dir)}
    result = CliRunner().invoke(cli, list(args), env={**base, **(env or {})})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- settings and the token --------------------------------------------------------------------

class TestToken:
    def test_from_env_or_file_never_shown(self, tmp_path: Path) -> None:
        """COST_WORKER_UI_TOKEN or its _FILE; repr and str mask it; both at once, or a short one, are one line."""
        token = load_ui_token(Settings.model_validate({"ui_token": TOKEN}))
        assert token is not None and token.matches(TOKEN) and not token.matches(TOKEN + "x")
        assert TOKEN not in repr(token) and TOKEN not in str(token) and TOKEN not in repr(Settings.model_validate({"ui_token": TOKEN}))
        path = tmp_path / "token"
        path.write_text(TOKEN + "\n")
        from_file = load_ui_token(Settings(ui_token_file=path))
        assert from_file is not None and from_file.matches(TOKEN)
        assert load_ui_token(Settings()) is None
        with pytest.raises(SettingsError, match="only one of COST_WORKER_UI_TOKEN and COST_WORKER_UI_TOKEN_FILE"):
            load_ui_token(Settings.model_validate({"ui_token": TOKEN, "ui_token_file": path}))
        with pytest.raises(SettingsError, match="at least 16") as short:
            load_ui_token(Settings.model_validate({"ui_token": "short"}))
        assert "short" not in str(short.value).replace("at least", "")
        with pytest.raises(SettingsError, match="cannot read"):
            load_ui_token(Settings(ui_token_file=tmp_path / "missing"))

    def test_session_is_an_hmac_not_the_token(self) -> None:
        """A session value verifies under its token only, expires, and its CSRF token is bound to it."""
        token, other = UiToken(TOKEN), UiToken(TOKEN[::-1])
        session = token.new_session(now=1_000_000)
        assert TOKEN not in session and token.session_ok(session, now=1_000_100)
        assert not other.session_ok(session, now=1_000_100)
        assert not token.session_ok(session, now=1_000_000 + 8 * 24 * 3600)
        assert not token.session_ok(session[:-1] + ("0" if session[-1] != "0" else "1"), now=1_000_100)
        assert token.csrf_ok(session, token.csrf(session)) and not token.csrf_ok(session, other.csrf(session))
        assert not token.csrf_ok(token.new_session(), token.csrf(session))


@synchronous
async def test_without_token_dashboard_and_api_are_404(app: App, sim: SimulatorHandle,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """No token: / and /api/v1/ answer 404 as any unknown path; the probes answer; the log says how to enable."""
    service = SyncService(app, transport=sim.transport())
    server = HealthServer(app, service, 0, host="127.0.0.1")
    with caplog.at_level(logging.INFO, logger="worker.http"):
        await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            for path in ("/", "/login", "/api/v1/integrations", "/api/v1/openapi.json", "/static/app.js"):
                r = await http.get(path, headers={"authorization": f"Bearer {TOKEN}"})
                assert r.status_code == 404, path
            assert (await http.post("/api/v1/integrations", json={})).status_code == 404
            assert (await http.get("/healthz")).status_code in (200, 503)
            assert (await http.get("/metrics")).status_code == 200
    finally:
        await server.close()
    assert "dashboard and HTTP API off: set COST_WORKER_UI_TOKEN (or COST_WORKER_UI_TOKEN_FILE)" in caplog.text


# --- the API ------------------------------------------------------------------------------------

@synchronous
async def test_api_needs_the_bearer_token(web_app: App, sim: SimulatorHandle,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """401 without or with a wrong token (a page redirects to the login form); 200 with it; the URL is logged."""
    with caplog.at_level(logging.INFO, logger="worker.http"):
        async with serving(web_app, sim) as c:
            for headers in ({}, {"authorization": "Bearer wrong-token-wrong-token"},
                            {"authorization": f"Basic {TOKEN}"}):
                r = await c.http.get("/api/v1/integrations", headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
                page = await c.http.get("/", headers=headers)
                assert page.status_code == 303 and page.headers["location"] == "/login"
            assert (await c.get("/api/v1/integrations")).json() == []
            assert (await c.http.get("/login")).status_code == 200  # the form itself is public
    assert re.search(r"dashboard and HTTP API at http://127\.0\.0\.1:\d+/ ", caplog.text)


@synchronous
async def test_openapi_describes_exactly_the_served_routes(web_app: App, sim: SimulatorHandle) -> None:
    """Every (method, path) of the document is served (not 404/405 with the token), and every API route the
    server has is in the document."""
    async with serving(web_app, sim) as c:
        doc = (await c.get("/api/v1/openapi.json")).json()
        assert doc == json.loads(json.dumps(document()))
        documented = {(m.upper(), "/api/v1" + p) for p, ops in doc["paths"].items() for m in ops}
        server_routes = {(r.method, r.path) for r in c_routes(web_app, c.service) if r.api}
        assert documented == server_routes
        for method, path in sorted(documented):
            r = await c.http.request(method, path.replace("{id}", "999"), headers=c.auth, json={})
            assert r.status_code not in (405,) and (r.status_code != 404 or "no integration 999" in r.text), (
                method, path, r.status_code, r.text)


def c_routes(app: App, service: SyncService) -> list[Any]:
    from worker.web.app import WebApp

    return WebApp(app, service, UiToken(TOKEN)).routes


@synchronous
async def test_spend_is_report_json_and_the_truth(web_app: App, sim: SimulatorHandle) -> None:
    """After the backfill, GET spend answers `report --format json`'s rows (and `--by`'s), whose total is the
    simulator's truth to the last digit; a bad range is a 400 with one line."""
    async with serving(web_app, sim) as c:
        iid = await c.connect(sim.keys[0])
        assert (await c.post(f"/api/v1/integrations/{iid}/sync")).status_code == 202
        await c.idle()
        q = f"since={SINCE}&until={UNTIL}"
        spend = (await c.get(f"/api/v1/spend?{q}")).json()
        by_workspace = (await c.get(f"/api/v1/spend?{q}&by=workspace&integration={iid}")).json()
        bad = [await c.get(f"/api/v1/spend?{p}") for p in (
            f"since={UNTIL}&until={SINCE}", "since=yesterday&until=2026-01-01", f"since={SINCE}", f"{q}&by=color",
            f"{q}&integration=x")]
        missing = await c.get(f"/api/v1/spend?{q}&integration=99")
    assert spend == cli_json(web_app, "report", "--since", str(SINCE), "--until", str(UNTIL), "--format", "json")
    assert by_workspace == cli_json(web_app, "report", "--since", str(SINCE), "--until", str(UNTIL), "--by",
                                    "workspace", "--integration", str(iid), "--format", "json")
    truth = Truth(sim, SINCE, UNTIL + timedelta(days=1))
    assert sum(Decimal(r["cost_usd"]) for r in spend) == truth.cost()
    assert sum(Decimal(r["cost_usd"]) for r in by_workspace) == truth.cost()
    assert [r.status_code for r in bad] == [400] * 5 and all(list(r.json()) == ["error"] for r in bad)
    assert missing.status_code == 404


@synchronous
async def test_connection_test_answers_the_org_or_the_clis_line(web_app: App, sim: SimulatorHandle) -> None:
    """The organization's name, or the one line `test-connection` prints, never the key."""
    revoked = sim.keys[0]
    async with serving(web_app, sim) as c:
        ok = await c.post("/api/v1/connection-test", json={"admin_key": sim.keys[0]})
        regular = await c.post("/api/v1/connection-test", json={"admin_key": "sk-ant-api03-abcdefabcdef"})
        sim.add_fault("revoke")
        refused = await c.post("/api/v1/connection-test", json={"admin_key": revoked})
        not_json = await c.post("/api/v1/connection-test", content=b"{admin_key")
        wrong_type = await c.post("/api/v1/connection-test", json={"admin_key": 12})
    assert ok.status_code == 200 and ok.json()["organization"]["name"] == sim.orgs[0].name
    assert regular.status_code == 400 and regular.json()["error"].startswith("this is a regular API key")
    env = {"COST_WORKER_DATABASE_URL": web_app.settings.effective_database_url,
           "COST_WORKER_DATA_DIR": str(web_app.settings.data_dir),
           "COST_WORKER_MASTER_KEY": master_key_text(web_app),
           "ANTHROPIC_ADMIN_KEY": "sk-ant-api03-abcdefabcdef"}
    cli_line = CliRunner().invoke(cli, ["test-connection"], env=env).stderr.strip()
    assert cli_line == f"error: {regular.json()['error']}"
    assert refused.status_code == 422 and refused.json()["error"], refused.text
    assert revoked not in refused.text and revoked[-12:] not in refused.text
    assert not_json.status_code == 400 and wrong_type.status_code == 400


@synchronous
async def test_connect_force_sync_409_and_remove(web_app: App, sim: SimulatorHandle) -> None:
    """POST integrations answers the new id; a forced sync answers 202 with its run, a second while it runs 409
    with that run; DELETE removes it (404 after)."""
    async with serving(web_app, sim) as c:
        iid = await c.connect(sim.keys[0], label="Prod", tier="free")
        duplicate = await c.post("/api/v1/integrations", json={"admin_key": sim.keys[0]})
        bad_tier = await c.post("/api/v1/integrations", json={"admin_key": sim.keys[0], "tier": "gold"})
        first = await c.post(f"/api/v1/integrations/{iid}/sync")
        second = await c.post(f"/api/v1/integrations/{iid}/sync")
        await c.idle()
        third = await c.post(f"/api/v1/integrations/{iid}/sync")
        await c.idle()
        record = (await c.get(f"/api/v1/integrations/{iid}")).json()
        unknown = await c.post("/api/v1/integrations/77/sync")
        removed = await c.delete(f"/api/v1/integrations/{iid}")
        gone = await c.get(f"/api/v1/integrations/{iid}")
        again = await c.delete(f"/api/v1/integrations/{iid}")
    assert duplicate.status_code == 400 and "already connected as integration" in duplicate.json()["error"]
    assert bad_tier.status_code == 400
    assert first.status_code == 202 and second.status_code == 409, (first.text, second.text)
    run_id = first.json()["run_id"]
    assert second.json()["run"]["id"] == run_id and second.json()["run"]["outcome"] == "running"
    assert third.status_code == 202 and third.json()["run_id"] > run_id
    assert record["label"] == "Prod" and record["status"] == "ok" and record["backfill_done"]
    assert [r["id"] for r in record["runs"]][:2] == [third.json()["run_id"], run_id]
    assert {r["outcome"] for r in record["runs"]} == {"ok"} and record["runs"][0]["kind"] == "manual"
    assert unknown.status_code == 404
    assert removed.status_code == 200 and gone.status_code == 404 and again.status_code == 404


class Gated(httpx.AsyncBaseTransport):
    """The simulator behind a gate: every request waits until the test opens it (a sync held mid-run)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner, self.entered, self.gate = inner, asyncio.Event(), asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.entered.set()
        await self.gate.wait()
        return await self.inner.handle_async_request(request)


@synchronous
async def test_force_sync_409_while_another_process_holds_the_run(
        web_app: App, sim: SimulatorHandle, db_url: str, tmp_path: Path, master_key: MasterKey) -> None:
    """Another App on the same database (another process: its own claims, a file lock on SQLite, an advisory
    lock on PostgreSQL) syncs the integration and holds it mid-request: POST integrations/{id}/sync answers
    409 with that process's running run, page and API alike, and starts nothing; once it ends, 202."""
    other = App(make_settings(db_url, tmp_path, master_key, ui_token=TOKEN), clock=web_app.clock)
    gated = Gated(sim.transport())
    theirs = SyncService(other, transport=gated)
    try:
        async with serving(web_app, sim) as c:
            iid = await c.connect(sim.keys[0], label="Prod", tier="free")
            their_run = await theirs.force_sync(iid)
            await asyncio.wait_for(gated.entered.wait(), 30)  # their sync is inside a request now
            refused = await c.post(f"/api/v1/integrations/{iid}/sync")
            await c.idle()
            page = await c.post(f"/integrations/{iid}/sync", headers={"sec-fetch-site": "same-origin"})
            await c.idle()
            runs_while_held = [r["id"] for r in (await c.get(f"/api/v1/integrations/{iid}")).json()["runs"]]
            gated.gate.set()
            await asyncio.gather(*theirs.tasks.values())
            after = await c.post(f"/api/v1/integrations/{iid}/sync")
            await c.idle()
            record = (await c.get(f"/api/v1/integrations/{iid}")).json()
    finally:
        gated.gate.set()
        await theirs.shutdown()
        other.close()
    assert refused.status_code == 409, refused.text
    assert refused.json()["run"]["id"] == their_run and refused.json()["run"]["outcome"] == "running"
    assert refused.json()["error"] == f"integration {iid} is syncing already"
    assert page.status_code == 409 and f"integration {iid} is syncing already (run {their_run})" in page.text
    assert runs_while_held == [their_run]  # the refused requests recorded no run of their own
    assert after.status_code == 202 and after.json()["run_id"] > their_run
    assert [(r["id"], r["outcome"]) for r in record["runs"]] == [(after.json()["run_id"], "ok"), (their_run, "ok")]


# --- the browser's way in: login, cookie, CSRF, cross-site ----------------------------------------

async def login(c: Client) -> tuple[str, str]:
    """(session cookie value, the page's CSRF token) after logging in with the form."""
    r = await c.http.post("/login", data={"token": TOKEN}, headers={"origin": str(c.http.base_url).rstrip("/")})
    assert r.status_code == 303, r.text
    cookie = r.headers["set-cookie"]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    session = cookie.split(";", 1)[0].split("=", 1)[1]
    page = await c.http.get("/", headers={"cookie": f"cw_session={session}"})
    assert page.status_code == 200
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert match
    return session, match.group(1)


@synchronous
async def test_login_cookie_csrf_and_cross_site(web_app: App, sim: SimulatorHandle) -> None:
    """The form's cookie opens the pages; a state change needs its CSRF token; any cross-site sender is refused,
    the bearer too; a wrong token at the form is a 401."""
    async with serving(web_app, sim) as c:
        wrong = await c.http.post("/login", data={"token": "not-the-token-at-all"})
        session, csrf = await login(c)
        assert TOKEN not in session
        cookie = {"cookie": f"cw_session={session}"}
        browser = c.http
        iid = await c.connect(sim.keys[0])
        no_csrf = await browser.post(f"/integrations/{iid}/sync", headers=cookie, data={})
        wrong_csrf = await browser.post(f"/integrations/{iid}/sync", headers=cookie, data={"csrf": "0" * 64})
        evil = await browser.post(f"/integrations/{iid}/sync", data={"csrf": csrf},
                                  headers={**cookie, "origin": "https://evil.example", "sec-fetch-site": "cross-site"})
        evil_bearer = await c.post(f"/api/v1/integrations/{iid}/sync", headers={"origin": "https://evil.example"})
        evil_login = await browser.post("/login", data={"token": TOKEN}, headers={"sec-fetch-site": "cross-site"})
        api_no_csrf = await browser.delete(f"/api/v1/integrations/{iid}", headers=cookie)
        ok = await browser.post(f"/integrations/{iid}/sync", headers={**cookie, "sec-fetch-site": "same-origin"},
                                data={"csrf": csrf})
        await c.idle()
        api_with_csrf = await browser.get(f"/api/v1/integrations/{iid}", headers=cookie)
        logout = await browser.post("/logout", headers=cookie, data={"csrf": csrf})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert [r.status_code for r in (no_csrf, wrong_csrf, evil, evil_bearer, evil_login, api_no_csrf)] == [403] * 6
    assert ok.status_code == 303 and re.fullmatch(rf"/integrations/{iid}\?run=\d+", ok.headers["location"])
    assert api_with_csrf.status_code == 200  # reading needs no CSRF token
    assert logout.status_code == 303 and "Max-Age=0" in logout.headers["set-cookie"]


@synchronous
async def test_pages_escape_outside_strings_and_forbid_inline_script(web_app: App, sim: SimulatorHandle,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """An organization named like markup, and a label too, render as text on both pages; every page has a CSP
    with script-src 'self' and no inline script; the token is in no page, answer or log line."""
    sim.add_fault(Fault("rename", name=HOSTILE))
    pages: list[httpx.Response] = []
    with caplog.at_level(logging.DEBUG):
        async with serving(web_app, sim) as c:
            session, _csrf = await login(c)
            iid = await c.connect(sim.keys[0], label='"><script>alert(2)</script>')
            await c.post(f"/api/v1/integrations/{iid}/sync")
            await c.idle()
            cookie = {"cookie": f"cw_session={session}"}
            for path in ("/", f"/integrations/{iid}", "/login", "/integrations/999", f"/?since={SINCE}&until=bad"):
                pages.append(await c.http.get(path, headers=cookie))
            tested = await c.http.post("/connection-test", headers=cookie, data={"csrf": _csrf, "admin_key": sim.keys[0]})
            pages.append(tested)
            answers = [await c.get("/api/v1/integrations"), await c.get(f"/api/v1/integrations/{iid}")]
    overview, detail = pages[0], pages[1]
    assert overview.status_code == 200 and detail.status_code == 200 and tested.status_code == 200
    for page in (overview, detail):
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
        assert HOSTILE not in page.text and "<script>alert" not in page.text
        assert "&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in page.text
    assert "Connection OK: organization &#39;&lt;img src=x onerror=alert(1)&gt;&#39;" in tested.text
    for page in pages:
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        assert all(src for src in re.findall(r"<script([^>]*)>", page.text)), "inline script"
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)
        assert not re.search(r"<[^>]*\son[a-z]+=", page.text)  # no event handler attribute in any tag
        assert TOKEN not in page.text
    assert all(TOKEN not in a.text and HOSTILE in a.text for a in answers)
    assert caplog.records and TOKEN not in caplog.text and sim.keys[0] not in caplog.text


@synchronous
async def test_overview_total_is_the_truth_exactly(web_app: App, sim: SimulatorHandle) -> None:
    """The overview's total for the last 30 days is the simulator's truth: rounded to the cent on screen, every
    digit in its title; the chart has a bar segment titled with each (day, model)'s exact amount."""
    async with serving(web_app, sim) as c:
        iid = await c.connect(sim.keys[0])
        await c.post(f"/api/v1/integrations/{iid}/sync")
        await c.idle()
        page = (await c.get("/")).text
        ranged = (await c.get(f"/?since={UNTIL - timedelta(days=6)}&until={UNTIL}")).text
    truth = Truth(sim, SINCE, UNTIL + timedelta(days=1))
    exact, shown = shown_total(page)
    assert exact == truth.cost() and shown == f"{truth.cost().quantize(Decimal('0.01')):,}"
    assert shown_total(ranged)[0] == Truth(sim, UNTIL - timedelta(days=6), UNTIL + timedelta(days=1)).cost()
    by_day_model = truth.by_day_model()
    for (day, model), amount in by_day_model.items():
        if amount:
            assert f"<title>{day.isoformat()} {model or '(no model: fees)'}: ${money_text(amount)}</title>" in page


def shown_total(page: str) -> tuple[Decimal, str]:
    """(the exact total in the title, the rounded one on screen) of an overview page."""
    found = re.search(r'id="total"><span class="money" title="\$([0-9.]+)" data-exact="([0-9.]+)">\$([0-9,.]+)<', page)
    assert found and found.group(1) == found.group(2), page[:3000]
    return Decimal(found.group(1)), found.group(3)


@synchronous
async def test_budgets_and_anomalies_are_the_clis(db_url: str, tmp_path: Path, master_key: MasterKey,
                                                  migrated_sqlite: Path, sim: SimulatorHandle) -> None:
    """GET budgets and anomalies answer `budgets --format json` and `anomalies --format json` (the CLI runs on
    the real date: the budget as of the app's today with `--at`, whose forecast depends on the real date, and
    complete days only); the overview shows each budget's spend, forecast and limit."""
    premigrate(db_url, migrated_sqlite)
    budgets = [{"name": "all", "limit_usd": "100"}, {"name": "gone", "limit_usd": "5", "integration": 42}]
    clock = FakeClock(datetime.combine(TODAY, datetime.min.time(), UTC).replace(hour=12))
    app = App(make_settings(db_url, tmp_path, master_key, ui_token=TOKEN, budgets=budgets), clock=clock)
    try:
        async with serving(app, sim) as c:
            await c.post(f"/api/v1/integrations/{await c.connect(sim.keys[0])}/sync")
            await c.idle()
            got = (await c.get("/api/v1/budgets")).json()
            anomalies = (await c.get(f"/api/v1/anomalies?since={SINCE}&until={UNTIL - timedelta(days=1)}")).json()
            page = (await c.get("/")).text
        env = {"COST_WORKER_BUDGETS": json.dumps(budgets[:1])}
        cli_budget = cli_json(app, "budgets", "--at", str(TODAY), "--format", "json", env=env)[0]
        assert {k: v for k, v in got[0].items() if k not in ("forecast_usd", "status")} == {
            k: v for k, v in cli_budget.items() if k not in ("forecast_usd", "status")}
        assert Decimal(got[0]["spend_usd"]) == Truth(sim, TODAY.replace(day=1), TODAY + timedelta(days=1)).cost()
        assert (got[1]["name"], got[1]["error"]) == (
            "gone", "budget 'gone': no integration 42 (see `cost-worker integrations list`)")
        assert anomalies == cli_json(app, "anomalies", "--since", str(SINCE), "--until",
                                     str(UNTIL - timedelta(days=1)), "--format", "json")
        for field in ("spend_usd", "forecast_usd", "limit_usd"):
            assert f'data-exact="{got[0][field]}"' in page
    finally:
        app.close()


@synchronous
async def test_top_api_keys_and_users_are_the_analytics_truth(web_app: App, sim: SimulatorHandle) -> None:
    """With the Usage and Cost Analytics API synced, the overview ranks API keys and users by their cost in the
    range: the simulator's own analytics rows, summed per key, largest first, with their names."""
    from worker.simulator.truth import analytics_truth

    async with serving(web_app, sim) as c:
        iid = await c.connect(sim.keys[0], source="both")
        await c.post(f"/api/v1/integrations/{iid}/sync")
        await c.idle()
        page = (await c.get("/")).text
    for by, heading in (("api_key", "Top API keys"), ("actor", "Top users")):
        sums: dict[str, Decimal] = {}
        names: dict[str, str | None] = {}
        for row in analytics_truth(sim.data, 0, SINCE, UNTIL, by=by):
            if row["key"] is not None:
                sums[row["key"]] = sums.get(row["key"], Decimal(0)) + Decimal(row["cost_usd"])
                names[row["key"]] = names.get(row["key"]) or row["name"]
        want = sorted(sums, key=lambda k: (-sums[k], k))[:10]
        section = page.split(f"<h2>{heading}</h2>", 1)[1].split("</section>", 1)[0]
        shown = re.findall(r'<tr><td><code>([^<]+)</code></td><td>([^<]*)</td><td class="num"><span class="money" '
                           r'title="\$([0-9.-]+)"', section)
        assert want and [(k, Decimal(v)) for k, _n, v in shown] == [(k, sums[k]) for k in want], (by, shown)
        assert [n for _k, n, _v in shown] == [names[k] or "" for k in want]


def test_run_refuses_a_bad_token_setting_in_one_line(tmp_path: Path) -> None:
    """A token too short, or both settings at once: `run` stops at start, exit 2, one line, no value shown."""
    (tmp_path / "token").write_text(TOKEN)
    base = {"COST_WORKER_DATA_DIR": str(tmp_path / "data"), "COST_WORKER_HTTP_PORT": "0"}
    for extra, message in (({"COST_WORKER_UI_TOKEN": "tooshort-secret"}, "at least 16 printable characters"),
                           ({"COST_WORKER_UI_TOKEN": TOKEN, "COST_WORKER_UI_TOKEN_FILE": str(tmp_path / "token")},
                            "set only one of COST_WORKER_UI_TOKEN and COST_WORKER_UI_TOKEN_FILE")):
        result = CliRunner().invoke(cli, ["run"], env={**base, **extra})
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and message in result.stderr
        assert "tooshort-secret" not in result.output and TOKEN not in result.output
