"""The Ollama test double is the shipped simulator, memwarden.sim.ollama (docs/simulator.md), under its old name."""

from memwarden.sim.ollama import *  # noqa: F403
from memwarden.sim.ollama import OllamaSim
from memwarden.sim.ollama import __all__ as _sim_all

OllamaDouble = OllamaSim
__all__ = [*_sim_all, "OllamaDouble"]
