"""The conformance suite judges drivers correctly: it passes the fake, fails broken drivers
where they are broken, skips undeclared capabilities with the reason, and its matrix merges.

Each driver under test is installed the way a third-party package would be: a module plus a
`.dist-info` with a `virtkit.compute_drivers` entry point on PYTHONPATH, and the suite runs in
a pytest subprocess exactly as `pytest --pyargs virt.conformance --virtkit-config` does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import conformance_helpers as helpers
from tests.conformance_helpers import (
    CHAP_VOLUME,
    FAKE_SAN,
    REPO,
    UNREACHABLE,
    VOLUME,
    install_drivers,
)

DRIVERS_MODULE = '''
import dataclasses

from drivers.fake.driver import FakeDriver
from virt.driver import Capability, ComputeDriver
from virt.errors import (
    HypervisorUnavailable, ImageNotFound, InstanceNotFound, InvalidState, UnsupportedOperation,
)
from virt.events import LifecycleEvent, Transition
from virt.model import ImageRef


class BrokenDriver(FakeDriver):
    """Declares everything, but breaks one contract per area."""

    name = "vk_broken"

    def pause(self, *, instance):  # declared, yet refused
        raise UnsupportedOperation(self.name, "pause")

    def snapshot(self, *, instance, name):  # declared, yet not implemented
        raise NotImplementedError("snapshot")

    def destroy(self, *, instance, block_devices=(), destroy_disks=True):
        if not self.instance_exists(instance=instance):
            raise InstanceNotFound(instance.uuid)
        super().destroy(instance=instance, block_devices=block_devices,
                        destroy_disks=destroy_disks)

    def get_info(self, instance, *, verbose=False):  # drifted signature
        return super().get_info(instance=instance)

    def frobnicate(self):  # a public method outside the interface
        return None

    def list_instances(self):  # reads an outage as "no instances"
        try:
            return super().list_instances()
        except HypervisorUnavailable:
            return []

    def power_on(self, *, instance, block_devices=()):
        if self.get_info(instance=instance).state.value == "running":
            raise InvalidState("already running")
        super().power_on(instance=instance, block_devices=block_devices)

    def spawn(self, *, instance, block_devices=(), vifs=(), admin_password=None,
              power_on=True):
        if instance.image is None:  # boot something rather than refuse
            instance = dataclasses.replace(instance, image=ImageRef("cirros"))
        try:
            super().spawn(instance=instance, block_devices=block_devices,
                          vifs=vifs, admin_password=admin_password, power_on=power_on)
        except ImageNotFound:
            # leave a half-created guest behind, as a careless driver would
            super().spawn(instance=dataclasses.replace(instance, image=ImageRef("leftover")),
                          power_on=False)
            raise


class LeakyDriver(FakeDriver):
    """Forgets the root disk of every instance it destroys."""

    name = "vk_leaky"

    def destroy(self, *, instance, block_devices=(), destroy_disks=True):
        super().destroy(instance=instance, block_devices=block_devices, destroy_disks=False)


class PartialDriver(FakeDriver):
    """Declares neither pause, rescue, suspend nor events; still implements suspend by
    mistake, and emits a ghost event after a destroy."""

    name = "vk_partial"
    capabilities = frozenset(Capability) - {Capability.PAUSE, Capability.RESCUE,
                                            Capability.SUSPEND, Capability.LIFECYCLE_EVENTS}
    pause = ComputeDriver.pause
    unpause = ComputeDriver.unpause
    rescue = ComputeDriver.rescue
    unrescue = ComputeDriver.unrescue

    def destroy(self, *, instance, block_devices=(), destroy_disks=True):
        existed = self.instance_exists(instance=instance)
        super().destroy(instance=instance, block_devices=block_devices,
                        destroy_disks=destroy_disks)
        if existed:
            self.emit_event(LifecycleEvent(instance.uuid, Transition.STARTED))
'''

CONFIG = """
[DEFAULT]
compute_driver = {driver}
state_path = {state}

[fake]
{fake_san}

