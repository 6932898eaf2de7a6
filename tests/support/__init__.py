"""Helpers shared by integration/e2e tests and the benchmarks."""
