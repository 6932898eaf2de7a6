"""memwardend with one component made to fail on demand, for fault tests of a real daemon process.

    python -m support.faulty_daemon TARGET FLAG_FILE [memwardend arguments…]

TARGET names a function or method as `module:attr` or `module:Class.method` (sync or async). While FLAG_FILE
exists, every call of it raises RuntimeError("injected fault in TARGET"); once the file is gone it behaves as
before. Everything else is the real memwardend.

    DaemonProcess.start(argv=faulty_daemon.argv("memwarden.sample_pass:evaluate", flag, d.config_path))
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent


def argv(target: str, flag: Path, config: Path) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
            "from support.faulty_daemon import main; sys.exit(main(sys.argv[1:]))",
            target, str(flag), "--config", str(config)]


def inject(target: str, flag: Path) -> None:
    module_name, _, path = target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *parents, name = path.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = inspect.getattr_static(owner, name)

    def fail() -> None:
        if flag.exists():
            raise RuntimeError(f"injected fault in {target}")

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            fail()
            return await original(*args, **kwargs)
    else:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fail()
            return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def main(args: list[str]) -> int:
    target, flag, *rest = args
    sys.modules.setdefault("numpy", None)  # as memwardend does, before anything imports sqlite_utils
    sys.modules.setdefault("rich", None)  # and before structlog
    inject(target, Path(flag))
    from memwarden.cli.memwardend import main as memwardend

    return memwardend(rest)
