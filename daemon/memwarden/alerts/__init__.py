"""Alerts: a pure lifecycle (raise, re-notify, escalate, resolve) and the sinks that deliver its events."""
