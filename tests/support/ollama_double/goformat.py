"""memwarden.sim.ollama.goformat under its old name: the module itself, not a copy, so a monkeypatch reaches both."""

import sys

from memwarden.sim.ollama import goformat

sys.modules[__name__] = goformat
