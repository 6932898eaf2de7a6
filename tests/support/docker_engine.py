"""memwarden.sim.dockerd under its old name: the module itself, not a copy, so a monkeypatch reaches both."""

import sys

from memwarden.sim import dockerd

sys.modules[__name__] = dockerd
