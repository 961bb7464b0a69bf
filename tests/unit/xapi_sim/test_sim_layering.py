"""The simulator is a test tool: nothing shipped imports it, and it needs only the stdlib
(plus guest_agent's xenstore wire client for its dom0 plugins)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_nothing_shipped_imports_the_simulator():
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for top in ("virt", "drivers", "guest_agent")
        for path in (ROOT / top).rglob("*.py")
        for module in _imports(path)
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == []


def test_the_server_side_is_stdlib_only():
    allowed = set(sys.stdlib_module_names) | {"guest_agent", "XenAPI"}
    offenders = [
        f"{path.name}: {module}"
        for path in (ROOT / "tests" / "xapi_sim").glob("*.py")
        for module in _imports(path)
        if module.split(".")[0] not in allowed
        # XenAPI only in the service's --check (a client of the server, not the server)
        or (module == "XenAPI" and path.name != "__main__.py")
    ]
    assert offenders == []