[conformance]
image_ref = cirros
# the test drivers derive from the fake: its observer sees their engine
observer = fake
{extra}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A directory holding the test drivers as an installed third-party distribution."""
    return install_drivers(tmp_path_factory.mktemp("site"), "vk_test_drivers", DRIVERS_MODULE, {
        "vk_broken": "BrokenDriver", "vk_partial": "PartialDriver", "vk_leaky": "LeakyDriver"})


@pytest.fixture(scope="module")
def matrix_base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix") / "support-matrix"


def run_suite(site: Path, tmp: Path, driver: str, matrix: Path, extra: str = "", *,
              pyargs: bool = True, select: str | None = None):
    """One suite run of `driver` (CONFIG plus `extra`) in a pytest subprocess from `tmp`."""
    config = CONFIG.format(driver=driver, state=tmp / "state", extra=extra, fake_san=FAKE_SAN)
    return helpers.run_suite(site, tmp, driver, config, matrix, pyargs=pyargs, select=select)


@pytest.fixture(scope="module")
def fake_run(site, tmp_path_factory, matrix_base):
    # the short form; the other runs use --pyargs virt.conformance
    return run_suite(site, tmp_path_factory.mktemp("fake"), "fake", matrix_base,
                     f"{VOLUME}\n{CHAP_VOLUME}\n{UNREACHABLE}", pyargs=False)


@pytest.fixture(scope="module")
def broken_run(site, tmp_path_factory, matrix_base):
    return run_suite(site, tmp_path_factory.mktemp("broken"), "vk_broken", matrix_base,
                     f"{VOLUME}\n{UNREACHABLE}")


@pytest.fixture(scope="module")
def partial_run(site, tmp_path_factory, matrix_base):
    return run_suite(site, tmp_path_factory.mktemp("partial"), "vk_partial", matrix_base,
                     "exclude_capabilities = inject_file")


def test_fake_driver_passes_the_whole_suite(fake_run):
    proc, column, outcomes = fake_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert column["summary"]["failed"] == 0
    # `pytest --virtkit-config FILE` with no test path collected every module of the suite
    for name in ("test_driver_class_declarations", "test_listings_agree",
                 "test_pause_and_unpause"):
        assert outcomes[name] == "passed", name
    statuses = {op: entry["status"] for op, entry in column["operations"].items()}
    assert set(statuses.values()) == {"supported"}, statuses


def test_suite_destroys_everything_it_created(fake_run):
    proc, _, _ = fake_run
    config = Path(proc.args[proc.args.index("--virtkit-config") + 1])
    # The fake keeps one file per instance (and _host.json) in fake-hypervisor-<host>/.
    hosts = list((config.parent / "state").glob("instances/fake-hypervisor-*/_host.json"))
    assert hosts, "the fake run left no state at all"
    for path in hosts:
        assert [p.name for p in path.parent.glob("[!_.]*.json")] == []


def test_broken_driver_fails_exactly_where_it_is_broken(broken_run):
    proc, column, outcomes = broken_run
    assert proc.returncode == 1, proc.stdout[-3000:]
    expected_failures = {
        "test_pause_and_unpause",
        "test_snapshot_then_spawn_from_it",
        "test_snapshot_of_unknown_instance_fails",
        "test_destroy_of_unknown_instance_is_a_noop",
        "test_signature_matches_base[get_info]",
        "test_no_public_methods_beyond_the_interface",
        "test_power_on_of_a_running_instance_is_a_noop",
        "test_failed_spawn_leaves_nothing_behind",
        "test_spawn_of_an_instance_without_an_image_is_refused",
        "test_unreachable_engine_raises_hypervisor_unavailable",
    }
    failed = {name for name, outcome in outcomes.items() if outcome == "failed"}
    assert expected_failures <= failed, sorted(expected_failures - failed)
    # what is not broken still passes
    for name in ("test_suspend_and_resume", "test_signature_matches_base[spawn]",
                 "test_volume_attach_and_detach", "test_listings_agree"):
        assert outcomes[name] == "passed", name
    ops = column["operations"]
    for op in ("pause", "snapshot", "destroy", "get_info", "power_on", "spawn",
               "list_instances"):
        assert ops[op]["status"] == "failed", op
    assert ops["suspend"]["status"] == "supported"
    pause_reasons = [t.get("reason", "") for t in ops["pause"]["tests"]]
    assert any("declares capability 'pause' but raised UnsupportedOperation" in r
               for r in pause_reasons), pause_reasons


def test_broken_driver_failures_say_why(broken_run):
    proc, column, _ = broken_run
    text = json.dumps(column)
    assert "signature drift" in text and "verbose" in text
    assert "frobnicate" in text
    assert "NotImplementedError" in text


def test_undeclared_capabilities_are_skipped_with_reason(partial_run):
    proc, column, outcomes = partial_run
    assert outcomes["test_pause_and_unpause"] == "skipped"
    assert outcomes["test_rescue_and_unrescue"] == "skipped"
    assert "does not declare capability 'pause'" in proc.stdout
    reasons = [t.get("reason", "") for t in column["operations"]["pause"]["tests"]]
    assert any("does not declare capability 'pause'" in r for r in reasons)
    for op in ("pause", "unpause", "rescue", "unrescue"):
        assert column["operations"][op]["status"] == "unsupported", op
        assert outcomes[f"test_undeclared_operation_raises_unsupported[{op}]"] == "passed"


def test_undeclared_but_implemented_operation_fails(partial_run):
    proc, column, outcomes = partial_run
    assert proc.returncode == 1
    assert outcomes["test_undeclared_operation_raises_unsupported[suspend]"] == "failed"
    assert column["operations"]["suspend"]["status"] == "failed"
    assert "declare capability 'suspend'" in json.dumps(column["operations"]["suspend"])


def test_event_order_is_checked_for_a_driver_that_does_not_declare_events(partial_run):
    _, column, outcomes = partial_run
    assert outcomes["test_lifecycle_events_arrive_in_order"] == "skipped"
    assert outcomes["test_events_that_arrive_are_in_a_valid_order"] == "failed"
    reasons = [t.get("reason", "") for t in column["operations"]["destroy"]["tests"]
               if t["test"] == "test_events_that_arrive_are_in_a_valid_order"]
    assert any("after the final stopped one" in r for r in reasons), reasons


def test_config_can_only_narrow_declared_capabilities(partial_run):
    _, column, outcomes = partial_run
    assert outcomes["test_inject_file"] == "skipped"
    # declared but excluded: never "supported", and said to be declared
    assert column["operations"]["inject_file"]["status"] == "not exercised"
    reasons = [t.get("reason", "") for t in column["operations"]["inject_file"]["tests"]]
    assert any("excluded by [conformance] exclude_capabilities" in r for r in reasons)


def test_volume_tests_without_a_volume_are_not_exercised(partial_run):
    _, column, outcomes = partial_run
    assert outcomes["test_volume_attach_and_detach"] == "skipped"
    assert column["operations"]["attach_volume"]["status"] == "not exercised"


def test_matrix_merges_every_run(fake_run, broken_run, partial_run, matrix_base):
    matrix = json.loads(matrix_base.with_suffix(".json").read_text())
    assert set(matrix["drivers"]) == {"fake", "vk_broken", "vk_partial"}
    markdown = matrix_base.with_suffix(".md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| operation"))
    assert header == "| operation | capability | fake | vk_broken | vk_partial |"
    pause_row = next(line for line in markdown.splitlines() if line.startswith("| `pause`"))
    assert "✅ supported" in pause_row and "❌ **failed**" in pause_row
    assert "➖ unsupported" in pause_row


def test_suite_is_skipped_without_a_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
         "--pyargs", "virt.conformance"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "needs --virtkit-config" in proc.stdout
    assert " passed" not in proc.stdout


def test_plugin_is_inert_and_cheap_to_load():
    code = textwrap.dedent("""
        import sys
        import virt.conformance.plugin
        heavy = [m for m in ("virt.driver", "oslo_config", "stevedore", "virt.conformance.fixtures")
                 if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]"


