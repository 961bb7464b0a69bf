"""Loading drivers through stevedore: names, Nova aliases, clear errors, no eager imports."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from drivers.fake.driver import FakeDriver
from virt.driver import Capability, list_drivers, load_driver, load_driver_class
from virt.errors import EXIT_USAGE, DriverLoadError

REPO = Path(__file__).resolve().parents[2]
BACKEND_MODULES = ("libvirt", "docker", "lxml", "XenAPI")


def run_python(code: str, pythonpath: list[Path] | None = None) -> str:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*pythonpath, REPO])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("name", ["fake", "fake.FakeDriver", "FAKE"])
def test_entry_point_and_nova_alias_load_the_fake(conf, name):
    driver = load_driver(name, conf)
    assert type(driver) is FakeDriver
    assert driver.conf is conf


def test_unknown_driver_lists_the_installed_ones():
    with pytest.raises(DriverLoadError) as err:
        load_driver_class("hyperv.HyperVDriver")
    message = str(err.value)
    assert "unknown compute driver 'hyperv.HyperVDriver'" in message
    assert "fake" in message and "libvirt" in message and "docker" in message
    assert err.value.exit_code == EXIT_USAGE


def test_list_drivers_reports_the_fake_with_every_capability():
    fake = next(info for info in list_drivers() if info.name == "fake")
    assert fake.loaded and fake.error is None
    assert set(fake.capabilities) == {c.value for c in Capability}


def _third_party(root: Path, name: str, module_source: str) -> Path:
    """Install a one-module distribution with one driver entry point under `root`."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        f"[virtkit.compute_drivers]\n{name} = {name}:Driver\n")
    return root


def test_third_party_driver_with_a_missing_dependency_names_the_module(tmp_path):
    site = _third_party(tmp_path, "vk_needy", """
        import virtkit_no_such_backend_lib  # the dependency that is not installed
        from virt.driver import ComputeDriver
        class Driver(ComputeDriver):
            name = "vk_needy"
    """)
    out = run_python("""
        from virt.driver import load_driver_class
        from virt.errors import DriverLoadError
        try:
            load_driver_class("vk_needy")
        except DriverLoadError as exc:
            print(exc)
    """, [site])
    assert "driver 'vk_needy' needs the Python module 'virtkit_no_such_backend_lib'" in out
    assert "install the package that provides it" in out


def test_third_party_entry_point_that_is_not_a_driver(tmp_path):
    site = _third_party(tmp_path, "vk_notadriver", """
        class Driver:
            pass
    """)
    out = run_python("""
        from virt.driver import load_driver_class
        from virt.errors import DriverLoadError
        try:
            load_driver_class("vk_notadriver")
        except DriverLoadError as exc:
            print(exc)
    """, [site])
    assert "not a ComputeDriver" in out


@pytest.mark.parametrize("name, module", [("libvirt", "libvirt"), ("docker", "docker")])
def test_backend_missing_its_library_says_which_extra_to_install(name, module):
    # Make the backend library unimportable in a fresh interpreter, as if never installed.
    out = run_python(f"""
        import sys
        sys.modules[{module!r}] = None
        from virt.driver import load_driver_class
        from virt.errors import DriverLoadError
        try:
            load_driver_class({name!r})
        except DriverLoadError as exc:
            print(exc)
    """)
    assert f"needs the Python module '{module}" in out  # 'docker' or 'docker.errors'
    assert f"pip install 'virtkit[{name}]'" in out


def test_import_virt_pulls_in_no_backend_library():
    out = run_python(f"""
        import sys
        import virt, virt.driver, virt.model, virt.config, virt.errors, virt.events
        from virt.config import build_conf
        from virt.driver import load_driver
        import tempfile
        load_driver("fake", build_conf(overrides={{"state_path": tempfile.mkdtemp()}}))
        loaded = [m for m in {BACKEND_MODULES!r} if m in sys.modules]
        loaded += [m for m in sys.modules if m.startswith(("drivers.libvirt", "drivers.docker"))]
        print(loaded)
    """)
    assert out == "[]"


def test_bare_import_virt_is_tiny():
    out = run_python("""
        import sys
        before = set(sys.modules)
        import virt
        print(sorted(m for m in set(sys.modules) - before if not m.startswith("virt")))
    """)
    assert out == "[]"


@pytest.mark.parametrize("name", ["fake.driver.FakeDriver", "nova.virt.fake.FakeDriver",
                                  "nova.virt.fake.driver.FakeDriver"])
def test_dotted_nova_forms_load_the_fake(name):
    assert load_driver_class(name) is FakeDriver


@pytest.mark.parametrize("name", ["libvirt.XenDriver", "fake.LibvirtDriver", "fake.fakedriver",
                                  "fake.something.FakeDriver", "nova.virt.fake.XenDriver",
                                  "other.fake.FakeDriver"])
def test_loose_aliases_are_unknown_drivers(name):
    with pytest.raises(DriverLoadError, match=f"unknown compute driver '{name}'"):
        load_driver_class(name)


def test_import_error_inside_the_drivers_own_package_is_a_broken_driver(tmp_path):
    pkg = tmp_path / "vk_broken"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "driver.py").write_text("from vk_broken import helpers  # not shipped: a bug\n")
    dist = tmp_path / "vk_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vk_broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[virtkit.compute_drivers]\nvk_broken = vk_broken.driver:Driver\n")
    out = run_python("""
        from virt.driver import load_driver_class
        from virt.errors import DriverLoadError
        try:
            load_driver_class("vk_broken")
        except DriverLoadError as exc:
            print(exc)
    """, [tmp_path])
    assert "driver 'vk_broken' is broken" in out and "helpers" in out
    assert "not installed" not in out


def test_describe_import_error_tells_missing_dependency_from_broken_driver():
    from virt.driver import describe_import_error

    target = "drivers.libvirt.driver:LibvirtDriver"
    missing = ModuleNotFoundError("No module named 'libvirt'", name="libvirt")
    assert "pip install 'virtkit[libvirt]'" in describe_import_error("libvirt", missing, target)
    inner = ModuleNotFoundError("No module named 'drivers.libvirt.xml'",
                                name="drivers.libvirt.xml")
    assert "is broken" in describe_import_error("libvirt", inner, target)
    bad_name = ImportError("cannot import name 'x' from 'lxml'", name="lxml")
    text = describe_import_error("libvirt", bad_name, target)
    assert "not installed" not in text and "cannot import from its dependency 'lxml'" in text
