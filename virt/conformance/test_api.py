"""Static conformance: the driver class against the ComputeDriver interface."""

from __future__ import annotations

from typing import Any

import pytest

from virt.conformance.signatures import (
    declaration_problems,
    extra_public_methods,
    public_methods,
    signature_problem,
)
from virt.driver import OPERATIONS, ComputeDriver, load_driver_class, resolve_configured_name

pytestmark = pytest.mark.virtkit_kind("check")

BASE_METHODS = sorted(public_methods(ComputeDriver))


def _param(name: str) -> Any:
    ops = (name,) if name in OPERATIONS else ()
    return pytest.param(name, id=name, marks=pytest.mark.virtkit_operations(*ops))


@pytest.fixture(scope="module")
def driver_class(suite):
    return load_driver_class(suite.conf.compute_driver)


@pytest.mark.parametrize("method", [_param(name) for name in BASE_METHODS])
def test_signature_matches_base(driver_class, method):
    problem = signature_problem(driver_class, method)
    assert problem is None, f"signature drift: {problem}"


def test_no_public_methods_beyond_the_interface(driver_class):
    extra = extra_public_methods(driver_class)
    assert not extra, (
        f"public methods not in ComputeDriver: {', '.join(extra)} (callers cannot rely on "
        "them; make them private with a leading underscore)"
    )


def test_driver_class_declarations(driver_class, suite):
    assert issubclass(driver_class, ComputeDriver)
    entry_point = resolve_configured_name(suite.conf.compute_driver)
    problems = declaration_problems(driver_class, entry_point)
    assert not problems, "\n".join(problems)
