"""Driver paths against a stand-in dockerd: what the driver sends, and daemons that hang."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from fakedockerd import HANG, FakeDockerd

from drivers.docker import guest, images, spec
from drivers.docker.connection import Engine
from virt.config import build_conf
from virt.driver import load_driver, load_driver_class
from virt.errors import (
    AccessDenied,
    ImageError,
    ImageNotFound,
    InvalidRequest,
    InvalidState,
    VirtError,
)
from virt.model import Flavor, Instance

HOST = "unit"
INSTANCE = Instance(uuid="6f1c2d3e-0000-4000-8000-0000000000aa", name="vk-fake",
                    flavor=Flavor("f", 1, 64, 0))
SECRET = "Very-secret-pw-1"


def driver_at(url, tmp_path, **opts):
    conf = build_conf(overrides={"state_path": str(tmp_path), "host": HOST})
    load_driver_class("docker").register_opts(conf)
    for key, value in {"base_url": url, "api_version": "1.41", **opts}.items():
        conf.set_override(key, value, group="docker")
    return load_driver("docker", conf)


def inspect_answer(_query, _body):
    return 200, {
        "Id": "c0ffee" * 10 + "abcd",
        "Name": f"/{INSTANCE.name}",
        "Config": {"Labels": {**spec.labels(INSTANCE, HOST), "virtkit.testimage": "2",
                              "org.example": "kept"}},
        "State": {"Status": "running", "Running": True, "StartedAt": "2024-01-01T00:00:00Z"},
    }


CONTAINER = ("GET", r"/containers/[^/]+/json")


# -- snapshot ------------------------------------------------------------------------------


def test_snapshot_blanks_every_ownership_label(daemon_socket, tmp_path):
    routes = {CONTAINER: inspect_answer,
              ("POST", "/commit"): lambda _q, _b: (201, {"Id": "sha256:" + "1" * 64})}
    with FakeDockerd(daemon_socket, routes) as daemon:
        image = driver_at(daemon.url, tmp_path).snapshot(instance=INSTANCE, name="snaps/a:v1")
        [(query, body)] = daemon.calls("POST", "/commit")
    assert image.ref == "snaps/a:v1" and image.properties["image_id"] == "sha256:" + "1" * 64
    assert query["repo"] == ["snaps/a"] and query["tag"] == ["v1"] and query["pause"] == ["True"]
    labels = body["Labels"]
    # docker commit merges these over the container's labels: none may still say "ours".
    assert labels[spec.LABEL_MANAGED] == "0"
    assert labels[spec.LABEL_SNAPSHOT_OF] == INSTANCE.uuid
    assert set(spec.INSTANCE_LABELS) == set(spec.labels(INSTANCE, HOST))  # a new one too
    blanked = set(spec.labels(INSTANCE, HOST)) - {spec.LABEL_MANAGED}
    assert {key: labels[key] for key in blanked} == dict.fromkeys(blanked, "")
    assert "org.example" not in labels and "virtkit.testimage" not in labels  # kept as is


def test_snapshot_past_its_timeout_says_the_image_may_still_appear(daemon_socket, tmp_path):
    routes = {CONTAINER: inspect_answer, ("POST", "/commit"): lambda _q, _b: HANG}
    with FakeDockerd(daemon_socket, routes) as daemon:
        driver = driver_at(daemon.url, tmp_path, call_timeout=5.0, snapshot_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(VirtError, match="did not finish within 1s") as err:
            driver.snapshot(instance=INSTANCE, name="snaps/slow:v1")
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 4  # its own bound, not the 5 s call timeout
    text = str(err.value)
    assert "'snaps/slow:v1'" in text and "may still create" in text
    assert f"label={spec.LABEL_SNAPSHOT_OF}={INSTANCE.uuid}" in text


def test_snapshot_timeout_outlasts_the_call_timeout_by_default(daemon_socket, tmp_path):
    def slow_commit(_query, _body):
        time.sleep(1.5)
        return 201, {"Id": "sha256:" + "2" * 64}

    routes = {CONTAINER: inspect_answer, ("POST", "/commit"): slow_commit}
    with FakeDockerd(daemon_socket, routes) as daemon:
        driver = driver_at(daemon.url, tmp_path, call_timeout=1.0)
        assert driver.snapshot(instance=INSTANCE, name="snaps/big:v1").ref == "snaps/big:v1"


# -- images --------------------------------------------------------------------------------


@pytest.mark.parametrize("ref, is_id", [
    ("sha256:" + "ab" * 32, True), ("sha256:abcdef", True), ("ab" * 32, True),
    ("0123456789ab", True), ("busybox", False), ("busybox:1.36", False),
    ("reg:5000/a/b@sha256:" + "ab" * 32, False), ("0123456789", False), ("AB" * 32, False),
])
def test_image_ids(ref, is_id):
    assert images.is_image_id(ref) is is_id


def _missing(_query, _body):
    return 404, {"message": "No such image"}


@pytest.mark.parametrize("ref", ["sha256:" + "ab" * 32, "0123456789ab"])
def test_missing_image_id_is_not_found_without_a_pull(daemon_socket, ref):
    routes = {("GET", r"/images/.+/json"): _missing,
              ("POST", "/images/create"): lambda _q, _b: (200, {})}
    with FakeDockerd(daemon_socket, routes) as daemon:
        engine = Engine(daemon.url, "1.41", timeout=2)
        with pytest.raises(ImageNotFound, match="an image id cannot be pulled"):
            images.ensure_image(engine, ref, pull=True, pull_timeout=5)
        engine.close()
        assert daemon.calls("POST", "/images/create") == []


@pytest.mark.parametrize("cause", [
    'Get "https://reg.example:5000/v2/": dial tcp 10.9.9.9:5000: i/o timeout',
    'Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
    'Get "https://reg.example/v2/": dial tcp: connect: network is unreachable',
    'Get "https://reg.example/v2/": dial tcp: lookup reg.example: no such host',
])
def test_unreachable_registry_for_an_absent_image_is_not_found(daemon_socket, cause):
    routes = {("GET", r"/images/.+/json"): _missing,
              ("POST", "/images/create"): lambda _q, _b: (500, {"message": cause})}
    with FakeDockerd(daemon_socket, routes) as daemon:
        engine = Engine(daemon.url, "1.41", timeout=2)
        with pytest.raises(ImageNotFound) as err:
            images.ensure_image(engine, "reg.example/app:1", pull=True, pull_timeout=5)
        engine.close()
    assert "is not on this host, and its registry could not be reached" in str(err.value)
    assert cause in str(err.value)


def test_transport_error_inside_a_pull_under_way_stays_image_error():
    stream = [{"status": "Pulling fs layer", "id": "1"},
              {"error": "read tcp 10.0.0.2:40000->10.9.9.9:443: i/o timeout"}]
    with pytest.raises(ImageError, match="i/o timeout") as err:
        images.drain_pull_stream("reg.example/app:1", iter(stream),
                                 deadline=time.monotonic() + 10, progress=None)
    assert not isinstance(err.value, ImageNotFound)
    assert isinstance(images.pull_error("a", "unauthorized: bad token", refused=True), ImageError)


# -- an exec that hangs ----------------------------------------------------------------------


class ExecApi:
    """What set_admin_password calls; the exec's socket is one end of a socketpair."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply  # None: the command never answers nor ends
        self.peer: socket.socket | None = None
        self.stdin = b""

    def inspect_container(self, _name):
        return inspect_answer({}, None)[1]

    def exec_create(self, *_args, **_kwargs):
        return {"Id": "exec1"}

    def exec_start(self, _exec_id, **_kwargs):
        ours, self.peer = socket.socketpair()
        threading.Thread(target=self._guest, daemon=True).start()
        return ours

    def _guest(self) -> None:
        peer = self.peer
        while chunk := peer.recv(4096):
            self.stdin += chunk
        if self.reply is not None:
            peer.sendall(self.reply)
            peer.close()

    def exec_inspect(self, _exec_id):
        return {"Running": False, "ExitCode": 0}


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_hung_chpasswd_is_a_virt_error_without_the_password(tmp_path):
    driver = driver_at("unix:///nonexistent.sock", tmp_path, call_timeout=1.0)
    api = ExecApi(reply=None)
    driver._engine._api = api
    started = time.monotonic()
    with pytest.raises(VirtError, match="chpasswd in vk-fake .* did not finish within 1s") as err:
        driver.set_admin_password(instance=INSTANCE, password=SECRET)
    assert time.monotonic() - started < 3
    assert SECRET not in str(err.value) and err.value.__cause__ is None
    assert api.stdin == f"root:{SECRET}\n".encode()  # on the exec's stdin only


