"""Resync after the event stream was cut: states missed meanwhile read as get_info reads them.

A unix-socket proxy in front of the real dockerd is cut while containers die (an OOM kill,
a `docker kill`, a forced power_off), so the watcher misses their events and learns of them
from its resync after reconnecting.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid

import pytest
from dockertb import docker_cli, make_driver

from virt.conformance.fixtures import wait_for
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance, PowerState

pytestmark = pytest.mark.docker

DOCKER_SOCK = "/var/run/docker.sock"


class CuttableProxy:
    """Forwards a unix socket to dockerd's; `cut()` drops every connection and refuses new
    ones until `resume()`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def resume(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(self.path)
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(DOCKER_SOCK)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        assert self._listener is not None
        self._listener.close()
        os.unlink(self.path)
        for s in self._conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
        self._conns = []


def test_resync_reads_oom_kills_and_foreign_sigkills_as_crashed(docker_image, tmp_path_factory,
                                                                 tmp_path):
    proxy = CuttableProxy(str(tmp_path / "docker.sock"))
    proxy.resume()
    host = f"dk-resync-{uuid.uuid4().hex[:8]}"
    driver = make_driver(tmp_path_factory, host, base_url=f"unix://{proxy.path}",
                         event_window=1.0, call_timeout=3.0, stopped_event_delay=1.0)
    direct = make_driver(tmp_path_factory, host, state=driver.conf.state_path)
    events = []
    driver.register_event_listener(events.append)

    def make(command: str, memory_mb: int = 64) -> Instance:
        image = ImageRef(docker_image, properties={"os_command_line": command})
        instance = Instance(uuid=str(uuid.uuid4()), name=f"vk-dk-rsy-{uuid.uuid4().hex[:8]}",
                            flavor=Flavor("dk", 1, memory_mb, 0), image=image)
        driver.spawn(instance=instance)
        return instance

    made: list[Instance] = []
    try:
        assert driver.event_watcher.synced.wait(15)
        made += [
            make("sh -c 'sleep 4; head -c 300000000 /dev/zero | tail'", memory_mb=16),  # OOM
            make("sleep 3600"),  # docker kill
            make("sh -c 'trap \"\" TERM; while :; do sleep 1; done'"),  # forced power_off
            make("sleep 3600"),  # clean power_off
        ]
        hog, killed, stubborn, polite = made
        assert wait_for(lambda: {e.instance_uuid for e in events} >= {i.uuid for i in made}, 20)
        resyncs = driver.event_watcher.resyncs
        proxy.cut()
        mark = len(events)
        # Meanwhile, through another connection: the watcher misses all of it.
        docker_cli("kill", killed.name)
        assert direct.power_off(instance=stubborn, timeout=1, retry_interval=0.5).forced
        assert not direct.power_off(instance=polite, timeout=10).forced
        assert wait_for(lambda: direct.get_info(instance=hog).state is PowerState.CRASHED, 20)
        assert docker_cli("inspect", "-f", "{{.State.OOMKilled}}", hog.name) == "true"
        proxy.resume()
        assert wait_for(lambda: driver.event_watcher.resyncs > resyncs, 30)
        expected = {hog.uuid: Transition.CRASHED, killed.uuid: Transition.CRASHED,
                    stubborn.uuid: Transition.STOPPED, polite.uuid: Transition.STOPPED}

        def resynced() -> dict:  # delivered by the dispatcher's thread, STOPPED held 1 s
            return {e.instance_uuid: e.transition for e in events[mark:]}

        assert wait_for(lambda: resynced() == expected, 10), events[mark:]
        for instance in made:  # one mapping: get_info agrees with the resync
            want = (PowerState.CRASHED if expected[instance.uuid] is Transition.CRASHED
                    else PowerState.SHUTDOWN)
            assert driver.get_info(instance=instance).state is want
    finally:
        for instance in made:
            docker_cli("rm", "-f", instance.name, check=False)
        driver.cleanup_host(host=host)
        direct.cleanup_host(host=host)
        proxy.cut()
