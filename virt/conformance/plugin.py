"""pytest plugin entry point of the conformance suite (inert unless --virtkit-config is given).

It is loaded in every pytest run of a project that installs virtkit, so at import and in
every hook it does nothing costly: it adds two options and three markers, and only when
`--virtkit-config FILE` is given does it load the driver's settings, gate tests by the
driver's capabilities, record outcomes and write the support matrix. Given no test paths,
such a run collects the suite itself: `pytest --virtkit-config FILE` is enough.

Tests are gated by what the driver instance can do on its connection
(`ComputeDriver.connection_capabilities`, narrowed by its `init_host`), so the run makes and
initialises the driver once, at the first test that needs it, and the `raw_driver` fixture
takes that same instance.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from virt.conformance.matrix import TestRecord
    from virt.conformance.settings import SuiteSettings
    from virt.driver import Capability, ComputeDriver

LOG = logging.getLogger(__name__)
SUITE_DIR = Path(__file__).resolve().parent
MARKERS = (
    "virtkit_operations(*names): interface operations a conformance test speaks for",
    "virtkit_capability(cap): the Capability a conformance test needs (skipped if undeclared)",
    "virtkit_kind(kind): 'exercise' (default), 'unsupported' (an undeclared operation must "
    "refuse) or 'check' (a static check: failing fails its operations, passing proves nothing)",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("virtkit", "virtkit driver conformance suite")
    group.addoption("--virtkit-config", metavar="FILE", default=None,
                    help="run the virtkit conformance suite against the driver configured in "
                    "FILE (compute_driver plus a [conformance] group)")
    group.addoption("--virtkit-matrix", metavar="PATH", default=None,
                    help="merge this run's results into the support matrix PATH.json and "
                    "re-render PATH.md")


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config_file = config.getoption("--virtkit-config", default=None)
    if not config_file:
        return
    from virt.conformance.settings import load_settings
    from virt.errors import VirtError

    try:
        settings = load_settings(config_file)
    except VirtError as exc:
        raise pytest.UsageError(f"--virtkit-config {config_file}: {exc}") from None
    run = ConformanceRun(config, settings)
    if run.driver_class() is None:
        raise pytest.UsageError(f"--virtkit-config {config_file}: {run.load_error}")
    config.pluginmanager.register(run, "virtkit-conformance-run")
    config.pluginmanager.import_plugin("virt.conformance.fixtures")
    config.pluginmanager.import_plugin("virt.conformance.effects")
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        # `pytest --virtkit-config FILE` alone means the suite, not the current directory
        # or the project's testpaths (`--pyargs virt.conformance` names it explicitly).
        config.args = [str(SUITE_DIR)]


def _in_suite(item: pytest.Item) -> bool:
    return Path(str(item.path)).is_relative_to(SUITE_DIR)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--virtkit-config", default=None):
        return
    skip = pytest.mark.skip(reason="the virtkit conformance suite needs --virtkit-config FILE")
    for item in items:
        if _in_suite(item):
            item.add_marker(skip)


class ConformanceRun:
    """The active suite run: capability gating, outcome recording, matrix output."""

    def __init__(self, config: pytest.Config, settings: SuiteSettings) -> None:
        self.config = config
        self.settings = settings
        self.records: dict[str, TestRecord] = {}
        self.leftovers: list[str] = []  # what the guests fixture found left after the run
        self._driver_class: Any = None
        self.load_error: str | None = None
        self._driver: ComputeDriver | None = None
        self._driver_error: Exception | None = None
        self._released = False

    # -- the driver under test --------------------------------------------------------------

    def driver_class(self) -> Any:
        """The driver class named by the config (None if it cannot be loaded)."""
        if self._driver_class is None and self.load_error is None:
            from virt.driver import load_driver_class
            from virt.errors import VirtError

            try:
                self._driver_class = load_driver_class(self.settings.conf.compute_driver)
            except VirtError as exc:
                self.load_error = str(exc)
        return self._driver_class

    def driver(self) -> ComputeDriver:
        """The driver under test, made and `init_host`'ed once, when first needed (the
        gating of the first capability test, or the `raw_driver` fixture); a failure to make
        it is raised again to every later caller."""
        if self._driver is not None:
            return self._driver
        if self._driver_error is not None:
            raise self._driver_error
        from virt.conformance.bounded import BoundedDriver
        from virt.driver import load_driver

        conf, opts = self.settings.conf, self.settings.opts
        try:
            driver = load_driver(conf.compute_driver, conf)
            BoundedDriver(driver, opts.operation_timeout).init_host(host=conf.host)
        except Exception as exc:
            self._driver_error = exc
            raise
        self._driver = driver
        return driver

    def release_driver(self) -> None:
        """`cleanup_host` of the driver under test, once, if it was made."""
        if self._driver is None or self._released:
            return
        self._released = True
        from virt.conformance.bounded import BoundedDriver
        from virt.errors import VirtError

        try:
            BoundedDriver(self._driver, self.settings.opts.operation_timeout).cleanup_host(
                host=self.settings.conf.host)
        except (VirtError, AssertionError) as exc:
            LOG.warning("conformance cleanup: cleanup_host failed: %s", exc)

    def capabilities(self) -> frozenset[Capability]:
        """What the suite holds the driver to: its instance's capabilities on this
        connection once initialised, else (not made yet, or it failed) the class's."""
        if self._driver is not None:
            return self._driver.connection_capabilities
        cls = self.driver_class()
        return cls.capabilities if cls is not None else frozenset()

    def entry_point(self) -> str:
        from virt.driver import resolve_configured_name

        return resolve_configured_name(self.settings.conf.compute_driver)

    # -- hooks ------------------------------------------------------------------------------

    def pytest_report_header(self) -> list[str]:
        cls = self.driver_class()
        caps = ", ".join(sorted(c.value for c in cls.capabilities)) if cls else self.load_error
        return [
            f"virtkit conformance: {self.settings.config_file} -> driver "
            f"{self.settings.conf.compute_driver!r}",
            f"virtkit conformance: declared capabilities: {caps or 'none'}",
        ]

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._driver is None:
            return
        held = self._driver.connection_capabilities
        lacking = type(self._driver).capabilities - held
        line = ", ".join(sorted(c.value for c in held)) or "none"
        if lacking:
            line += f" (narrowed by init_host: not {', '.join(sorted(c.value for c in lacking))})"
        terminalreporter.write_line(f"virtkit conformance: capabilities on this connection: "
                                    f"{line}")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Skip a capability test of an undeclared (or excluded) capability, before fixtures."""
        if not _in_suite(item):
            return
        marker = item.get_closest_marker("virtkit_capability")
        cls = self.driver_class()
        if marker is None or cls is None:
            return
        capability = marker.args[0]
        declared = capability in self.driver().connection_capabilities
        kind = _kind(item)
        from virt.conformance.matrix import REFUSAL

        if kind == REFUSAL:
            if declared:
                pytest.skip(f"driver '{cls.name}' declares capability '{capability.value}'; "
                            "the operation is exercised by its capability test")
            return
        if not declared:
            where = (" on this connection (its init_host narrowed it)"
                     if capability in cls.capabilities else "")
            pytest.skip(f"driver '{cls.name}' does not declare capability "
                        f"'{capability.value}'{where}")
        if capability.value in self.settings.opts.exclude_capabilities:
            pytest.skip(f"capability '{capability.value}' excluded by [conformance] "
                        "exclude_capabilities")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
        report = yield
        if _in_suite(item):
            self._record(item, report)
            if report.failed and call.excinfo is not None:
                self._explain_refusal(item, call.excinfo.value, report)
        return report

    def _explain_refusal(self, item: pytest.Item, exc: BaseException, report: Any) -> None:
        """Name the broken promise when a declared capability's operation refuses."""
        from virt.errors import UnsupportedOperation

        marker = item.get_closest_marker("virtkit_capability")
        if marker is None or _kind(item) != "exercise":
            return
        if not isinstance(exc, UnsupportedOperation | NotImplementedError):
            return
        why = (f"driver declares capability '{marker.args[0].value}' but raised "
               f"{type(exc).__name__}: {exc}")
        self.records[item.nodeid].reason = why
        report.sections.append(("virtkit conformance", why))

    def _record(self, item: pytest.Item, report: pytest.TestReport) -> None:
        from virt.conformance.effects import unobserved
        from virt.conformance.matrix import TestRecord

        marker = item.get_closest_marker("virtkit_operations")
        record = self.records.get(item.nodeid)
        if record is None:
            ops = tuple(marker.args) if marker else ()
            record = self.records[item.nodeid] = TestRecord(
                item.nodeid, ops, _kind(item), declared=self._declared(item))
        record.unobserved = unobserved(item)
        if report.failed:
            record.outcome = "failed"
            record.reason = _reason(report)
        elif report.skipped and record.outcome != "failed":
            record.outcome = "skipped"
            record.reason = _reason(report)

    def _declared(self, item: pytest.Item) -> bool:
        """Whether the driver declares the capability the test needs (True if it needs none)."""
        marker = item.get_closest_marker("virtkit_capability")
        return marker is None or marker.args[0] in self.capabilities()

    def _verdict(self, session: pytest.Session) -> None:
        """Fail the run for what no single test failed: a declared capability whose test
        was skipped (exit 0 means all that is declared was exercised and passed), and
        instances left behind."""
        from virt.conformance.matrix import EXERCISE, TestRecord

        unexercised = sorted(r.nodeid.rsplit("::", 1)[-1] for r in self.records.values()
                             if r.outcome == "skipped" and r.declared and r.kind == EXERCISE)
        problems = []
        if unexercised:
            problems.append("declared but not exercised (skipped): " + ", ".join(unexercised))
        if self.leftovers:
            problems.append("left behind: " + "; ".join(self.leftovers))
            self.records["virtkit::nothing_left_behind"] = TestRecord(
                "virtkit::nothing_left_behind", (), "check", "failed",
                reason="; ".join(self.leftovers))
        if not problems:
            return
        if session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        for problem in problems:
            if reporter is not None:
                reporter.write_line(f"virtkit conformance: FAILED: {problem}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.release_driver()  # the raw_driver fixture's teardown did, unless it never ran
        self._verdict(session)
        path = self.config.getoption("--virtkit-matrix", default=None)
        if not path or not self.records:
            return
        from virt.conformance.matrix import build_column, merge_column

        cls = self.driver_class()
        entry_point = self.entry_point()
        column = build_column(
            entry_point=entry_point,
            driver_class=f"{cls.__module__}.{cls.__qualname__}" if cls else "not loadable",
            capabilities=[c.value for c in self.capabilities()],
            records=list(self.records.values()),
        )
        label = self.settings.opts.label or entry_point
        written = merge_column(path, label, column)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"virtkit conformance: matrix column '{label}' -> {written}")


def _kind(item: pytest.Item) -> str:
    marker = item.get_closest_marker("virtkit_kind")
    return str(marker.args[0]) if marker else "exercise"


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message)
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""
