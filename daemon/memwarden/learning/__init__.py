"""Continual learning on the daemon side: memories, triggers, curation, runs, promotion, export.

Nothing here imports torch & co.: training happens in the `python -m memwarden.training` subprocess, which
reads a JobSpec and reports Progress lines (jobspec.py is the contract between the two)."""
