"""The [libvirt] options shared by name with other drivers, and how libvirt's errors read."""

from __future__ import annotations

import errno

import libvirt
import pytest

from drivers.libvirt import connection, resources
from drivers.libvirt.driver import ERRORS, LibvirtDriver
from tests.libvirt_helpers import qemu_workdir
from virt.config import build_conf
from virt.errors import AccessDenied, ConfigError, HypervisorUnavailable, InvalidState


def test_an_old_config_with_connect_timeout_keeps_working_and_warns_once(tmp_path, caplog):
    path = tmp_path / "virtkit.conf"
    path.write_text("[DEFAULT]\ncompute_driver = libvirt\n"
                    "[libvirt]\nconnection_uri = test:///default\nconnect_timeout = 7\n")
    conf = build_conf(path)
    LibvirtDriver.register_opts(conf)
    caplog.set_level("WARNING")
    assert conf.libvirt.call_timeout == 7
    assert conf.libvirt.call_timeout == 7
    warnings = [r.getMessage() for r in caplog.records if "connect_timeout" in r.getMessage()]
    assert len(warnings) == 1 and "call_timeout" in warnings[0], warnings
    # the defaults that keep today's behaviour
    assert conf.libvirt.reboot_timeout == 60 and conf.libvirt.stopped_event_delay == 15


def _error(code: int, domain: int, message: str, int1: int = -1) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, int1, 0)
    return exc


PERMISSION = _error(
    libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_STORAGE,
    "Cannot access storage file '/root/x/disk' (as uid:0, gid:0): Permission denied",
    errno.EACCES)


def test_a_permission_error_is_access_denied_and_never_a_lost_connection():
    # The error libvirt 9 gives when QEMU's user cannot read a disk (VIR_FROM_STORAGE).
    assert not connection.is_connection_error(PERMISSION, None)
    error = ERRORS.error(PERMISSION, "start it", instance="u")
    assert isinstance(error, AccessDenied) and not isinstance(error, HypervisorUnavailable)
    assert "/root/x/disk" in error.message
    assert "root (uid 0)" in error.hint and "[libvirt] images_path" in error.hint
    assert "/var/lib/virtkit" in error.hint


@pytest.mark.parametrize("code, domain, message", [
    (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "Cannot recv data: Connection reset"),
    (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_FROM_RPC, "client socket is closed"),
    (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_FROM_NONE, "no connection driver available"),
])
def test_connection_errors_are_unavailable(code, domain, message):
    exc = _error(code, domain, message)
    assert connection.is_connection_error(exc, None)
    error = ERRORS.error(exc, "list domains")
    assert isinstance(error, HypervisorUnavailable)
    assert "systemctl start libvirtd" in error.hint and "scripts/" not in error.hint


def test_operation_invalid_is_invalid_state():
    exc = _error(libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_FROM_DOMAIN, "not running")
    assert isinstance(ERRORS.error(exc, "pause it", instance="u"), InvalidState)


def test_traversal_check_names_the_directory_the_user_and_the_fix():
    with qemu_workdir("vk-traverse-") as work:
        _check_traversal(work / "private")


def _check_traversal(private):
    (private / "images").mkdir(parents=True)
    private.chmod(0o700)
    user = resources.pwd.getpwnam("nobody")
    with pytest.raises(ConfigError) as caught:
        resources.check_traversable({"[libvirt] images_path": str(private / "images")}, user)
    text = caught.value.message + " " + (caught.value.hint or "")
    assert f"cannot traverse {private}" in text and "nobody (uid" in text
    assert "[libvirt] images_path" in text and "/var/lib/virtkit" in text
    private.chmod(0o711)
    resources.check_traversable({"[libvirt] images_path": str(private / "images")}, user)
