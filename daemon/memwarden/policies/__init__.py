"""Policies: pure functions of (snapshot, state, config, clock) that return decisions. No I/O here."""
