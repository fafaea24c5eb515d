"""Storage: the schema (tables), the engine and migrations (db), and the data functions (repo)."""
