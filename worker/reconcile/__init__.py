"""Reconciliation: tracked Claude calls vs Anthropic's bill -- where they drift and why.

Pure core (no database, no CLI):

- `formats`: one parser per tracker format, auto-detection; each yields `TrackedEvent | BadRecord`.
- `models`: tracker model ids -> the bill's ids (`ModelNormalizer`).
- `importer`: the streaming import loop into an `EventSink` and its `ImportReport`.
- `aggregate`: the compared cells (`BilledCell`, `BilledFee`, `TrackedAggregate`) and builders.
- `pricing`: unit prices implied by the bill (`PriceBook`).
- `compare`: rows, statuses and causes (`compare`, `Reconciliation`).
- `render`: table / csv / json output.

Errors: `DetectionError` / `UnknownFormatError` (input format), `StrictImportError` (`--strict`).
"""

from worker.reconcile.aggregate import (
    BillBuilder,
    BilledCell,
    BilledFee,
    GroupBy,
    TrackedAggregate,
    aggregate_events,
)
from worker.reconcile.compare import (
    DEFAULT_TOLERANCE_PCT,
    EXIT_DRIFT,
    EXIT_OK,
    Cause,
    Reconciliation,
    Row,
    Status,
    Summary,
    compare,
)
from worker.reconcile.events import BadRecord, TokenCounts, TokenType, TrackedEvent
from worker.reconcile.formats import AUTO, FORMATS, DetectionError, UnknownFormatError, detect, read_events
from worker.reconcile.importer import EventSink, ImportReport, InMemorySink, StrictImportError, import_events
from worker.reconcile.models import ModelNormalizer, canonical_model_id
from worker.reconcile.pricing import PriceBook, TokenCosts
from worker.reconcile.render import render, render_summary

__all__ = [
    "AUTO",
    "DEFAULT_TOLERANCE_PCT",
    "EXIT_DRIFT",
    "EXIT_OK",
    "FORMATS",
    "BadRecord",
    "BillBuilder",
    "BilledCell",
    "BilledFee",
    "Cause",
    "DetectionError",
    "EventSink",
    "GroupBy",
    "ImportReport",
    "InMemorySink",
    "ModelNormalizer",
    "PriceBook",
    "Reconciliation",
    "Row",
    "Status",
    "StrictImportError",
    "Summary",
    "TokenCosts",
    "TokenCounts",
    "TokenType",
    "TrackedAggregate",
    "TrackedEvent",
    "UnknownFormatError",
    "aggregate_events",
    "canonical_model_id",
    "compare",
    "detect",
    "import_events",
    "read_events",
    "render",
    "render_summary",
]
