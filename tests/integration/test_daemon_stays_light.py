"""The daemon never imports torch, transformers, peft or bitsandbytes: training is a subprocess."""

from __future__ import annotations

import ast
from pathlib import Path

import psutil

import memwarden
from memwarden.control.methods import HEAVY_MODULES

HEAVY = set(HEAVY_MODULES)
PACKAGE = Path(memwarden.__file__).parent


def test_the_running_daemon_has_no_heavy_modules(daemon):
    diag = daemon.call("diagnostics")
    assert diag["heavy_modules_loaded"] == []
    assert diag["rss_bytes"] > 0


def test_with_metrics_off_nothing_listens_and_prometheus_client_is_never_imported(daemon):
    diag = daemon.call("diagnostics")
    assert "prometheus_client" not in diag["optional_modules_loaded"]
    # test_metrics.py sees it loaded when metrics are on, so this absence is not a blind spot of diagnostics.
    listening = [c for c in psutil.Process(daemon.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert listening == []


def test_no_module_outside_training_imports_them():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "training" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in HEAVY]
    assert offenders == []
