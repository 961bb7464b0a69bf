"""Static checks of a driver class against ComputeDriver (Nova's assertPublicAPISignatures)."""

from __future__ import annotations

import inspect
from typing import Any

from virt.driver import OPERATIONS, Capability, ComputeDriver


def public_methods(cls: type) -> dict[str, Any]:
    """Public callables defined on `cls` or its bases (classmethods and staticmethods too)."""
    methods = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        value = inspect.getattr_static(cls, name)
        if isinstance(value, classmethod | staticmethod) or inspect.isfunction(value):
            methods[name] = getattr(cls, name)
    return methods


def _shape(func: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults (annotations are not compared)."""
    params = inspect.signature(func).parameters.values()
    return [(p.name, p.kind, p.default) for p in params]


def extra_public_methods(cls: type[ComputeDriver]) -> list[str]:
    """Public methods of `cls` that ComputeDriver does not have."""
    return sorted(set(public_methods(cls)) - set(public_methods(ComputeDriver)))


def signature_problem(cls: type[ComputeDriver], name: str) -> str | None:
    """Why `cls.name` does not match ComputeDriver's method, or None if it does."""
    theirs = public_methods(cls).get(name)
    ours = public_methods(ComputeDriver)[name]
    if theirs is None:
        return f"{cls.__name__}.{name} is not a method"
    if _shape(theirs) != _shape(ours):
        return (f"{cls.__name__}.{name}{inspect.signature(theirs)} differs from "
                f"ComputeDriver.{name}{inspect.signature(ours)}")
    return None


def signature_problems(cls: type[ComputeDriver]) -> list[str]:
    """Every public method missing from the base, and every drifted signature."""
    problems = [f"public method {name}() is not part of ComputeDriver" for name in
                extra_public_methods(cls)]
    for name in sorted(public_methods(ComputeDriver)):
        problem = signature_problem(cls, name)
        if problem:
            problems.append(problem)
    return problems


def declaration_problems(cls: type[ComputeDriver], entry_point: str) -> list[str]:
    """Problems with the class's declarations: name, capabilities, unimplemented claims."""
    problems = []
    if cls.name != entry_point:
        problems.append(f"{cls.__name__}.name is {cls.name!r} but it is loaded as the entry "
                        f"point {entry_point!r}")
    caps = cls.capabilities
    if not isinstance(caps, frozenset):
        problems.append(f"capabilities is a {type(caps).__name__}, not a frozenset")
    bad = [c for c in caps if not isinstance(c, Capability)]
    if bad:
        problems.append(f"capabilities holds non-Capability values: {bad!r}")
    for op, capability in OPERATIONS.items():
        if capability is None or capability not in caps:
            continue
        if getattr(cls, op) is getattr(ComputeDriver, op):
            problems.append(f"declares capability '{capability.value}' but does not "
                            f"implement {op}()")
    return problems
