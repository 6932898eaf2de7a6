"""memwarden: keeps a machine that runs local LLMs healthy."""

__version__ = "0.2.0"
