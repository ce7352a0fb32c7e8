"""Results: the store (embedded SQLite), tables and plots (matplotlib imported lazily)."""
