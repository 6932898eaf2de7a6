"""memwardend startup: time from exec to READY=1 on the notify socket, against bare interpreter starts.

Each of --runs rounds (default 10) times, in turn: memwardend from Popen to the READY=1 datagram (READY is
sent after the first sample pass), `python -c "pass"` and `python -c "import asyncio"` from Popen to exit,
all with the same interpreter. One untimed warm-up of each first, so every figure is a warm-cache start.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import emit, exit_cleanly_on_sigterm, fmt, fmt_ratio, parser, ratio, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.daemon import DaemonProcess, short_tmpdir


def time_daemon() -> float:
    daemon = DaemonProcess({"daemon": {"sample_interval": "1s", "log_level": "info"}},
                           workdir=short_tmpdir("mwbench"))
    try:
        t0 = time.perf_counter()
        daemon.start(wait_ready=False)
        daemon.wait_ready()
        elapsed = time.perf_counter() - t0
        code = daemon.stop()
        if code != 0:
            raise RuntimeError(f"memwardend exited with {code}:\n{daemon.log()}")
        return elapsed
    finally:
        daemon.cleanup()


def time_python(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def bytecode_note() -> str:
    """Whether memwarden's own modules start from cached bytecode: with PYTHONDONTWRITEBYTECODE set and no
    __pycache__ (an editable install never compiles), every start compiles them from source."""
    import importlib.util

    import memwarden

    init = Path(memwarden.__file__)
    cached = sum(Path(importlib.util.cache_from_source(str(f))).exists() for f in init.parent.rglob("*.py"))
    total = sum(1 for _ in init.parent.rglob("*.py"))
    flag = os.environ.get("PYTHONDONTWRITEBYTECODE")
    return (f"memwarden modules with cached bytecode: {cached}/{total}; "
            f"PYTHONDONTWRITEBYTECODE={'set' if flag else 'unset'}.")


def stats(values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"n": len(ms), "median_ms": round(statistics.median(ms), 2), "min_ms": round(min(ms), 2),
            "max_ms": round(max(ms), 2), "runs_ms": [round(v, 2) for v in ms]}


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs of each (default 10)")
    args = p.parse_args()
    exit_cleanly_on_sigterm()

    subjects = {
        "memwardend": time_daemon,
        "python_pass": lambda: time_python("pass"),
        "python_import_asyncio": lambda: time_python("import asyncio"),
    }
    for run in subjects.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.runs):
        for name, run in subjects.items():
            times[name].append(run())
    results: dict[str, Any] = {"runs": args.runs, "bytecode": bytecode_note()}
    results.update({name: stats(v) for name, v in times.items()})
    d = results["memwardend"]
    rows = [["memwardend: exec → READY=1", fmt(d["median_ms"]), fmt(d["min_ms"]), fmt(d["max_ms"]), "1.00×"]]
    for name, label in (("python_pass", 'python -c "pass": exec → exit'),
                        ("python_import_asyncio", 'python -c "import asyncio": exec → exit')):
        b = results[name]
        r = ratio(d["median_ms"], b["median_ms"])
        results[f"ratio_vs_{name}"] = round(r, 3) if r is not None else None
        rows.append([label, fmt(b["median_ms"]), fmt(b["min_ms"]), fmt(b["max_ms"]), fmt_ratio(r)])
    text = table(["start (ms)", "median", "min", "max", "memwardend median ÷ this median"], rows)
    text += (f"\n\n{args.runs} timed runs of each, interleaved, after one warm-up of each; "
             f"interpreter {sys.executable} (Python {sys.version.split()[0]}). {bytecode_note()}")
    emit("Startup", text, results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
