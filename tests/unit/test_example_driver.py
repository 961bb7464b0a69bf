"""The example driver of docs/writing-a-driver.md passes the conformance suite, keeps the
contracts the guide says it keeps, and the guide quotes its real code.

The driver is installed as a third-party package would be (a `.dist-info` with a
`virtkit.compute_drivers` entry point on PYTHONPATH) and the suite runs in a pytest
subprocess, as `pytest --pyargs virt.conformance --virtkit-config FILE` does.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import re
import string
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.example_driver.connection import ERRORS
from tests.example_driver.driver import ExampleDriver
from tests.example_driver.engine import EngineClient
from virt.config import build_conf
from virt.errors import (
    AccessDenied,
    HypervisorUnavailable,
    ImageNotFound,
    InstanceExists,
    InstanceNotFound,
    InvalidState,
    VirtError,
)
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance, PowerState, new_uuid

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "tests" / "example_driver"
GUIDE = REPO / "docs" / "writing-a-driver.md"
ENTRY_POINT = "example = tests.example_driver.driver:ExampleDriver"
OBSERVER = "example = tests.example_driver.observer:ExampleObserver"
FLAVOR = Flavor(name="small", vcpus=1, memory_mb=256, root_gb=1)


# -- the conformance suite, against the driver installed through an entry point ----------


@pytest.fixture(scope="module")
def conformance_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("example-conformance")
    site = root / "site"
    dist = site / "virtkit_example_driver-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: virtkit-example-driver\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[virtkit.compute_drivers]\n{ENTRY_POINT}\n\n"
                                           f"[virtkit.conformance_observers]\n{OBSERVER}\n")
    image = root / "example.img"
    image.write_bytes(b"EXAMPLE-IMAGE\n" * 64)
    template = (PACKAGE / "conformance.conf.in").read_text()
    config = root / "example.conf"
    config.write_text(string.Template(template).substitute(EXAMPLE_IMAGE=image))
    matrix = root / "matrix"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
         "--pyargs", "virt.conformance", "--virtkit-config", str(config),
         "--virtkit-matrix", str(matrix)],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    column = json.loads(matrix.with_suffix(".json").read_text())["drivers"]["example"]
    tests = [t for op in column["operations"].values() for t in op["tests"]]
    outcomes = {t["test"]: t["outcome"] for t in tests + column["driver_checks"]}
    return proc, column, outcomes


def test_example_driver_passes_the_conformance_suite(conformance_run):
    proc, column, outcomes = conformance_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert column["summary"]["failed"] == 0
    assert column["summary"]["passed"] > 40, column["summary"]
    for name in ("test_driver_class_declarations", "test_failed_spawn_leaves_nothing_behind",
                 "test_pause_and_unpause", "test_lifecycle_events_arrive_in_order",
                 "test_events_that_arrive_are_in_a_valid_order", "test_soft_and_hard_reboot",
                 "test_unreachable_engine_raises_hypervisor_unavailable",
                 "test_undeclared_operation_raises_unsupported[snapshot]",
                 "test_instance_disk_file_is_kept_by_destroy_without_disks"):
        assert outcomes[name] == "passed", name
    statuses = {op: entry["status"] for op, entry in column["operations"].items()}
    assert statuses["pause"] == statuses["register_event_listener"] == "supported"
    assert statuses["snapshot"] == statuses["attach_volume"] == "unsupported"
    assert "failed" not in statuses.values(), statuses


# -- the contracts the guide describes, in process ---------------------------------------


def make_driver(tmp_path: Path, **example: object) -> ExampleDriver:
    lines = [f"{key} = {value}" for key, value in {"stopped_event_delay": 0.2,
                                                   **example}.items()]
    config = tmp_path / "virtkit.conf"
    config.write_text(f"[DEFAULT]\nstate_path = {tmp_path / 'state'}\nhost = h1\n\n"
                      "[example]\n" + "\n".join(lines) + "\n")
    driver = ExampleDriver(build_conf(config))
    driver.init_host(host="h1")
    return driver


@pytest.fixture
def driver(tmp_path):
    driver = make_driver(tmp_path)
    yield driver
    driver.cleanup_host(host="h1")


@pytest.fixture
def image(tmp_path) -> ImageRef:
    path = tmp_path / "base.img"
    path.write_bytes(b"BASE\n")
    return ImageRef(ref=str(path))


def instance(image: ImageRef | None = None, **metadata: str) -> Instance:
    return Instance(uuid=new_uuid(), name="vm", flavor=FLAVOR, image=image, metadata=metadata)


def test_spawn_reuses_an_existing_root_disk(driver, image):
    guest = instance(ImageRef(ref="/nonexistent/image"))
    disk = Path(driver.instance_disk_path(instance=guest))
    disk.parent.mkdir(parents=True)
    disk.write_bytes(b"KEPT FROM THE FAILED HOST\n")
    driver.spawn(instance=guest)
    assert driver.get_info(instance=guest).state is PowerState.RUNNING
    assert disk.read_bytes() == b"KEPT FROM THE FAILED HOST\n"


def test_destroy_without_disks_keeps_them(driver, image):
    guest = instance(image)
    driver.spawn(instance=guest)
    disk = Path(driver.instance_disk_path(instance=guest))
    assert disk.read_bytes() == b"BASE\n"
    driver.destroy(instance=guest, destroy_disks=False)
    assert not driver.instance_exists(instance=guest)
    assert disk.is_file()
    driver.spawn(instance=guest)  # recovery's re-spawn on the kept disk
    driver.destroy(instance=guest)
    assert not disk.exists()


def test_failed_spawn_rolls_back_only_what_it_created(tmp_path, image):
    driver = make_driver(tmp_path, memory_mb=128)  # the 256 MiB guest cannot start
    new, reused = instance(image), instance(image)
    reused_disk = Path(driver.instance_disk_path(instance=reused))
    reused_disk.parent.mkdir(parents=True)
    reused_disk.write_bytes(b"OLD\n")
    for guest in (new, reused):
        with pytest.raises(VirtError, match="out-of-memory|MiB"):
            driver.spawn(instance=guest)
        assert guest.uuid not in driver.list_instance_uuids()
    assert not Path(driver.instance_disk_path(instance=new)).exists()
    assert reused_disk.read_bytes() == b"OLD\n"
    with pytest.raises(ImageNotFound):
        driver.spawn(instance=instance(ImageRef(ref="/nonexistent/image")))
    driver.cleanup_host(host="h1")


def test_spawn_of_an_existing_instance_keeps_it(driver, image):
    guest = instance(image)
    driver.spawn(instance=guest)
    with pytest.raises(InstanceExists):
        driver.spawn(instance=guest)
    assert driver.get_info(instance=guest).state is PowerState.RUNNING
    assert Path(driver.instance_disk_path(instance=guest)).is_file()


def test_power_off_asks_then_forces_a_guest_that_ignores_acpi(driver, image):
    polite, stubborn = instance(image), instance(image, acpi="off")
    for guest in (polite, stubborn):
        driver.spawn(instance=guest)
    clean = driver.power_off(instance=polite, timeout=5, retry_interval=1)
    assert clean.clean and not clean.forced
    began = time.monotonic()
    forced = driver.power_off(instance=stubborn, timeout=0.5, retry_interval=0.2)
    assert forced.forced and not forced.clean and time.monotonic() - began >= 0.5
    assert driver.get_info(instance=stubborn).state is PowerState.SHUTDOWN
    assert driver.power_off(instance=stubborn, timeout=1).already_off


def test_state_guards(driver, image):
    guest = instance(image)
    driver.spawn(instance=guest, power_on=False)
    with pytest.raises(InvalidState):
        driver.pause(instance=guest)
    driver.power_on(instance=guest)
    driver.power_on(instance=guest)  # running: a no-op
    driver.pause(instance=guest)
    driver.pause(instance=guest)  # paused: a no-op
    with pytest.raises(InvalidState, match="unpause"):
        driver.power_on(instance=guest)
    with pytest.raises(InvalidState, match="soft reboot"):
        driver.reboot(instance=guest)
    driver.unpause(instance=guest)
    assert driver.get_info(instance=guest).state is PowerState.RUNNING
    with pytest.raises(InstanceNotFound):
        driver.power_on(instance=instance())


def test_deprecated_option_name_still_works(tmp_path):
    driver = make_driver(tmp_path, engine_timeout=7)
    assert driver.conf.example.call_timeout == 7
    driver.cleanup_host(host="h1")


def test_unreachable_engine_and_permission_problem_are_kept_apart(tmp_path):
    config = tmp_path / "virtkit.conf"
    config.write_text("[example]\nengine_path = /dev/null/no-engine\n")
    unreachable = ExampleDriver(build_conf(config))
    with pytest.raises(HypervisorUnavailable, match="engine_path"):
        unreachable.init_host(host="h1")
    with pytest.raises(HypervisorUnavailable):
        unreachable.list_instances()
    denied = ERRORS.error(PermissionError(13, "Permission denied", "/srv/engine/guests"),
                          "connect")
    assert isinstance(denied, AccessDenied)
    assert not isinstance(denied, HypervisorUnavailable)
    assert "/srv/engine/guests" in str(denied) and "engine_path" in str(denied)


def test_events_are_debounced_and_resynced_after_a_reconnect(tmp_path, image):
    driver = make_driver(tmp_path, call_timeout=1)
    seen: list[Transition] = []
    guest = instance(image)
    driver.register_event_listener(
        lambda e: seen.append(e.transition) if e.instance_uuid == guest.uuid else None)
    driver.spawn(instance=guest)
    driver.reboot(instance=guest, timeout=5)  # halted then running: no STOPPED
    wait(lambda: seen == [Transition.STARTED, Transition.STARTED])
    # Another client of the engine stops the guest: this driver does not hear of it ...
    other = EngineClient(driver.conf.example.engine_path, timeout=1, memory_mb=4096)
    other.poweroff(guest.uuid)
    time.sleep(0.5)
    assert seen == [Transition.STARTED, Transition.STARTED]
    # ... until its connection is lost (the engine does not answer) and opened again.
    with open(Path(driver.conf.example.engine_path) / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(HypervisorUnavailable, match="no answer"):
            driver.list_instances()
    assert driver.get_info(instance=guest).state is PowerState.SHUTDOWN
    wait(lambda: seen[-1:] == [Transition.STOPPED])
    driver.cleanup_host(host="h1")


def wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- the guide quotes the example's real code --------------------------------------------

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
_NAMED = re.compile(r"`(tests/example_driver/[\w./]+)`(?:,\s*`([\w.]+)`)?")


def _symbol_lines(path: Path, qualname: str) -> tuple[int, int] | None:
    """First and last line of the function, class or assignment `qualname` in `path`."""
    nodes: list[ast.stmt] = ast.parse(path.read_text()).body
    found = None
    for part in qualname.split("."):
        found = next((n for n in nodes if getattr(n, "name", None) == part
                      or any(getattr(t, "id", None) == part
                             for t in getattr(n, "targets", [getattr(n, "target", None)]))),
                     None)
        if found is None:
            return None
        nodes = getattr(found, "body", [])
    assert found is not None
    return found.lineno, found.end_lineno or found.lineno


def _quotes() -> list[tuple[str, str, Path | None, str | None]]:
    """(language, code, file named before it, symbol named right before it) per block."""
    text = GUIDE.read_text()
    quotes, path, previous_end = [], None, 0
    for block in _FENCE.finditer(text):
        symbol = None
        for named in _NAMED.finditer(text, 0, block.start()):
            path = REPO / named.group(1)
            symbol = named.group(2) if named.start() >= previous_end else None
        quotes.append((block.group(1), block.group(2), path, symbol))
        previous_end = block.end()
    return quotes


def test_guide_names_only_files_and_tests_that_exist():
    text = GUIDE.read_text()
    for named in _NAMED.finditer(text):
        path = REPO / named.group(1)
        assert path.is_file(), f"the guide names {named.group(1)}, which does not exist"
        if named.group(2):
            assert _symbol_lines(path, named.group(2)), f"{named.group(2)} not in {path.name}"
    ours = {n.name for n in ast.parse(Path(__file__).read_text()).body
            if isinstance(n, ast.FunctionDef)}
    for name in set(re.findall(r"`(test_\w+)`", text)):
        assert name in ours, f"the guide names {name}, which is not in {Path(__file__).name}"


def test_guide_names_kit_api_that_exists():
    import importlib

    names = set(re.findall(r"`(virt\.driver(?:\.\w+)*)`", GUIDE.read_text()))
    assert "virt.driver.rollback.SpawnRollback" in names
    for dotted in names:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                value = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                value = getattr(value, attr)  # AttributeError: the guide names a ghost
            break


def test_guide_quotes_are_the_real_code():
    quotes = _quotes()
    assert len([q for q in quotes if q[0] == "python"]) >= 10
    for language, code, path, symbol in quotes:
        if language == "toml":
            points = tomllib.loads(code)["project"]["entry-points"]["virtkit.compute_drivers"]
            name, _, target = ENTRY_POINT.partition(" = ")
            assert points == {name: target}, "the guide's entry point is not the one installed"
            continue
        if language not in ("python", "ini"):
            continue
        assert path is not None, f"no file named before the quote:\n{code}"
        lines = path.read_text().splitlines()
        wanted = code.strip("\n").splitlines()
        starts = [i for i in range(len(lines)) if lines[i:i + len(wanted)] == wanted]
        assert starts, f"the guide's quote is not in {path.name}:\n{code}"
        if symbol:
            first, last = _symbol_lines(path, symbol) or (0, 0)
            assert any(first <= s + 1 <= last for s in starts), (
                f"the guide's quote is not inside {symbol} of {path.name}:\n{code}")
