"""Pull failures from the real dockerd, against a tiny local registry that serves a bad layer.

dockerd treats 127.0.0.0/8 registries as insecure (plain HTTP) by default, so the daemon
really pulls from this server and really reports the broken layer inside its 200-OK stream.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import select
import threading
import time
import uuid

import pytest
from dockertb import containers_with_label, docker_cli, make_driver

from drivers.docker import spec
from virt.errors import ImageError, ImageNotFound
from virt.model import Flavor, ImageRef, Instance

pytestmark = pytest.mark.docker

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BrokenRegistry(http.server.BaseHTTPRequestHandler):
    """Serves `broken/app:1`, whose only layer does not match its digest."""

    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
                         "config": {}}).encode()
    layer = b"these bytes do not hash to the digest the manifest promises"
    layer_digest = "sha256:" + "1" * 64
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(layer), "digest": layer_digest}],
    }).encode()

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json", **headers) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path
        if path == "/v2/":
            return self._send(200, b"{}")
        if path.startswith("/v2/broken/app/manifests/"):
            return self._send(200, self.manifest, MANIFEST_TYPE,
                              Docker_Content_Digest=_digest(self.manifest))
        if path.endswith(_digest(self.config)):
            return self._send(200, self.config, "application/octet-stream")
        if path.endswith(self.layer_digest):
            return self._send(200, self.layer, "application/octet-stream")
        self._send(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}')


@pytest.fixture(scope="module")
def registry(docker_image):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), BrokenRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _instance(image: ImageRef) -> Instance:
    return Instance(uuid=str(uuid.uuid4()), name=f"vk-dk-pull-{uuid.uuid4().hex[:8]}",
                    flavor=Flavor("dk.small", 1, 64, 0), image=image)


def _nothing_left(instance: Instance) -> bool:
    named = docker_cli("ps", "-a", "--filter", f"name=^{instance.name}$", "--format", "{{.ID}}")
    return not named and not containers_with_label(f"{spec.LABEL_UUID}={instance.uuid}")


def test_error_inside_the_pull_stream_is_image_error(driver, registry):
    image = ImageRef(f"{registry}/broken/app:1")
    instance = _instance(image=image)
    with pytest.raises(ImageError, match="verification failed"):
        driver.spawn(instance=instance)
    assert _nothing_left(instance)
    assert not docker_cli("images", "-q", image.ref)


def test_unknown_tag_on_a_reachable_registry_is_image_not_found(driver, registry):
    instance = _instance(image=ImageRef(f"{registry}/nothing/here:1"))
    with pytest.raises(ImageNotFound, match="nothing/here"):
        driver.spawn(instance=instance)
    assert _nothing_left(instance)


class StalledRegistry(http.server.BaseHTTPRequestHandler):
    """Serves `stalled/app:1`, but stalls (sends nothing more, never closes) at `stall_at`:
    the manifest (dockerd has not answered its own client yet) or the layer (dockerd is
    streaming progress). A stalled handler notes when dockerd hangs up on it."""

    stall_at = "layer"
    dribble = False  # True: a slow registry (a byte every 0.2 s) rather than a stalled one
    stalled = threading.Event()
    hung_up = threading.Event()
    layer_size = 50 * 1024 * 1024
    manifest = json.loads(BrokenRegistry.manifest)
    manifest["layers"][0]["size"] = layer_size
    manifest = json.dumps(manifest).encode()

    def log_message(self, *args) -> None:
        pass

    def _stall(self, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(b"\0" * 1024)
        self.wfile.flush()
        type(self).stalled.set()
        conn = self.connection
        while True:  # until dockerd closes the connection (a cancelled pull)
            readable, _, _ = select.select([conn], [], [], 0.2)
            try:
                if readable and not conn.recv(4096):
                    break
                if self.dribble:
                    conn.sendall(b"\0")
            except OSError:  # reset
                break
        type(self).hung_up.set()

    def do_GET(self) -> None:
        path = self.path
        if path == "/v2/":
            return BrokenRegistry._send(self, 200, b"{}")
        if path.startswith("/v2/stalled/app/manifests/"):
            if self.stall_at == "manifest":
                return self._stall({"Content-Type": MANIFEST_TYPE,
                                    "Content-Length": str(len(self.manifest) + 10_000)})
            return BrokenRegistry._send(self, 200, self.manifest, MANIFEST_TYPE,
                                        Docker_Content_Digest=_digest(self.manifest))
        if path.endswith(_digest(BrokenRegistry.config)):
            return BrokenRegistry._send(self, 200, BrokenRegistry.config,
                                        "application/octet-stream")
        if path.endswith(BrokenRegistry.layer_digest):
            return self._stall({"Content-Type": "application/octet-stream",
                                "Content-Length": str(self.layer_size)})
        BrokenRegistry._send(self, 404, b'{"errors": [{"code": "MANIFEST_UNKNOWN"}]}')

    do_HEAD = do_GET


@pytest.mark.parametrize(
    "stall_at, dribble",
    [("manifest", False), ("layer", True), ("layer", False)],
    ids=["stalled-manifest", "slow-layer", "stalled-layer"],
)
def test_pull_timeout_cancels_the_pull(docker_image, tmp_path_factory, stall_at, dribble):
    handler = type("Stalled", (StalledRegistry,), {
        "stall_at": stall_at, "dribble": dribble,
        "stalled": threading.Event(), "hung_up": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"dk-pull-{uuid.uuid4().hex[:8]}"
    driver = make_driver(tmp_path_factory, host, pull_timeout=2.0, call_timeout=5.0)
    ref = f"127.0.0.1:{server.server_address[1]}/stalled/app:1"
    instance = _instance(image=ImageRef(ref))
    try:
        started = time.monotonic()
        with pytest.raises(ImageError, match="did not finish within 2s"):
            driver.spawn(instance=instance)
        assert time.monotonic() - started < 2.0 + 5.0
        assert handler.stalled.is_set()  # the registry really stalled the pull
        # The worker thread is gone and its connection to dockerd is closed...
        assert not [t for t in threading.enumerate() if t.name == f"docker-pull-{ref}"]
        if (stall_at, dribble) != ("layer", False):
            # ...so dockerd cancelled the pull and dropped its registry connection.
            assert handler.hung_up.wait(15), "dockerd kept pulling from the registry"
        # A layer download stalled without a byte is the exception: dockerd 20.10 notices
        # the cancellation only when data moves (`docker pull` + Ctrl-C behaves the same);
        # see docs/docker.md.
        assert _nothing_left(instance)
        assert not docker_cli("images", "-q", ref)
    finally:
        driver.cleanup_host(host=host)
        server.shutdown()
        server.server_close()
