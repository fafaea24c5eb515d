"""Alembic environment: migrations run on the connection cost-worker hands over (`cost-worker db upgrade`),
or on COST_WORKER_DATABASE_URL / the default SQLite file when the `alembic` CLI is used directly."""

from __future__ import annotations

from alembic import context

from worker.storage.tables import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    from worker.settings import load_settings
    from worker.storage.db import make_engine

    engine = make_engine(load_settings().effective_database_url)
    with engine.begin() as conn:
        _run_on(conn)


def _run_on(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    context.run_migrations()


run()
