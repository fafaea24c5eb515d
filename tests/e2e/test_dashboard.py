"""The dashboard in a real browser (headless Chromium) and the API over real HTTP, against a real `cost-worker
run` on a real simulator: log in, connect through the page, watch the card go from backfilling to ok, read the
total against the simulator's truth, press Force Sync, and see a hostile organization name stay text."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from .browser import Browser, chromium
from .procs import ROOT, WORKER, Simulator, Worker
from .test_watch_run import free_port

pytestmark = pytest.mark.slow

TOKEN = "e2e-dashboard-token-3b9f27c1d5"
HOSTILE = "<img src=x onerror=alert(1)>"
SCREENSHOT = ROOT / "docs" / "dashboard.png"  # rewritten by test_overview_screenshot when WRITE_DASHBOARD_SCREENSHOT=1
ORGANIZATION = "Acme Research"  # the screenshot's organization: an ordinary name


@contextmanager
def running(worker: Worker, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`cost-worker run` with the worker's settings: (the dashboard URL it logged, its log file)."""
    log_path = tmp_path / "run.log"
    log = log_path.open("w")
    proc = subprocess.Popen([*WORKER, "run"], env=worker.env, cwd=tmp_path, stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            found = re.search(r"dashboard and HTTP API at (http://\S+/) ", log_path.read_text())
            url = found.group(1) if found else None
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        yield url, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
        log.close()
    assert code == 0, log_path.read_text()[-3000:]


def truth_total(sim: Simulator, since: date, until: date) -> Decimal:
    raw = sim.control("GET", "/_sim/truth", params={"org": 0, "since": since.isoformat(),
                                                    "until": (until + timedelta(days=1)).isoformat()})
    return Decimal(raw["total_cost_usd"])


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_dashboard_in_a_browser(make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    with Simulator("--requests-per-minute", "900") as sim:
        sim.control("POST", "/_sim/faults", json={"kind": "rename", "name": HOSTILE})
        today = sim.today()
        # A year's backfill at 2 requests per second takes ~12 s: long enough to see it under way.
        worker = make_worker(sim, requests_per_minute=120, http_port=free_port(), http_host="127.0.0.1",
                             poll_seconds=1, ui_token=TOKEN)
        with running(worker, tmp_path) as (url, log_path), Browser(tmp_path / "profile") as b:
            b.send("Page.navigate", url=url)
            b.wait_for("location.pathname === '/login' && document.readyState === 'complete'")
            b.type("#token", TOKEN)
            b.click("#login")
            b.wait_for("location.pathname === '/' && !!document.querySelector('#no-integrations')")

            # Test Connection, then Add Integration, through the form.
            b.type("#admin_key", sim.keys[0])
            b.click("#test-connection")
            notice = b.wait_for("document.querySelector('#notice') && document.querySelector('#notice').textContent")
            assert notice.startswith(f"Connection OK: organization '{HOSTILE}'")
            b.type("#admin_key", sim.keys[0])
            b.evaluate("document.querySelector('#tier').value = 'pro'; document.querySelector('#source').value = 'legacy'")
            b.click("#add-integration")
            b.wait_for("location.pathname === '/integrations/1'")

            # The card, on the overview, from backfilling to ok (the page reloads itself when it changes).
            b.navigate(url)
            seen: list[str] = []
            deadline = time.monotonic() + 120
            while not seen or seen[-1] != "ok":
                status = b.evaluate("(document.querySelector('.card[data-id=\"1\"] [data-role=status]') || {}).textContent")
                if status and (not seen or seen[-1] != status):
                    seen.append(status)
                assert time.monotonic() < deadline and "error" not in seen, (seen, log_path.read_text()[-2000:])
                time.sleep(0.1)
            assert "backfilling" in seen, seen
            b.wait_for("document.readyState === 'complete' && !!document.querySelector('#total .money')")

            # The total of the default range (the last 30 days) is the simulator's truth, every digit.
            exact = b.evaluate("document.querySelector('#total .money').dataset.exact")
            shown = b.evaluate("document.querySelector('#total .money').textContent")
            want = truth_total(sim, today - timedelta(days=29), today)
            assert Decimal(exact) == want and shown == f"${want.quantize(Decimal('0.01')):,}"

            # The hostile name is text: no image element was made, no dialog opened.
            assert b.evaluate("document.querySelector('.card[data-id=\"1\"] .org').textContent") == HOSTILE
            assert b.evaluate("document.images.length") == 0 and b.dialogs() == []

            # Force Sync on the integration's page: a new run appears and ends ok.
            b.click(".card[data-id=\"1\"]")
            b.wait_for("location.pathname === '/integrations/1' && document.readyState === 'complete'")
            before = b.evaluate("Math.max(...[...document.querySelectorAll('#runs tr[data-run]')].map(r => +r.dataset.run))")
            assert b.evaluate("document.querySelector('#organization').textContent").startswith(HOSTILE)
            b.click("#force-sync")
            started = b.wait_for("document.querySelector('#started') && document.querySelector('#started').textContent")
            said = re.fullmatch(r"Started sync run (\d+)\.", started)
            assert said is not None, started
            run_id = int(said.group(1))
            assert run_id > before
            b.wait_for(f"(document.querySelector('#runs tr[data-run=\"{run_id}\"] .status') || {{}}).textContent === 'ok'")
            assert b.evaluate("document.images.length") == 0 and b.dialogs() == []
    logs = log_path.read_text()
    assert TOKEN not in logs and sim.keys[0] not in logs


def panel_rows(b: Browser, panel: str) -> int:
    return int(b.evaluate(f"document.querySelectorAll('#{panel} tbody tr').length"))


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_overview_screenshot(make_worker: Callable[..., Worker], tmp_path: Path) -> None:
    """The overview as docs/dashboard.png shows it: an ordinary organization syncing both bills (steady
    traffic, yesterday restated to 5x), a month budget, so every panel has rows: the chart, the card, top API
    keys and users, the budget and the anomaly `run` recorded. WRITE_DASHBOARD_SCREENSHOT=1 writes the PNG
    to docs/; without it the screenshot goes to the test's tmp_path (the panels are checked either way)."""
    with Simulator("--requests-per-minute", "900", "--traffic", "steady") as sim:
        sim.control("POST", "/_sim/faults", json={"kind": "rename", "name": ORGANIZATION})
        yesterday = sim.today() - timedelta(days=1)
        sim.fault(f"spike:day={yesterday.isoformat()},factor=5")
        worker = make_worker(sim, http_port=free_port(), http_host="127.0.0.1", poll_seconds=1, ui_token=TOKEN,
                             budgets=json.dumps([{"name": "claude-monthly", "limit_usd": "25000"},
                                                 {"name": "production-daily", "limit_usd": "900", "period": "day",
                                                  "integration": "Production"}]))
        worker.run("connect", "--tier", "free", "--source", "both", "--label", "Production", key=sim.keys[0])
        with running(worker, tmp_path) as (url, log_path), Browser(tmp_path / "profile", height=1700) as b:
            b.send("Page.navigate", url=url)
            b.wait_for("location.pathname === '/login' && document.readyState === 'complete'")
            b.type("#token", TOKEN)
            b.click("#login")
            b.wait_for("location.pathname === '/' && document.readyState === 'complete'")
            deadline = time.monotonic() + 120
            while True:  # the backfill of both bills, then run's evaluation records the 5x day
                b.navigate(url)
                b.wait_for("document.readyState === 'complete' && !!document.querySelector('#total')")
                status = b.evaluate("(document.querySelector('.card[data-id=\"1\"] [data-role=status]') || {}).textContent")
                if status == "ok" and panel_rows(b, "anomalies") and panel_rows(b, "top-users"):
                    break
                assert status != "error" and time.monotonic() < deadline, (status, log_path.read_text()[-2000:])
                time.sleep(0.5)
            assert b.evaluate("document.querySelector('.card[data-id=\"1\"] .org').textContent") == ORGANIZATION
            assert b.evaluate("document.querySelectorAll('.chart-box svg rect').length") > 0
            assert panel_rows(b, "top-api-keys") > 0 and panel_rows(b, "top-users") > 0
            assert panel_rows(b, "budgets") == 2 and not b.evaluate("document.querySelector('#budgets .error-text')")
            anomaly_days = b.evaluate("[...document.querySelectorAll('#anomalies tbody tr td:first-child')].map(td => td.textContent)")
            assert yesterday.isoformat() in anomaly_days, anomaly_days
            b.screenshot(SCREENSHOT if os.environ.get("WRITE_DASHBOARD_SCREENSHOT") else tmp_path / "overview.png")


def test_newcomer_sees_the_truth(tmp_path: Path) -> None:
    """Done when: `cost-worker run` (the README's run line) with COST_WORKER_UI_TOKEN set prints the URL; the
    simulator's organization connected through the API shows, in the API and on the overview, the simulator's
    truth."""
    readme = (ROOT / "README.md").read_text()
    assert "COST_WORKER_UI_TOKEN" in readme and "docs/dashboard.md" in readme
    with Simulator("--requests-per-minute", "900") as sim:
        worker = Worker(tmp_path, sim.base_url, requests_per_minute=600, http_port=free_port(), http_host="127.0.0.1",
                        poll_seconds=1, ui_token=TOKEN)
        today = sim.today()
        with running(worker, tmp_path) as (url, _log), httpx.Client(base_url=url, timeout=30, headers={
                "authorization": f"Bearer {TOKEN}"}) as http:
            created = http.post("/api/v1/integrations", json={"admin_key": sim.keys[0], "source": "legacy"})
            assert created.status_code == 201, created.text
            iid = created.json()["id"]
            deadline = time.monotonic() + 60
            while http.get(f"/api/v1/integrations/{iid}").json()["status"] != "ok":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            since = today - timedelta(days=29)
            spend = http.get("/api/v1/spend", params={"since": since.isoformat(), "until": today.isoformat()}).json()
            page = http.get("/").text
        want = truth_total(sim, since, today)
        assert sum(Decimal(r["cost_usd"]) for r in spend) == want
        found = re.search(r'id="total"><span class="money" title="\$[0-9.]+" data-exact="([0-9.]+)"', page)
        assert found and Decimal(found.group(1)) == want
        assert json.dumps(TOKEN) not in page