def test_exec_output_frames_are_demultiplexed():
    api = ExecApi(reply=frame(1, b"out ") + frame(2, b"err") + frame(1, b"\n"))
    result = guest.exec_with_stdin(api, "c", ["chpasswd"], b"x\n", user="root", timeout=5)
    assert result == guest.ExecResult(0, "out err")
    assert guest.demux(frame(1, b"abc")[:-1]) == [(1, b"ab")]  # a cut frame keeps its part


# -- what the daemon's refusals mean ----------------------------------------------------------


def test_refusals_by_status_are_the_kit_error_kinds(daemon_socket, tmp_path):
    """403 (an authorization plugin) is AccessDenied; a 409 'is not running' (the container
    stopped between inspect and pause) InvalidState; anything else the daemon's words."""
    routes = {
        CONTAINER: inspect_answer,
        ("GET", "/containers/json"): lambda _q, _b: (403, {"message": "authz plugin: denied"}),
        ("POST", r"/containers/[^/]+/pause"): lambda _q, _b: (
            409, {"message": "Container c0ffee is not running"}),
        ("POST", r"/containers/[^/]+/restart"): lambda _q, _b: (
            500, {"message": "cannot restart: disk full"}),
    }
    with FakeDockerd(daemon_socket, routes):
        driver = driver_at(f"unix://{daemon_socket}", tmp_path)
        with pytest.raises(AccessDenied, match="authz plugin: denied"):
            driver.list_instances()
        with pytest.raises(InvalidState, match="is not running") as err:
            driver.pause(instance=INSTANCE)
        assert INSTANCE.uuid in err.value.message
        with pytest.raises(VirtError, match="dockerd said: cannot restart: disk full") as err:
            driver.reboot(instance=INSTANCE, hard=True)
        assert type(err.value) is VirtError
        with pytest.raises(InvalidRequest, match="timeout"):
            driver.power_off(instance=INSTANCE, timeout=-5)
