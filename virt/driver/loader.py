"""Finding and loading compute drivers: the one stevedore DriverManager path.

Drivers are entry points in the `virtkit.compute_drivers` namespace. Everything that needs
to know which drivers exist (config checks, `virtkit drivers`, the conformance suite) asks
`installed_drivers()` here rather than reading entry points itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virt.errors import DriverLoadError

if TYPE_CHECKING:
    from oslo_config import cfg

    from virt.driver.base import ComputeDriver

NAMESPACE = "virtkit.compute_drivers"

# Extras to install per driver of ours, for the "missing dependency" hint.
_EXTRAS = {"libvirt": "libvirt", "docker": "docker", "xen": "xen", "smartos": "smartos"}


@dataclass(frozen=True)
class DriverInfo:
    """One registered driver, as `virtkit drivers` shows it."""

    name: str
    loaded: bool
    error: str | None
    capabilities: tuple[str, ...]
    target: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "loaded": self.loaded,
            "error": self.error,
            "capabilities": list(self.capabilities),
        }


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=NAMESPACE)}


def installed_drivers() -> list[str]:
    """Entry-point names of every installed driver, sorted."""
    return sorted(_entry_points())


def resolve_configured_name(name: str) -> str:
    """The entry-point name `name` (as written in config) resolves to, or `name` itself."""
    return resolve_driver_name(name, installed_drivers())


def resolve_driver_name(
    name: str, installed: Sequence[str], classes: Mapping[str, str] | None = None
) -> str:
    """Map a driver name as written in config to its entry-point name.

    Accepted: the entry-point name (any case), and the Nova-style names of its class,
    `<ep>.<Class>`, `<ep>.driver.<Class>`, `nova.virt.<ep>.<Class>` and
    `nova.virt.<ep>.driver.<Class>`, where `<Class>` must be the name of the class the
    entry point names (`libvirt.LibvirtDriver`, never `libvirt.XenDriver`). Anything else
    is returned unchanged, for the unknown-driver error. `classes` maps entry-point names
    to their class names (read from the installed entry points when not given).
    """
    if name in installed:
        return name
    if name.lower() in installed:
        return name.lower()
    if classes is None:
        classes = {ep: _class_name(target) for ep, target in _entry_point_targets().items()}
    parts = name.split(".")
    if parts[:2] == ["nova", "virt"]:
        parts = parts[2:]
    if len(parts) == 3 and parts[1] == "driver":
        parts = [parts[0], parts[2]]
    if len(parts) == 2:
        entry_point, class_name = parts[0].lower(), parts[1]
        if entry_point in installed and class_name and classes.get(entry_point) == class_name:
            return entry_point
    return name


def _class_name(target: str) -> str:
    """'drivers.libvirt.driver:LibvirtDriver' -> 'LibvirtDriver'."""
    return target.partition(":")[2].rsplit(".", 1)[-1].strip()


def _entry_point_targets() -> dict[str, str]:
    return {name: ep.value for name, ep in _entry_points().items()}


def describe_import_error(name: str, exc: BaseException, target: str | None = None) -> str:
    """A one-line reason a driver failed to import, with the install hint.

    Only a ModuleNotFoundError for a module outside the driver's own package (the top-level
    package of `target`, the entry point's 'module:Class') is a missing dependency. An
    import error for a module inside that package, or any other exception while importing
    it, is a broken driver and is reported with its error.
    """
    module = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    own_package = (target or "").partition(":")[0].split(".")[0]
    inside = bool(module and own_package) and (
        module == own_package or str(module).startswith(own_package + ".")
    )
    extra = _EXTRAS.get(name)
    how = f"pip install 'virtkit[{extra}]'" if extra else "install the package that provides it"
    if isinstance(exc, ModuleNotFoundError) and module and not inside:
        return f"driver '{name}' needs the Python module '{module}', which is not installed: {how}"
    if isinstance(exc, ImportError) and module and not inside:
        return (f"driver '{name}' cannot import from its dependency '{module}' (wrong version?): "
                f"{type(exc).__name__}: {exc}")
    return f"driver '{name}' is broken: importing it failed: {type(exc).__name__}: {exc}"


def load_driver_class(name: str) -> type[ComputeDriver]:
    """Import a driver class by entry-point or Nova-style name, without instantiating it."""
    from stevedore import driver as sd_driver
    from stevedore.exception import NoMatches

    targets = _entry_point_targets()
    installed = sorted(targets)
    classes = {ep: _class_name(target) for ep, target in targets.items()}
    resolved = resolve_driver_name(name, installed, classes)
    failure: list[BaseException] = []

    def on_failure(_manager: Any, _ep: Any, exc: BaseException) -> None:
        failure.append(exc)

    try:
        manager = sd_driver.DriverManager(
            NAMESPACE,
            resolved,
            invoke_on_load=False,
            on_load_failure_callback=on_failure,
        )
    except NoMatches:
        if failure:
            raise DriverLoadError(
                describe_import_error(resolved, failure[0], targets.get(resolved))
            ) from failure[0]
        raise DriverLoadError(
            f"unknown compute driver '{name}'; installed drivers: {', '.join(installed) or 'none'}",
            hint="set [DEFAULT] compute_driver to one of them",
        ) from None
    from virt.driver.base import ComputeDriver

    driver_cls = manager.driver
    if not (isinstance(driver_cls, type) and issubclass(driver_cls, ComputeDriver)):
        raise DriverLoadError(
            f"entry point '{resolved}' of {NAMESPACE} is {driver_cls!r}, not a ComputeDriver"
        )
    return driver_cls


def load_driver(name: str, conf: cfg.ConfigOpts) -> ComputeDriver:
    """Load and instantiate the compute driver `name` with `conf`."""
    from virt.driver.base import ComputeDriver

    driver = load_driver_class(name)(conf)
    if not isinstance(driver, ComputeDriver):  # a factory may return anything
        raise DriverLoadError(f"driver '{name}' did not produce a ComputeDriver")
    return driver


def list_drivers() -> list[DriverInfo]:
    """Every registered driver, importing each to report whether it loads."""
    infos = []
    for name, ep in sorted(_entry_points().items()):
        try:
            driver_cls = load_driver_class(name)
        except DriverLoadError as exc:
            infos.append(DriverInfo(name, False, exc.message, (), ep.value))
            continue
        caps = tuple(sorted(c.value for c in driver_cls.capabilities))
        infos.append(DriverInfo(name, True, None, caps, ep.value))
    return infos
