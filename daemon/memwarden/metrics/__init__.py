"""Prometheus metrics, served on metrics.listen when metrics.enabled; imported only then (prometheus_client
costs RSS the daemon does not otherwise pay)."""
