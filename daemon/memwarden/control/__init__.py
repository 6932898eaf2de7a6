"""The control plane: JSON-RPC 2.0, one object per line, over a unix socket."""
