"""The guest agent ships alone: it imports neither virt nor drivers."""

from __future__ import annotations

import ast
from pathlib import Path

import guest_agent


def test_guest_agent_imports_neither_virt_nor_drivers():
    root = Path(guest_agent.__file__).parent
    offenders = []
    for source in root.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{source.name}: {n}"
                for n in names
                if n.split(".")[0] in ("virt", "drivers", "tests")
            ]
    assert offenders == []


def test_host_side_uses_only_pure_protocol_modules():
    tree = ast.parse(Path(__file__).parents[3].joinpath("virt", "agent.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert {m for m in modules if m.startswith("guest_agent")} <= {
        "guest_agent",
        "guest_agent.transports.xenstore",
    }
