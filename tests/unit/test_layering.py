"""The rule of direction (DESIGN.md), checked on the source of every module.

`virt` never imports a driver (drivers are loaded through stevedore); a driver does not import
another driver (what two share belongs in the kit); `guest_agent` imports neither `virt` nor
`drivers`; and what `virt` and the drivers take from the guest agent is its shared wire
protocol only. Imports inside functions count as much as those at module level.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The guest agent's modules that both ends speak (messages, codecs, the xenstore client).
SHARED_PROTOCOL = ("guest_agent", "guest_agent.protocol", "guest_agent.wire")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module of a `from ... import`, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file, wherever it sits.

    `from pkg import sub` yields `pkg` and, when `sub` is a module, `pkg.sub`; a literal
    `importlib.import_module("x")` or `__import__("x")` yields `x`.
    """
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            yield node.lineno, module
            for alias in node.names:
                if _is_module(f"{module}.{alias.name}"):
                    yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield node.lineno, first.value


def _sources(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


def _top(module: str) -> str:
    return module.split(".")[0]


def _where(path: Path, line: int, module: str) -> str:
    return f"{path.relative_to(ROOT)}:{line}: imports {module}"


def _driver_packages() -> list[str]:
    return sorted(p.name for p in (ROOT / "drivers").iterdir() if (p / "__init__.py").is_file())


def test_the_checked_trees_exist():
    for top in ("virt", "drivers", "guest_agent"):
        assert _sources(top), f"no Python files under {top}/"
    assert _driver_packages(), "no driver packages under drivers/"


def test_virt_never_imports_a_driver():
    offenders = [
        _where(path, line, module)
        for path in _sources("virt")
        for line, module in imports(path)
        if _top(module) == "drivers"
    ]
    assert offenders == [], "virt/ must load drivers through stevedore only:\n" + "\n".join(
        offenders
    )


def test_guest_agent_imports_neither_virt_nor_drivers():
    offenders = [
        _where(path, line, module)
        for path in _sources("guest_agent")
        for line, module in imports(path)
        if _top(module) in ("virt", "drivers", "tests")
    ]
    assert offenders == [], "guest_agent ships alone:\n" + "\n".join(offenders)


@pytest.mark.parametrize("package", _driver_packages())
def test_a_driver_imports_no_other_driver(package):
    own = f"drivers.{package}"
    others = {f"drivers.{name}" for name in _driver_packages()} - {own}
    offenders = [
        _where(path, line, module)
        for path in _sources(f"drivers/{package}")
        for line, module in imports(path)
        if any(module == other or module.startswith(other + ".") for other in others)
    ]
    assert offenders == [], "what two drivers share belongs in the kit (virt/driver):\n" + (
        "\n".join(offenders)
    )


def test_host_side_takes_only_the_shared_protocol_from_the_guest_agent():
    offenders = [
        _where(path, line, module)
        for top in ("virt", "drivers")
        for path in _sources(top)
        for line, module in imports(path)
        if _top(module) == "guest_agent"
        and not any(module == m or module.startswith(m + ".") for m in SHARED_PROTOCOL[1:])
        and module != SHARED_PROTOCOL[0]
    ]
    assert offenders == [], "import guest_agent.protocol or guest_agent.wire only:\n" + (
        "\n".join(offenders)
    )


def test_the_agent_host_side_uses_the_shared_protocol():
    modules = {m for path in _sources("virt/agent") for _, m in imports(path)}
    assert {"guest_agent.protocol", "guest_agent.wire"} <= modules


def _write(tmp: Path, source: str) -> Path:
    tmp.write_text(source)
    return tmp


def test_imports_sees_function_level_relative_and_dynamic_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    pkg = tmp_path / "drivers" / "libvirt"
    pkg.mkdir(parents=True)
    (tmp_path / "drivers" / "__init__.py").write_text("")
    (tmp_path / "drivers" / "docker").mkdir()
    (tmp_path / "drivers" / "docker" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    source = _write(
        pkg / "mod.py",
        "import os\n"
        "def f():\n"
        "    from ..docker import spec\n"
        "    import drivers.docker.images\n"
        "    from drivers import docker\n"
        "    importlib.import_module('drivers.docker')\n",
    )
    assert sorted(imports(source)) == [
        (1, "os"),
        (3, "drivers.docker"),
        (4, "drivers.docker.images"),
        (5, "drivers"),
        (5, "drivers.docker"),
        (6, "drivers.docker"),
    ]
