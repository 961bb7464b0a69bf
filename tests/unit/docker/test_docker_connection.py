"""Connection failures and version checks, against a socket where no dockerd listens."""

from __future__ import annotations

import pytest

from virt.config import build_conf
from virt.driver import load_driver, load_driver_class
from virt.errors import ConfigError, HypervisorUnavailable
from virt.model import Flavor, Instance, PowerState

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
    assert driver.get_info(instance=INSTANCE).state is PowerState.UNKNOWN


@pytest.mark.parametrize("version, text", [("1.12", "older than 1.30"), ("x.y", "not a version")])
def test_bad_api_version_is_a_config_error(tmp_path, version, text):
    driver = driver_at(tmp_path, base_url=f"unix://{tmp_path}/absent.sock", api_version=version)
    with pytest.raises(ConfigError, match=text):
        driver.init_host(host="unit")
