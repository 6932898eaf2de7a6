"""Probes read the world into immutable snapshots. One probe per module; roots and clients are injectable."""
