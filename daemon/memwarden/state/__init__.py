"""Durable state: one SQLite file (WAL) in daemon.state_dir with versioned migrations."""
