"""Pressure-stall information for memory, read from <proc_root>/pressure/memory."""

from __future__ import annotations

from pathlib import Path

from memwarden.snapshots import Pressure


class PressureUnavailable(Exception):
    """The kernel does not expose PSI (CONFIG_PSI off, psi=0, or an old kernel)."""


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split()[1:])


def parse_pressure(text: str) -> Pressure:
    lines = {line.split(None, 1)[0]: _fields(line) for line in text.splitlines() if line.strip()}
    some = lines.get("some")
    if some is None:
        raise ValueError("no 'some' line in memory pressure file")
    # Kernels before 5.13 may omit "full" for the system-wide file only on CPU; memory always had it,
    # but a missing line is treated as zero rather than failing the whole probe.
    full = lines.get("full", {"avg10": "0", "avg60": "0", "total": "0"})
    return Pressure(
        some_avg10=float(some["avg10"]), some_avg60=float(some["avg60"]), some_total_us=int(some["total"]),
        full_avg10=float(full["avg10"]), full_avg60=float(full["avg60"]), full_total_us=int(full["total"]),
    )


def read_pressure(proc_root: Path) -> Pressure:
    path = proc_root / "pressure" / "memory"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PressureUnavailable(f"{path} does not exist (kernel without PSI)") from None
    except OSError as exc:
        # EOPNOTSUPP when PSI is compiled in but disabled with psi=0.
        raise PressureUnavailable(f"{path}: {exc.strerror or exc}") from None
    return parse_pressure(text)
