"""The `[conformance]` options: what a driver supplies so the suite can exercise it.

They live in the same config file as the driver's own options, so a third-party driver
needs nothing from virtkit but its entry point and a config file.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oslo_config import cfg

from virt.config import DEFAULT_STATE_PATH, build_conf, parse_flavor, register_group_opts
from virt.errors import ConfigError, InvalidRequest
from virt.model import Flavor, ImageRef, VolumeConnection

GROUP = "conformance"

CONFORMANCE_OPTS: list[cfg.Opt] = [
    cfg.StrOpt("label", help="Column name of this run in the support matrix (default: the "
               "driver's entry-point name). Use it to tell apart runs of one driver on two "
               "engines."),
    cfg.StrOpt("image_ref", default="virtkit-conformance-image",
               help="A bootable image: a file path (libvirt), an image name (docker), an "
               "image uuid (others)."),
    cfg.StrOpt("image_disk_format", help="disk_format of image_ref (qcow2, raw, docker ...)."),
    cfg.StrOpt("image_kernel", help="Kernel for direct kernel boot, if the image needs one."),
    cfg.StrOpt("image_ramdisk", help="Initramfs for direct kernel boot."),
    cfg.StrOpt("image_cmdline", help="Kernel command line for direct kernel boot."),
    cfg.StrOpt("rescue_image_ref",
               help="The image a rescue boots (same format as image_ref; default: image_ref). "
               "A different one lets the observer tell the rescue boot from the original."),
    cfg.ListOpt("late_failure_image_properties", default=[],
                help="KEY=VALUE image properties with which a spawn gets past making the "
                "instance's disk and fails when the guest boots: the suite checks that such "
                "a spawn raises and leaves nothing behind. Unset: that check is skipped."),
    cfg.StrOpt("missing_image_ref", default="/nonexistent/virtkit-conformance-missing.qcow2",
               help="An image reference that does not exist on the engine: spawning it must "
               "fail and leave nothing behind."),
    cfg.StrOpt("flavor", default="conformance:1:128:1",
               help="Flavor of the suite's instances: NAME:VCPUS:MEMORY_MB:ROOT_GB."),
    cfg.StrOpt("volume_connection_info",
               help="A Nova connection_info (JSON text, or @FILE) of a volume the suite may "
               "attach and detach. Unset: the volume tests are skipped as untested."),
    cfg.StrOpt("chap_volume_connection_info", secret=True,
               help="A connection_info (JSON text or @FILE) of an iSCSI volume with CHAP "
               "credentials, for the volume_iscsi_chap capability."),
    cfg.StrOpt("gluster_volume_connection_info",
               help="A connection_info (JSON text or @FILE) of a GlusterFS volume "
               "(driver_volume_type glusterfs) the suite may attach and detach, as a second "
               "volume kind next to volume_connection_info. Unset: that test is skipped."),
    cfg.StrOpt("volume_mountpoint", default="/dev/vdb",
               help="Where the suite attaches the volume."),
    cfg.StrOpt("console_marker",
               help="Text the guest prints on its console once booted; the suite waits for "
               "it (up to boot_timeout) before the console test."),
    cfg.FloatOpt("boot_timeout", default=120, min=1,
                 help="Seconds to wait for console_marker after a spawn."),
    cfg.FloatOpt("power_off_timeout", default=30, min=0,
                 help="The timeout the suite passes to power_off (clean shutdown budget)."),
    cfg.FloatOpt("reboot_timeout", default=60, min=0,
                 help="The timeout the suite passes to a soft reboot (after it, the driver "
                 "resets the guest). Lower it for guests that ignore ACPI reboot requests."),
    cfg.FloatOpt("event_timeout", default=30, min=0.1,
                 help="Seconds to wait for asynchronous lifecycle events to arrive."),
    cfg.FloatOpt("operation_timeout", default=300, min=1,
                 help="Upper bound for any single driver call; a call that takes longer "
                 "fails its test instead of hanging the suite."),
    cfg.ListOpt("unreachable_overrides", default=[],
                help="GROUP.OPTION=VALUE settings that point the driver at an engine that "
                "cannot be reached (e.g. libvirt.connection_uri=qemu+tcp://192.0.2.1/system); "
                "the suite then checks that it raises HypervisorUnavailable rather than "
                "reporting no instances. Unset: that contract is untested."),
    cfg.StrOpt("observer",
               help="The observer that checks the driver's effects on the engine without "
               "going through the driver: an entry-point name in the group "
               "virtkit.conformance_observers, or module:Class. Default: the one registered "
               "under the driver's entry-point name; without one, effects are reported as "
               "not observed."),
    cfg.StrOpt("instance_prefix", default="vkconf-",
               help="Prefix of the names of every instance the suite creates."),
    cfg.ListOpt("exclude_capabilities", default=[],
                help="Declared capabilities NOT to exercise on this engine (reported as "
                "untested, never as supported). Configuration can only narrow what the "
                "driver declares."),
]


@dataclass(frozen=True)
class SuiteSettings:
    """Everything the suite needs, read from one config file."""

    conf: cfg.ConfigOpts
    config_file: Path

    @property
    def opts(self) -> Any:
        return self.conf.conformance

    def image(self) -> ImageRef:
        o = self.opts
        return ImageRef(ref=o.image_ref, disk_format=o.image_disk_format, kernel=o.image_kernel,
                        ramdisk=o.image_ramdisk, kernel_cmdline=o.image_cmdline)

    def rescue_image(self) -> ImageRef:
        return dataclasses.replace(self.image(), ref=self.opts.rescue_image_ref or
                                   self.opts.image_ref)

    def late_failure_image(self) -> ImageRef | None:
        """The run's image with `late_failure_image_properties`, or None if unset."""
        pairs = [p.partition("=") for p in self.opts.late_failure_image_properties]
        if not pairs:
            return None
        image = self.image()
        return dataclasses.replace(image, properties={**image.properties,
                                                      **{k.strip(): v.strip() for k, _, v in pairs}})

    def missing_image(self) -> ImageRef:
        base = self.image()
        return ImageRef(ref=self.opts.missing_image_ref, disk_format=base.disk_format)

    def flavor(self) -> Flavor:
        return parse_flavor(self.opts.flavor)

    def volume(self) -> VolumeConnection | None:
        return _connection(self.opts.volume_connection_info, "volume_connection_info")

    def chap_volume(self) -> VolumeConnection | None:
        return _connection(self.opts.chap_volume_connection_info, "chap_volume_connection_info")

    def gluster_volume(self) -> VolumeConnection | None:
        """The GlusterFS volume of `gluster_volume_connection_info` (None if unset)."""
        option = "gluster_volume_connection_info"
        connection = _connection(self.opts.gluster_volume_connection_info, option)
        if connection is not None and connection.driver_volume_type != "glusterfs":
            raise ConfigError(f"[conformance] {option}: driver_volume_type must be "
                              f"'glusterfs', not {connection.driver_volume_type!r}")
        if connection is not None:
            from virt.volume import parse_glusterfs_volume

            try:
                parse_glusterfs_volume(connection)
            except InvalidRequest as exc:
                raise ConfigError(f"[conformance] {option}: {exc.message}") from None
        return connection


