"""File exports of the synced bill: ``focus`` (FOCUS 1.2 rows), ``parquet`` (those rows as typed Parquet, with the
optional pyarrow), ``commands`` (the `export` command, which writes CSV through the spreadsheet-safe
`worker.csvsafe` writer)."""
