"""Fault: dockerd stops and comes back; the driver and its event watcher recover.

This stops the test bed's dockerd for a few seconds (other engineers' containers stop
too), so it restarts it at once, on failure as well.
"""

from __future__ import annotations

import pathlib
import subprocess
import uuid

import pytest
from dockertb import dockerd_up, make_driver

from virt.conformance.fixtures import wait_for
from virt.errors import HypervisorUnavailable
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance, PowerState

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TESTBED = pathlib.Path(__file__).resolve().parents[3] / "scripts" / "testbed"


def run_testbed(action: str) -> None:
    # A session of its own: a dockerd started here must outlive this test process.
    subprocess.run(
        [str(TESTBED), action, "docker"], check=True, timeout=120, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_dockerd_restart(docker_image, tmp_path_factory):
    host = f"dk-restart-{uuid.uuid4().hex[:8]}"
    driver = make_driver(tmp_path_factory, host, event_window=1.0, call_timeout=5.0,
                         stopped_event_delay=1.0)
    events = []
    driver.register_event_listener(events.append)
    image = ImageRef(docker_image, properties={"os_command_line": "sleep 3600"})
    instance = Instance(
        uuid=str(uuid.uuid4()), name=f"vk-dk-rs-{uuid.uuid4().hex[:8]}",
        flavor=Flavor("dk.small", 1, 64, 0), image=image,
    )

    def seen(transition, after=0):
        return any(
            e.instance_uuid == instance.uuid and e.transition is transition for e in events[after:]
        )

    try:
        assert driver.event_watcher.synced.wait(15)
        driver.spawn(instance=instance)
        assert wait_for(lambda: seen(Transition.STARTED), 10), events
        resyncs = driver.event_watcher.resyncs
        mark = len(events)
        try:
            run_testbed("down")
            assert not dockerd_up()
            # Unreachable is an error, never "gone", "shut down" or UNKNOWN.
            with pytest.raises(HypervisorUnavailable):
                driver.get_info(instance=instance)
            with pytest.raises(HypervisorUnavailable):
                driver.list_instances()
            with pytest.raises(HypervisorUnavailable):
                driver.power_on(instance=instance)
        finally:
            run_testbed("up")
        # The watcher reconnects and resyncs; the container died with the daemon.
        assert wait_for(lambda: driver.event_watcher.resyncs > resyncs, 30)
        assert wait_for(lambda: seen(Transition.STOPPED, mark), 10), events[mark:]
        assert driver.get_info(instance=instance).state is PowerState.SHUTDOWN
        # The same driver object works again, and the event stream is live again.
        mark = len(events)
        driver.power_on(instance=instance)
        assert driver.get_info(instance=instance).state is PowerState.RUNNING
        assert wait_for(lambda: seen(Transition.STARTED, mark), 10), events[mark:]
    finally:
        if not dockerd_up():
            run_testbed("up")
        driver.destroy(instance=instance)
        driver.cleanup_host(host=host)
