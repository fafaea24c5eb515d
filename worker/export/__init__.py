"""File exports of the synced bill: ``focus`` (FOCUS 1.2 rows), ``csvfile`` (a spreadsheet-safe CSV writer),
``commands`` (the `export` command)."""
