"""Connection failures and version checks, against a socket where no dockerd listens."""

from __future__ import annotations

import pytest

from virt.config import build_conf
from virt.driver import load_driver, load_driver_class
from virt.errors import AccessDenied, ConfigError, HypervisorUnavailable, InvalidRequest
from virt.model import Flavor, Instance

INSTANCE = Instance(uuid="6f1c2d3e-0000-4000-8000-000000000001", name="vk-nodaemon",
                    flavor=Flavor("f", 1, 64, 0))


def driver_at(tmp_path, **opts):
    conf = build_conf(overrides={"state_path": str(tmp_path), "host": "unit"})
    load_driver_class("docker").register_opts(conf)
    for key, value in opts.items():
        conf.set_override(key, value, group="docker")
    return load_driver("docker", conf)


def test_no_daemon_is_hypervisor_unavailable_never_empty(tmp_path):
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/absent.sock", call_timeout=2.0)
    with pytest.raises(HypervisorUnavailable, match="absent.sock") as err:
        driver.init_host(host="unit")
    assert "start dockerd" in str(err.value)
    with pytest.raises(HypervisorUnavailable):
        driver.list_instances()
    with pytest.raises(HypervisorUnavailable):
        driver.destroy(instance=INSTANCE)
    with pytest.raises(HypervisorUnavailable):
        driver.get_info(instance=INSTANCE)  # never UNKNOWN for "could not ask"


@pytest.mark.parametrize("version, text", [("1.12", "older than 1.30"), ("x.y", "not a version")])
def test_bad_api_version_is_a_config_error(tmp_path, version, text):
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/absent.sock", api_version=version)
    with pytest.raises(ConfigError, match=text):
        driver.init_host(host="unit")


def test_permission_denied_on_the_socket_is_access_denied_not_a_lost_connection(
        tmp_path, monkeypatch):
    # As root the test bed cannot be refused by the socket's mode: make connect() fail with
    # EACCES as it does for a user outside the docker group (fault injection).
    import errno
    import socket

    import docker.transport.unixconn as unixconn

    class Refused(socket.socket):
        def connect(self, _address):
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(unixconn.socket, "socket", Refused)
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/docker.sock", call_timeout=2.0)
    with pytest.raises(AccessDenied) as err:
        driver.init_host(host="unit")
    assert not isinstance(err.value, HypervisorUnavailable)
    assert f"{tmp_path}/docker.sock" in err.value.message and "permission denied" in str(err.value)
    assert "docker group" in err.value.hint and "[docker] base_url" in err.value.hint
    with pytest.raises(AccessDenied):
        driver.list_instances()


def test_hints_name_what_an_operator_does_not_the_test_bed(tmp_path):
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/absent.sock", call_timeout=2.0)
    with pytest.raises(HypervisorUnavailable) as err:
        driver.list_instances()
    assert "systemctl start docker" in err.value.hint
    assert "testbed" not in str(err.value) and "scripts/" not in str(err.value)


def test_old_stop_timeout_keeps_working_and_warns_once_naming_reboot_timeout(tmp_path, caplog):
    path = tmp_path / "virtkit.conf"
    path.write_text(f"[DEFAULT]\ncompute_driver = docker\nstate_path = {tmp_path}\n"
                    "[docker]\nstop_timeout = 3\n")
    conf = build_conf(path)
    load_driver_class("docker").register_opts(conf)
    assert conf.docker.reboot_timeout == 3
    assert conf.docker.reboot_timeout == 3
    warnings = [r.getMessage() for r in caplog.records if "stop_timeout" in r.getMessage()]
    assert len(warnings) == 1 and "reboot_timeout" in warnings[0], warnings


def test_negative_timeouts_are_invalid_requests(tmp_path):
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/absent.sock", call_timeout=2.0)
    with pytest.raises(InvalidRequest, match="timeout"):
        driver.reboot(instance=INSTANCE, timeout=-1)
