"""ZFS datasets of the simulated pool: filesystems, volumes, snapshots, clones and streams.

A filesystem's tree lives at its mountpoint in the state root; a snapshot is a hard-linked
copy of the tree (writers replace files, they never write through a link), so a clone is
cheap and its `used` counts only what it does not share with its origin. Call every
function here under the state's lock.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import tarfile
import time
from pathlib import Path
from typing import IO, Any

from .state import POOL, SimError, State, read_json, write_json

STREAM_MAGIC = b"SIMZFS\x00\x01"
DB = dict[str, dict[str, Any]]


def load(state: State) -> DB:
    return read_json(state.root / "zfs.json", {}) or {}


def save(state: State, db: DB) -> None:
    write_json(state.root / "zfs.json", db)


def _missing(name: str) -> SimError:
    return SimError(f"cannot open '{name}': dataset does not exist")


def require(db: DB, name: str) -> dict[str, Any]:
    """The dataset's record, or zfs's 'does not exist' error."""
    if name not in db:
        raise _missing(name)
    return db[name]


def _new(state: State, db: DB, name: str, kind: str, origin: str | None,
         props: dict[str, str]) -> dict[str, Any]:
    if name in db:
        raise SimError(f"cannot create '{name}': dataset already exists")
    parent = name.rpartition("@")[0] if "@" in name else name.rpartition("/")[0]
    if not parent or parent not in db:
        raise SimError(f"cannot create '{name}': parent does not exist")
    record = {"type": kind, "origin": origin, "props": dict(props),
              "creation": int(time.time()), "guid": state.next_counter("guid") * 7919 + 10007}
    db[name] = record
    return record


def create_filesystem(state: State, db: DB, name: str, props: dict[str, str] | None = None
                      ) -> None:
    """`zfs create NAME`: an empty filesystem mounted in the state root."""
    _new(state, db, name, "filesystem", None, props or {})
    state.mountpoint(name).mkdir(parents=True, exist_ok=True)


def create_volume(state: State, db: DB, name: str, size: int,
                  props: dict[str, str] | None = None) -> None:
    """`zfs create -V SIZE NAME`: a sparse volume."""
    _new(state, db, name, "volume", None, dict(props or {}, volsize=str(size)))
    path = state.zvol_dir(name)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "data", "wb") as fh:
        fh.truncate(size)


def _link_tree(src: Path, dst: Path) -> None:
    """Copy a tree as hard links (directories are made, files linked)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copystat(src, dst)
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            _link_tree(Path(entry.path), target)
        else:
            os.link(entry.path, target)


def _data_dir(state: State, db: DB, name: str) -> Path:
    """Where a dataset's (or snapshot's) content lives."""
    if "@" in name:
        return state.snapshot_dir(name)
    if db[name]["type"] == "volume":
        return state.zvol_dir(name)
    return state.mountpoint(name)


def snapshot(state: State, db: DB, name: str) -> None:
    """`zfs snapshot DS@SNAP`: freeze the dataset's tree."""
    dataset, _, snap = name.partition("@")
    if not snap or not dataset:
        raise SimError(f"cannot create snapshot '{name}': invalid snapshot name", 1)
    require(db, dataset)
    if name in db:
        raise SimError(f"cannot create snapshot '{name}': dataset already exists")
    _new(state, db, name, "snapshot", None, {})
    target = state.snapshot_dir(name)
    if target.exists():
        shutil.rmtree(target)
    _link_tree(_data_dir(state, db, dataset), target)


def clone(state: State, db: DB, snap: str, target: str, props: dict[str, str] | None = None
          ) -> None:
    """`zfs clone SNAP TARGET`: a new dataset sharing the snapshot's content (origin set)."""
    if "@" not in snap:
        raise SimError(f"cannot open '{snap}': operation only applies to snapshots", 1)
    require(db, snap)
    kind = db[snap.partition("@")[0]]["type"]
    record = _new(state, db, target, kind, snap, props or {})
    if kind == "volume":
        record["props"].setdefault("volsize", db[snap.partition("@")[0]]["props"].get("volsize"))
    dst = _data_dir(state, db, target)
    if dst.exists():
        shutil.rmtree(dst)
    _link_tree(state.snapshot_dir(snap), dst)


