"""File exports of the synced bill: ``focus`` (FOCUS 1.2 rows), ``commands`` (the `export` command, which
writes them through the spreadsheet-safe `worker.csvsafe` writer)."""
