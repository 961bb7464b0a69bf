"""imgadm's local database: installed images, their datasets, install and delete."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
from pathlib import Path
from typing import IO, Any

from . import datasets
from .state import POOL, SimError, State, read_json, write_json

IMAGE_TYPES = {"zone-dataset", "zvol", "lx-dataset", "docker", "other"}


class ImgadmError(SimError):
    """`imgadm: error (<Code>): <message>`; ImageNotInstalled exits 3."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"imgadm: error ({code}): {message}",
                         3 if code == "ImageNotInstalled" else 1)
        self.error_code = code


def not_installed(uuid: str, pool: str = POOL) -> ImgadmError:
    return ImgadmError("ImageNotInstalled", f"image \"{uuid}\" was not found on zpool \"{pool}\"")


def _db_path(state: State, uuid: str, pool: str = POOL) -> Path:
    return state.images_dir / f"{pool}-{uuid}.json"


def record(state: State, uuid: str) -> dict[str, Any] | None:
    """The image's database entry ({manifest, zpool, source}) if its dataset is there too."""
    entry = read_json(_db_path(state, uuid))
    if entry is None:
        return None
    return entry if f"{POOL}/{uuid}" in datasets.load(state) else None


def manifests(state: State) -> dict[str, dict[str, Any]]:
    """uuid -> manifest of every installed image."""
    db = datasets.load(state)
    out = {}
    for name in sorted(os.listdir(state.images_dir)):
        if name.startswith(f"{POOL}-") and name.endswith(".json"):
            entry = read_json(state.images_dir / name) or {}
            uuid = str(entry.get("manifest", {}).get("uuid", ""))
            if f"{POOL}/{uuid}" in db:
                out[uuid] = entry["manifest"]
    return out


def clone_names(db: datasets.DB, uuid: str) -> list[str]:
    """The datasets cloned from the image's snapshots (the VMs that use it)."""
    base = f"{POOL}/{uuid}"
    return sorted({c for s in datasets.snapshots_of(db, base) for c in datasets.clones_of(db, s)})


def info(state: State, uuid: str) -> dict[str, Any]:
    """The image-info object (`imgadm list -j` element)."""
    entry = record(state, uuid)
    if entry is None:
        raise not_installed(uuid)
    names = clone_names(datasets.load(state), uuid)
    out: dict[str, Any] = {"manifest": entry["manifest"], "zpool": entry.get("zpool", POOL)}
    if entry.get("source"):
        out["source"] = entry["source"]
    out.update(cloneNames=names, clones=len(names))
    return out


def check_manifest(manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise ImgadmError("InvalidManifest", "manifest is not a JSON object")
    problems = []
    uuid = manifest.get("uuid")
    from .payload import UUID_RE
    if not isinstance(uuid, str) or not UUID_RE.match(uuid):
        problems.append("uuid")
    for field in ("name", "version"):
        if not isinstance(manifest.get(field), str) or not manifest.get(field):
            problems.append(field)
    if manifest.get("type") not in IMAGE_TYPES:
        problems.append("type")
    files = manifest.get("files")
    if not isinstance(files, list) or not files or not isinstance(files[0], dict):
        problems.append("files")
    if problems:
        raise ImgadmError("ManifestValidation", "invalid manifest: " + ", ".join(
            f"\"{p}\" is missing or invalid" for p in problems))
    return manifest


def _decompress(data: bytes, compression: str | None) -> bytes:
    try:
        if compression == "gzip" or (compression is None and data[:2] == b"\x1f\x8b"):
            return gzip.decompress(data)
        if compression == "bzip2":
            return bz2.decompress(data)
        if compression == "xz":
            return lzma.decompress(data)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise ImgadmError("FileCorrupt", f"cannot decompress image file ({compression}): "
                          f"{exc}") from None
    return data


def install(state: State, manifest: dict[str, Any], stream: IO[bytes],
            source: str | None = None) -> bool:
    """Register an image from its file; False when it was installed already."""
    manifest = check_manifest(manifest)
    uuid = manifest["uuid"]
    if record(state, uuid) is not None:
        return False
    data = stream.read()
    meta = manifest["files"][0]
    if meta.get("size") is not None and int(meta["size"]) != len(data):
        raise ImgadmError("DownloadError", f"image file size ({len(data)}) does not match the "
                          f"manifest ({meta['size']})")
    if meta.get("sha1") and hashlib.sha1(data).hexdigest() != meta["sha1"]:
        raise ImgadmError("DownloadError", f"image file checksum does not match the manifest "
                          f"(sha1 {hashlib.sha1(data).hexdigest()} != {meta['sha1']})")
    raw = _decompress(data, meta.get("compression"))
    db = datasets.load(state)
    if f"{POOL}/{uuid}" in db:  # a dataset left without its database entry
        datasets.destroy(state, db, f"{POOL}/{uuid}", recursive=True)
    datasets.receive(state, db, f"{POOL}/{uuid}", io.BytesIO(raw), snap_name="final")
    datasets.save(state, db)
    write_json(_db_path(state, uuid), {"manifest": manifest, "zpool": POOL,
                                       **({"source": source} if source else {})})
    return True


def delete(state: State, uuid: str) -> None:
    """imgadm delete: refused while VMs are clones of it."""
    if record(state, uuid) is None:
        raise not_installed(uuid)
    db = datasets.load(state)
    names = clone_names(db, uuid)
    if names:
        raise ImgadmError("ImageHasDependentClones",
                          f"image \"{uuid}\" has dependent clones: {' '.join(names)}")
    datasets.destroy(state, db, f"{POOL}/{uuid}", recursive=True)
    datasets.save(state, db)
    os.unlink(_db_path(state, uuid))