def children(db: DB, name: str) -> list[str]:
    """Descendant datasets (not snapshots) of a dataset, deepest first."""
    found = [n for n in db if n.startswith(name + "/") and "@" not in n]
    return sorted(found, key=lambda n: -n.count("/"))


def snapshots_of(db: DB, name: str) -> list[str]:
    """The dataset's snapshots, oldest first."""
    found = [n for n in db if n.startswith(name + "@")]
    return sorted(found, key=lambda n: (db[n]["creation"], db[n]["guid"]))


def clones_of(db: DB, snap: str) -> list[str]:
    return sorted(n for n, rec in db.items() if rec.get("origin") == snap)


def destroy(state: State, db: DB, name: str, recursive: bool = False) -> None:
    """`zfs destroy [-r] NAME`: refuse while children, snapshots or clones depend on it."""
    require(db, name)
    if "@" in name:
        dependents = clones_of(db, name)
        if dependents:
            raise SimError(f"cannot destroy '{name}': snapshot has dependent clones\n"
                           "use '-R' to destroy the following datasets:\n"
                           + "\n".join(dependents))
        drop(state, db, name)
        return
    below = children(db, name)
    snaps = [s for d in [*below, name] for s in snapshots_of(db, d)]
    if (below or snaps) and not recursive:
        kind = "filesystem" if db[name]["type"] == "filesystem" else "volume"
        raise SimError(f"cannot destroy '{name}': {kind} has children\n"
                       "use '-r' to destroy the following datasets:\n" + "\n".join(below + snaps))
    dependents = [c for s in snaps for c in clones_of(db, s)
                  if c != name and not c.startswith(name + "/")]
    if dependents:
        raise SimError(f"cannot destroy '{name}': filesystem has dependent clones\n"
                       "use '-R' to destroy the following datasets:\n" + "\n".join(dependents))
    for item in [*snaps, *below, name]:
        drop(state, db, item)


def drop(state: State, db: DB, name: str) -> None:
    """Forget a dataset and remove its content (no dependency checks)."""
    path = _data_dir(state, db, name)
    kind = db.pop(name)["type"]
    if path.exists():
        shutil.rmtree(path)
    if kind != "filesystem":
        with contextlib.suppress(OSError):  # the snapshot's (or volume's) empty parent
            path.parent.rmdir()


def rollback(state: State, db: DB, snap: str, destroy_newer: bool = False) -> None:
    """`zfs rollback [-r] SNAP`: the dataset's content back to the snapshot's."""
    require(db, snap)
    dataset = snap.partition("@")[0]
    snaps = snapshots_of(db, dataset)
    newer = snaps[snaps.index(snap) + 1:]
    if newer and not destroy_newer:
        raise SimError(f"cannot rollback to '{snap}': more recent snapshots or bookmarks exist\n"
                       "use '-r' to force deletion of the following snapshots and bookmarks:\n"
                       + "\n".join(newer))
    for item in newer:
        destroy(state, db, item)
    path = _data_dir(state, db, dataset)
    shutil.rmtree(path)
    _link_tree(state.snapshot_dir(snap), path)


# -- space accounting -------------------------------------------------------------------------

def _inodes(path: Path, volume: bool) -> dict[tuple[int, int], int]:
    found: dict[tuple[int, int], int] = {}
    if not path.exists():
        return found
    for dirpath, _dirs, files in os.walk(path):
        for fname in files:
            st = os.lstat(os.path.join(dirpath, fname))
            found[(st.st_dev, st.st_ino)] = st.st_blocks * 512 if volume else st.st_size
    return found


def referenced(state: State, db: DB, name: str) -> int:
    """Bytes the dataset (or snapshot) refers to."""
    volume = db[name.partition("@")[0]]["type"] == "volume"
    return sum(_inodes(_data_dir(state, db, name), volume).values())


