"""A small agent's memories of every kind, shared by the learning tests and benchmarks: the demo's own."""

from __future__ import annotations

from memwarden.demo.learning import MEMORIES

# (kind, content, response): conversations carry a response, the other kinds stand alone.
FACTS = MEMORIES
