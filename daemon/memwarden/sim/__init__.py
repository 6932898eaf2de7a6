"""Simulators for trying memwarden without the hardware or services it guards (never imported by the daemon)."""
