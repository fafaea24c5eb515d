"""The two bills side by side: `report --by` over either source, and `sources compare`.

- `report`: rows per (UTC day, model, key of one dimension) from the Analytics API's rows, the legacy
  reports' rows, or (without `--source`) the bill of record of each day: the Analytics API where it was
  synced, the legacy reports before 2026-01-01 and wherever it was refused.
- `compare`: per day and model the legacy and the analytics cost, their difference and its named
  causes (`priority_tier`, `not_refreshed`, ...).
- `commands`: the `sources` click group.
"""
