"""memwarden: keeps a machine that runs local LLMs healthy."""

__version__ = "0.1.0"
