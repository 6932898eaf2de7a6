"""A stand-in for `ollama runner --model BLOB --port N`: one process per loaded model.

It holds no memory itself (the server books its VRAM in the sim-GPU file under this pid) and dies with the server,
as Ollama's runners do: PR_SET_PDEATHSIG(SIGKILL), plus EOF on stdin (the server holds the pipe's other end).
Started as `ollama -I -S _runner.py runner --model … --port …` (argv[0] "ollama"), so `ps` looks like Ollama's.
"""

import contextlib
import ctypes
import os
import signal


def main() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, b"ollama", 0, 0, 0)  # PR_SET_NAME: the name NVML (and the sim probe) shows, as Ollama's
    parent = int(os.environ.get("OLLAMA_DOUBLE_SERVER_PID", "0") or 0)
    if parent and os.getppid() != parent:
        return  # the server died before prctl took effect
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while os.read(0, 65536):
        pass


if __name__ == "__main__":
    main()
