"""Images: making one present (`imgadm get`, else `imgadm install -m -f` from
`[smartos] image_dir`), and capturing an instance's dataset as a new image (a snapshot).

A capture is `zfs snapshot` of the instance's root dataset (an OS zone's `zones/<uuid>`, an
HVM guest's boot zvol), `zfs send` of it to `<image_dir>/<image>.zfs` on the global zone, a
v2 manifest `<image_dir>/<image>.json` beside it, and `imgadm install` of the two: an image
a later `vmadm create` clones like any other (copy-on-write from its `@final`).
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.smartos import spec
from drivers.smartos.commands import Tools
from drivers.smartos.connection import MKDIR, RM
from virt.driver.rollback import SpawnRollback
from virt.errors import ImageError, ImageNotFound, InvalidRequest

LOG = logging.getLogger(__name__)

#: File name suffix of an image file per manifest `files[0].compression`.
SUFFIX = {"gzip": ".zfs.gz", "bzip2": ".zfs.bz2", "xz": ".zfs.xz", "none": ".zfs"}

class Images:
    """The images of one global zone, with their manifests cached by uuid (a manifest
    never changes for a uuid)."""

    def __init__(self, tools: Tools, *, image_dir: str, timeout: float) -> None:
        self.tools = tools
        self.image_dir = image_dir.rstrip("/") or "/"
        self.timeout = timeout
        self._manifests: dict[str, dict[str, Any]] = {}

    def forget(self, image: str) -> None:
        self._manifests.pop(image, None)

    def manifest(self, image: str) -> dict[str, Any] | None:
        """The manifest of an installed image; None if it is not installed."""
        cached = self._manifests.get(image)
        if cached is not None:
            return cached
        with self.tools.translate(f"read image {image}"):
            got = self.tools.image_get(image)
        if got is None:
            return None
        manifest = dict(got.get("manifest") or {})
        self._manifests[image] = manifest
        return manifest

    def ensure(self, image: str) -> dict[str, Any]:
        """The manifest of `image`, installing it from the image directory if needed."""
        manifest = self.manifest(image)
        if manifest is not None:
            return manifest
        source = self._read_manifest(image)
        compression = str((source.get("files") or [{}])[0].get("compression") or "none")
        path = f"{self.image_dir}/{image}{SUFFIX.get(compression, '.zfs')}"
        LOG.info("smartos: installing image %s from %s", image, path)
        with self.tools.translate(f"install image {image} from {self.image_dir}"):
            self.tools.image_install(self._manifest_path(image), path, timeout=self.timeout)
        manifest = self.manifest(image)
        if manifest is None:
            raise ImageError(f"imgadm installed image {image} but does not list it")
        return manifest

    def _manifest_path(self, image: str) -> str:
        return f"{self.image_dir}/{image}.json"

    def _read_manifest(self, image: str) -> dict[str, Any]:
        done = self.tools.executor.system("/usr/bin/cat", self._manifest_path(image))
        if done.returncode != 0:
            raise ImageNotFound(
                f"image {image} is not installed on the global zone and "
                f"{self._manifest_path(image)} does not exist",
                hint="import it (imgadm import), or put its manifest <uuid>.json and file "
                "into [smartos] image_dir")
        try:
            manifest: dict[str, Any] = json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise ImageError(f"{self._manifest_path(image)} is not JSON: {exc.msg}") from None
        if manifest.get("uuid") != image:
            raise ImageError(f"{self._manifest_path(image)} describes image "
                             f"{manifest.get('uuid')!r}, not {image}")
        return manifest

    def delete(self, image: str) -> bool:
        """`imgadm delete` the image and remove its files; False if it was not installed."""
        self.forget(image)
        with self.tools.translate(f"delete image {image}"):
            deleted = self.tools.image_delete(image)
        self.tools.executor.system(RM, "-f", self._manifest_path(image),
                                   f"{self.image_dir}/{image}.zfs")
        return deleted

    def installed(self, images: tuple[str, ...]) -> set[str]:
        """Which of `images` have a dataset in the zpool (one `zfs list` of the pool's
        children: a list of names that holds a missing one fails as a whole)."""
        pool = self.tools.zpool
        with self.tools.translate("list the zpool's datasets"):
            names = set(self.tools.zfs_children(pool))
        return {image for image in images if f"{pool}/{image}" in names}

    # -- capture ---------------------------------------------------------------------------

    def capture(self, vm: Mapping[str, Any], *, image: str, name: str,
                source: Mapping[str, Any] | None, tags: Mapping[str, str]) -> dict[str, Any]:
        """Make `image` from the root dataset of `vm`: snapshot, send, manifest, install.
        On failure nothing of it is left (the snapshot is removed in every case)."""
        dataset, kind = root_dataset(vm)
        snap = f"{dataset}@virtkit-{image[:8]}"
        what = f"capture {dataset} as image {image}"
        with SpawnRollback(what) as undo, self.tools.translate(what):
            self.tools.executor.system(MKDIR, "-p", self.image_dir)
            self.tools.zfs_snapshot(snap)
            undo.push(f"snapshot {snap}", lambda: self.tools.zfs_destroy(snap))
            stream = f"{self.image_dir}/{image}.zfs"
            undo.push(f"file {stream}", lambda: self.tools.executor.system(RM, "-f", stream))
            self.tools.zfs_send(snap, stream, timeout=self.timeout)
            sha1, size = self.tools.executor.sha1(stream, timeout=self.timeout)
            manifest = capture_manifest(image=image, name=name, kind=kind, sha1=sha1,
                                        size=size, source=source, tags=tags, vm=vm)
            path = self._manifest_path(image)
            undo.push(f"file {path}", lambda: self.tools.executor.system(RM, "-f", path))
            self.tools.executor.write_file(path, json.dumps(manifest, indent=2).encode())
            self.tools.image_install(path, stream, timeout=self.timeout)
            undo.push(f"image {image}", lambda: self.tools.image_delete(image))
            self.tools.zfs_destroy(snap)
        return manifest


def root_dataset(vm: Mapping[str, Any]) -> tuple[str, str]:
    """(dataset, image type) of what a capture of `vm` takes: an OS zone's root
    filesystem, or an HVM guest's boot disk (a zvol)."""
    if vm.get("brand") in spec.HVM_BRANDS:
        disks = [d for d in vm.get("disks") or [] if d.get("boot")] or vm.get("disks") or []
        if not disks or not disks[0].get("zfs_filesystem"):
            raise InvalidRequest(f"VM {vm.get('uuid')} has no boot disk to capture")
        return str(disks[0]["zfs_filesystem"]), spec.HVM_IMAGE
    return str(vm.get("zfs_filesystem") or f"{vm.get('zpool', 'zones')}/{vm['uuid']}"), \
        spec.ZONE_IMAGE