def test_bad_config_is_a_usage_error(tmp_path):
    config = tmp_path / "bad.conf"
    config.write_text("[conformance]\nflavor = tiny:zero:512:1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         "--pyargs", "virt.conformance", "--virtkit-config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 4, proc.stdout + proc.stderr  # pytest's usage error
    assert "flavor" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("story, problem", [
    ([], None),
    (["started", "stopped", "started", "stopped"], None),
    (["started", "resumed", "stopped", "started"], None),  # libvirt's start may add resumed
    (["started", "started", "stopped"], None),  # a debounced stop was never delivered
    (["started"], None),
    (["stopped", "started"], "before the instance's first started event"),
    (["started", "stopped", "started", "stopped", "started"], "after the final stopped one"),
    (["started", "paused", "stopped"], "paused without a pause"),
])
def test_event_order_judge(story, problem):
    from virt.conformance.test_contracts import _order_problem
    from virt.events import LifecycleEvent, Transition

    events = [LifecycleEvent("u", Transition(t)) for t in story]
    found = _order_problem(events)
    assert (found is None) if problem is None else (problem in (found or "")), found


def test_event_order_judge_refuses_events_delivered_out_of_seq_order():
    from virt.conformance.test_contracts import _order_problem
    from virt.events import LifecycleEvent, Transition

    first, second = LifecycleEvent("u", Transition.STARTED), LifecycleEvent("u", Transition.STOPPED)
    assert "out of their seq order" in (_order_problem([second, first]) or "")


def test_readme_support_matrix_block_is_the_rendered_matrix():
    from virt.conformance.matrix import load_matrix, readme_with_matrix

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    matrix = load_matrix(REPO / "docs" / "support-matrix.json")
    assert readme_with_matrix(readme, matrix) == readme, (
        "README.md's support matrix differs from docs/support-matrix.json: run "
        "scripts/run-conformance (it rewrites the block), never edit it by hand")


def test_update_readme_rewrites_only_the_block(tmp_path):
    from virt.conformance.matrix import (
        README_BEGIN,
        README_END,
        load_matrix,
        render_table,
        update_readme,
    )
    from virt.errors import ConfigError

    json_path = REPO / "docs" / "support-matrix.json"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{README_BEGIN}\n| stale |\n{README_END}\n\nafter\n")
    assert update_readme(readme, json_path) is True
    table = "\n".join(render_table(load_matrix(json_path)))
    assert readme.read_text() == f"# x\n\n{README_BEGIN}\n{table}\n{README_END}\n\nafter\n"
    assert update_readme(readme, json_path) is False
    readme.write_text("no markers\n")
    with pytest.raises(ConfigError, match="support-matrix:begin"):
        update_readme(readme, json_path)


# -- capabilities per connection, and someone else's instances -------------------------------

CONNECTION_DRIVERS = '''
from pathlib import Path

from drivers.fake.driver import FakeDriver
from virt.driver import Capability, ComputeDriver
from virt.errors import UnsupportedOperation


class NarrowingDriver(FakeDriver):
    """Declares pause, but its init_host finds this connection cannot: pause is refused."""

    name = "vk_narrowing"

    def init_host(self, *, host):
        super().init_host(host=host)
        self.narrow_capabilities({Capability.PAUSE}, reason="this engine cannot")

    def pause(self, *, instance):
        if not self.supports(Capability.PAUSE):
            raise UnsupportedOperation(self.name, "pause")
        super().pause(instance=instance)

    def unpause(self, *, instance):
        if not self.supports(Capability.PAUSE):
            raise UnsupportedOperation(self.name, "unpause")
        super().unpause(instance=instance)


class _SeesOtherHosts(FakeDriver):
    """Mutants that take other fake hosts' records (someone else's) for their own."""

    def _others(self):
        base = Path(self.conf.instances_path)
        own = f"fake-hypervisor-{self._host}"
        return [p for p in base.glob("fake-hypervisor-*/*.json")
                if p.parent.name != own and not p.name.startswith(("_", "."))]


class ListsOthers(_SeesOtherHosts):
    def list_instance_uuids(self):
        return sorted(super().list_instance_uuids() + [p.stem for p in self._others()])


class CountsOthers(_SeesOtherHosts):
    def get_available_resource(self):
        import dataclasses, json

        res = super().get_available_resource()
        extra = sum(json.loads(p.read_text())["flavor"]["vcpus"] for p in self._others())
        return dataclasses.replace(res, vcpus_used=res.vcpus_used + extra)


class DestroysOthers(_SeesOtherHosts):
    def destroy(self, *, instance, block_devices=(), destroy_disks=True):
        for path in self._others():
            if path.stem == instance.uuid:
                path.unlink()
        super().destroy(instance=instance, block_devices=block_devices,
                        destroy_disks=destroy_disks)
'''
FOREIGN_TEST = "test_an_instance_made_by_someone_else_is_not_the_drivers"
FOREIGN_MUTANTS = {"ListsOthers": "list_instance_uuids", "CountsOthers": "get_available_resource",
                   "DestroysOthers": "destroy"}


@pytest.fixture(scope="module")
def connection_site(tmp_path_factory) -> Path:
    entries = {"vk_narrowing": "NarrowingDriver"}
    entries.update({f"vk_{cls.lower()}": cls for cls in FOREIGN_MUTANTS})
    return install_drivers(tmp_path_factory.mktemp("connection-site"), "vk_connection_drivers",
                           CONNECTION_DRIVERS, entries)


def test_gating_follows_what_init_host_found_the_connection_can_do(connection_site,
                                                                   tmp_path):
    proc, column, outcomes = run_suite(
        connection_site, tmp_path / "run", "vk_narrowing", tmp_path / "matrix",
        select="pause or undeclared or listings or someone_else")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "pause" not in column["capabilities"] and "snapshot" in column["capabilities"]
    assert outcomes["test_pause_and_unpause"] == "skipped"
    reasons = [t.get("reason", "") for t in column["operations"]["pause"]["tests"]]
    assert any("does not declare capability 'pause' on this connection" in r
               for r in reasons), reasons
    for op in ("pause", "unpause"):
        assert column["operations"][op]["status"] == "unsupported", op
        assert outcomes[f"test_undeclared_operation_raises_unsupported[{op}]"] == "passed"
    assert "capabilities on this connection:" in proc.stdout
    assert "narrowed by init_host: not pause" in proc.stdout


def test_the_fake_keeps_to_its_own_instances(site, tmp_path):
    proc, column, outcomes = run_suite(site, tmp_path / "run", "fake", tmp_path / "matrix",
                                       select="someone_else")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert outcomes[FOREIGN_TEST] == "passed"
    assert column["operations"]["list_instances"]["status"] == "supported"
    # the observer removed what it made
    assert not list((tmp_path / "run" / "state").glob("instances/*foreign*/*.json"))


@pytest.mark.parametrize("cls", list(FOREIGN_MUTANTS))
def test_a_driver_that_takes_someone_else_s_instance_fails(connection_site, tmp_path, cls):
    proc, column, outcomes = run_suite(connection_site, tmp_path / "run", f"vk_{cls.lower()}",
                                       tmp_path / "matrix", select="someone_else")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert outcomes[FOREIGN_TEST] == "failed"
    assert column["operations"][FOREIGN_MUTANTS[cls]]["status"] == "failed"


def test_instances_left_behind_fail_the_run(site, tmp_path):
    proc, column, _ = run_suite(site, tmp_path / "run", "vk_leaky", tmp_path / "matrix",
                                select="listings_agree")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "virtkit conformance: FAILED: left behind:" in proc.stdout
    checks = {c["test"]: c["outcome"] for c in column["driver_checks"]}
    assert checks["nothing_left_behind"] == "failed"


def test_a_declared_capability_left_unexercised_fails_the_run(site, tmp_path):
    # the fake declares volume_attach; without a volume to attach the run cannot exercise it
    proc, column, outcomes = run_suite(site, tmp_path / "run", "fake", tmp_path / "matrix",
                                       select="volume_attach_and_detach")
    assert outcomes["test_volume_attach_and_detach"] == "skipped"
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "declared but not exercised (skipped): test_volume_attach_and_detach" in proc.stdout
    assert column["operations"]["attach_volume"]["status"] == "not exercised"