def used(state: State, db: DB, name: str) -> int:
    """Bytes the dataset holds that its origin does not share, snapshots and children in."""
    if "@" in name:
        return 0
    volume = db[name]["type"] == "volume"
    mine: dict[tuple[int, int], int] = {}
    for item in [name, *snapshots_of(db, name)]:
        mine.update(_inodes(_data_dir(state, db, item), volume))
    origin = db[name].get("origin")
    if origin and origin in db:
        for key in _inodes(state.snapshot_dir(origin), volume):
            mine.pop(key, None)
    total = sum(mine.values())
    if volume:
        total = max(total, int(db[name]["props"].get("refreservation", 0) or 0))
    direct = [c for c in children(db, name) if c.count("/") == name.count("/") + 1]
    return total + sum(used(state, db, c) for c in direct)


def pool_used(state: State, db: DB) -> int:
    return used(state, db, POOL) if POOL in db else 0


def available(state: State, db: DB, name: str) -> int:
    free = max(int(state.host()["zpool_size"]) - pool_used(state, db), 0)
    quota = int(db[name.partition("@")[0]]["props"].get("quota", 0) or 0)
    if quota:
        free = min(free, max(quota - used(state, db, name), 0))
    return free


# -- streams (zfs send / receive) -------------------------------------------------------------

def send(state: State, db: DB, snap: str, out: IO[bytes]) -> None:
    """Write the snapshot as a stream: magic, a JSON header, then a tar of its content."""
    if "@" not in snap:
        raise SimError(f"cannot send '{snap}': operation only applies to snapshots")
    require(db, snap)
    dataset = snap.partition("@")[0]
    header = json.dumps({"type": db[dataset]["type"], "snapshot": snap,
                         "props": {k: v for k, v in db[dataset]["props"].items()
                                   if k in ("volsize",)}}).encode()
    out.write(STREAM_MAGIC + struct.pack(">I", len(header)) + header)
    with tarfile.open(fileobj=out, mode="w|") as tar:
        tar.add(state.snapshot_dir(snap), arcname=".")
    out.flush()


def write_stream(tree: Path, out: IO[bytes], snap_name: str = "final",
                 kind: str = "filesystem") -> None:
    """A stream of a plain directory tree, as `zfs send` of a snapshot of it would be."""
    header = json.dumps({"type": kind, "snapshot": f"{POOL}/image@{snap_name}",
                         "props": {}}).encode()
    out.write(STREAM_MAGIC + struct.pack(">I", len(header)) + header)
    with tarfile.open(fileobj=out, mode="w|") as tar:
        tar.add(tree, arcname=".")


def receive(state: State, db: DB, target: str, stream: IO[bytes],
            snap_name: str | None = None) -> str:
    """Make `target` from a stream (and its snapshot); the snapshot's full name."""
    head = stream.read(len(STREAM_MAGIC) + 4)
    if len(head) < len(STREAM_MAGIC) + 4 or not head.startswith(STREAM_MAGIC):
        raise SimError("cannot receive: invalid stream (bad magic number)")
    (size,) = struct.unpack(">I", head[len(STREAM_MAGIC):])
    try:
        header = json.loads(stream.read(size))
    except ValueError:
        raise SimError("cannot receive: invalid stream (bad header)") from None
    kind = header.get("type", "filesystem")
    props = dict(header.get("props") or {})
    _new(state, db, target, kind, None, props)
    dst = _data_dir(state, db, target)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(dst, filter="tar")
    except (tarfile.TarError, OSError, EOFError) as exc:
        drop(state, db, target)
        raise SimError(f"cannot receive new filesystem stream: {exc}") from None
    snap = f"{target}@{snap_name or str(header.get('snapshot', '@final')).partition('@')[2]}"
    snapshot(state, db, snap)
    return snap


def stream_bytes(state: State, db: DB, snap: str) -> bytes:
    buf = io.BytesIO()
    send(state, db, snap, buf)
    return buf.getvalue()
