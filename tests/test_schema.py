"""The migrations build exactly the schema the code describes (`worker.storage.tables.metadata`,
which `worker.reconcile.store` extends with `events`), on SQLite and PostgreSQL: a table, column,
index or constraint added to one side only would otherwise surface as a runtime error in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import worker.reconcile.store  # noqa: F401 - registers `events` on the metadata
from tests.conftest import premigrate
from worker.storage.db import current_revision, head_revision, make_engine, upgrade
from worker.storage.tables import metadata


@pytest.mark.parametrize("how", ["upgrade", "premigrate"])
def test_migrated_schema_equals_the_metadata(db_url: str, migrated_sqlite: Path, how: str) -> None:
    """Also the schema most tests start from (`premigrate`: a copy of a migrated SQLite file, or the replayed
    statements of a PostgreSQL migration), which must be the migration's."""
    if how == "premigrate":
        premigrate(db_url, migrated_sqlite)
    engine = make_engine(db_url)
    try:
        if how == "upgrade":
            upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diffs = [d for d in compare_metadata(context, metadata) if not _ignored(d)]
    finally:
        engine.dispose()
    assert diffs == []
    assert {"events", "reconcile_runs"} <= set(metadata.tables)


def _ignored(diff: object) -> bool:
    """alembic's own version table is not in the metadata."""
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version"
