"""GPU arbitration: VRAM leases that evict and restore Ollama models, and the adapter scheduler."""