def unreachable_conf(settings: SuiteSettings) -> cfg.ConfigOpts | None:
    """A copy of the run's config with `unreachable_overrides` applied (None if unset)."""
    pairs = settings.opts.unreachable_overrides
    if not pairs:
        return None
    from virt.driver import load_driver_class

    conf = load_settings(settings.config_file).conf
    load_driver_class(conf.compute_driver).register_opts(conf)
    conf.set_override("state_path", settings.conf.state_path)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        group, _, name = key.strip().rpartition(".")
        if not sep or not name:
            raise ConfigError(f"[conformance] unreachable_overrides: {pair!r} is not "
                              "GROUP.OPTION=VALUE")
        try:
            conf.set_override(name, value.strip(), group=None if group in ("", "DEFAULT")
                              else group)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, ValueError) as exc:
            raise ConfigError(f"[conformance] unreachable_overrides: {pair!r}: {exc}") from None
    return conf


def _connection(value: str | None, option: str) -> VolumeConnection | None:
    if not value:
        return None
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"[conformance] {option}: cannot read {value[1:]}: "
                              f"{exc.strerror}") from None
    try:
        return VolumeConnection.from_connection_info(text)
    except InvalidRequest as exc:
        raise ConfigError(f"[conformance] {option}: {exc.message}") from None


def load_settings(config_file: str | Path) -> SuiteSettings:
    """Read the driver's config file and register the suite's options on it.

    If the file does not set `state_path`, the run gets a private temporary one, so the
    suite never touches an operator's real state.
    """
    path = Path(config_file)
    conf = build_conf(path)
    register_group_opts(conf, GROUP, CONFORMANCE_OPTS)  # refuses unknown [conformance] keys
    if conf.state_path == DEFAULT_STATE_PATH:
        conf.set_override("state_path", tempfile.mkdtemp(prefix="virtkit-conformance-"))
    settings = SuiteSettings(conf, path)
    try:
        settings.flavor()
        settings.image()
        settings.volume()
        settings.chap_volume()
        settings.gluster_volume()
    except InvalidRequest as exc:
        raise ConfigError(f"{path}: [conformance] {exc.message}") from None
    return settings
