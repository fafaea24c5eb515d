"""``cost-worker simulate``: run the Admin API simulator from the command line."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import date, datetime

import click

from worker.simulator.app import SimulatorApp
from worker.simulator.data import OrgShape
from worker.simulator.faults import FaultSpecError, parse_fault
from worker.simulator.server import SimulatorServer, build_app, serve


def _parse_today(_ctx: click.Context, _param: click.Parameter, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise click.BadParameter("expected YYYY-MM-DD") from None


def _parse_faults(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    for spec in value:
        try:
            parse_fault(spec)
        except FaultSpecError as exc:
            raise click.BadParameter(f"{spec!r}: {exc}") from None
    return value


def _parse_shapes(
    _ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]
) -> dict[int, OrgShape]:
    shapes = {}
    for spec in value:
        index, sep, shape = spec.partition("=")
        try:
            if not sep:
                raise ValueError("expected ORG=SHAPE, e.g. 0=large")
            shapes[int(index)] = OrgShape.parse(shape)
        except ValueError as exc:
            raise click.BadParameter(f"{spec!r}: {exc}") from None
    return shapes


@click.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 picks a free port.")
@click.option("--orgs", default=1, show_default=True, type=click.IntRange(1),
              help="Number of simulated organizations.")
@click.option("--requests-per-minute", "requests_per_minute", default=60.0, show_default=True,
              type=click.FloatRange(0), help="Per-key rate limit; 0 disables it.")
@click.option("--burst", default=1.0, show_default=True, type=click.FloatRange(1),
              help="Token-bucket burst size per key.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the generated data.")
@click.option("--today", callback=_parse_today, metavar="YYYY-MM-DD",
              help="Last day with data (default: the real UTC date).")
@click.option("--max-results", "max_results", type=click.IntRange(1), default=None,
              help="Answer 400 'response too large' when a page holds more results.")
@click.option("--history-days", "history_days", default=730, show_default=True,
              type=click.IntRange(1), help="Days of history before today with data.")
@click.option("--traffic", type=click.Choice(["varied", "steady"]), default="varied", show_default=True,
              help="varied: every day drawn afresh (sync edge cases); steady: a production-like org whose "
                   "days differ only a little (budgets, anomalies).")
@click.option("--fault", "faults", multiple=True, callback=_parse_faults, metavar="SPEC",
              help="Inject a fault, e.g. 529:count=3, cutoff:org=1, restate:day=2026-03-01 "
                   "(repeatable; see worker/simulator/faults.py).")
@click.option("--hipaa-org", "hipaa_orgs", multiple=True, type=click.IntRange(0), metavar="N",
              help="Organization N has HIPAA readiness: the Analytics API answers it 400 (repeatable).")
@click.option("--org-shape", "shapes", multiple=True, callback=_parse_shapes, metavar="N=SHAPE",
              help="Size of organization N: small, medium, large (5 models, 20 keys, 50 users) or W,K,U,M.")
@click.option("--analytics-lag-minutes", default=180, show_default=True, type=click.IntRange(0, 10080),
              help="The Analytics API serves usage up to this many minutes before now (data_refreshed_at).")
def simulate_command(
    host: str,
    port: int,
    orgs: int,
    requests_per_minute: float,
    burst: float,
    seed: int,
    today: date | None,
    max_results: int | None,
    history_days: int,
    traffic: str,
    faults: tuple[str, ...],
    hipaa_orgs: tuple[int, ...],
    shapes: dict[int, OrgShape],
    analytics_lag_minutes: int,
) -> None:
    """Run a local, deterministic copy of Anthropic's Admin API cost and usage reports."""
    try:
        app = build_app(
            orgs=orgs, seed=seed, today=today, requests_per_minute=requests_per_minute,
            burst=burst, max_results=max_results, faults=faults, history_days=history_days,
            traffic=traffic, hipaa_orgs=hipaa_orgs, shapes=shapes, analytics_lag_minutes=analytics_lag_minutes,
        )
    except (FaultSpecError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    asyncio.run(_run(app, host, port))


async def _run(app: SimulatorApp, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_ready(server: SimulatorServer) -> None:
        for org in app.data.orgs:
            click.echo(f"org {org.index}: {org.name}  id={org.id}  admin_key={org.admin_key}")
        click.echo(f"listening on {server.base_url}")
        sys.stdout.flush()  # the parent process waits for this line

    try:
        await serve(app, host, port, stop, on_ready)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    click.echo("simulator stopped")
