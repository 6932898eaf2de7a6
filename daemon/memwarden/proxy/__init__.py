"""An Ollama-compatible HTTP proxy that lets the arbiter see and steer every request."""
