"""Talking to Ollama: its HTTP API (client), and stopping/starting its service as a last resort."""
