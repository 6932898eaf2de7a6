"""The simulators and the demo are tools beside the daemon: nothing the daemon runs imports them."""

from __future__ import annotations

import ast
from pathlib import Path

import memwarden

PACKAGE = Path(memwarden.__file__).parent
TOOLS = ("sim", "demo")


def test_no_module_outside_sim_and_demo_imports_them():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in TOOLS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path}:{node.lineno} {n}" for n in names
                          if n.split(".")[:2] in (["memwarden", t] for t in TOOLS)]
    assert offenders == []


def test_the_simulator_never_imports_torch():
    heavy = {"torch", "transformers", "peft", "bitsandbytes"}
    offenders = []
    for path in (PACKAGE / "sim").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                offenders += [f"{path}:{node.lineno}" for a in node.names if a.name.split(".")[0] in heavy]
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in heavy:
                offenders.append(f"{path}:{node.lineno}")
    assert offenders == []
