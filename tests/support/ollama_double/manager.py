"""memwarden.sim.ollama.manager under its old name: the module itself, not a copy, so a monkeypatch reaches both."""

import sys

from memwarden.sim.ollama import manager

sys.modules[__name__] = manager