@dataclass(frozen=True)
class _Now:
    stamp: str
    version: str


def _now() -> _Now:
    now = datetime.datetime.now(datetime.UTC)
    return _Now(now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                now.strftime("%Y%m%dT%H%M%SZ"))


def capture_manifest(*, image: str, name: str, kind: str, sha1: str, size: int,
                     source: Mapping[str, Any] | None, tags: Mapping[str, str],
                     vm: Mapping[str, Any]) -> dict[str, Any]:
    """A v2 image manifest for a captured dataset (os and requirements from its source)."""
    source = source or {}
    now = _now()
    manifest: dict[str, Any] = {
        "v": 2,
        "uuid": image,
        "owner": "00000000-0000-0000-0000-000000000000",
        "name": name,
        "version": now.version,
        "description": f"captured by virtkit from VM {vm.get('uuid')}",
        "state": "active",
        "disabled": False,
        "public": False,
        "published_at": now.stamp,
        "type": kind,
        "os": source.get("os") or "other",
        "files": [{"sha1": sha1, "size": size, "compression": "none"}],
        "tags": dict(tags),
    }
    if source.get("requirements"):
        manifest["requirements"] = dict(source["requirements"])
    elif vm.get("brand") in spec.HVM_BRANDS:
        manifest["requirements"] = {"brand": vm["brand"]}
    if kind == spec.HVM_IMAGE:
        disks = [d for d in vm.get("disks") or [] if d.get("boot")] or vm.get("disks") or [{}]
        manifest["image_size"] = int(source.get("image_size") or disks[0].get("size") or 0)
    return manifest
