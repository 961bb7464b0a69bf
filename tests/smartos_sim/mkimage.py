"""Build the small zone-dataset test image: `python -m tests.smartos_sim.mkimage OUT_DIR`.

OUT_DIR gets `<uuid>.json` (an imgadm v2 manifest) and `<uuid>.zfs.gz` (a gzipped stream of
the simulator's `zfs send` format). The root tree holds /etc/passwd, /etc/shadow with a root
entry and a marker file /etc/virtkit-test-image (the image's uuid). The uuid is derived from
the version, so a second run finds the files and rebuilds nothing. Prints the uuid.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import sys
import tempfile
import uuid as uuidlib
from pathlib import Path
from typing import Any

from .datasets import write_stream

NAME = "virtkit-test-zone"
VERSION = "1.0.0"
MARKER = "/etc/virtkit-test-image"


def image_uuid(name: str = NAME, version: str = VERSION) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"virtkit-smartos-sim/{name}@{version}"))


def _tree(root: Path, uuid: str) -> None:
    etc = root / "root" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:Super-User:/root:/bin/sh\n")
    (etc / "shadow").write_text("root:*LK*:19000::::::\n")
    (etc / "shadow").chmod(0o600)
    (etc / "virtkit-test-image").write_text(uuid + "\n")
    (root / "root" / "root").mkdir()
    (root / "root" / "tmp").mkdir()


def manifest(uuid: str, data: bytes, name: str, version: str) -> dict[str, Any]:
    return {
        "v": 2, "uuid": uuid, "owner": "00000000-0000-0000-0000-000000000000",
        "name": name, "version": version, "state": "active", "disabled": False,
        "public": False, "published_at": "2024-01-01T00:00:00.000Z", "type": "zone-dataset",
        "os": "smartos", "description": "virtkit's SmartOS simulator test image",
        "files": [{"sha1": hashlib.sha1(data).hexdigest(), "size": len(data),
                   "compression": "gzip"}],
        "requirements": {"brand": "joyent"}, "users": [{"name": "root"}],
    }


def build(out_dir: str | Path, name: str = NAME, version: str = VERSION) -> str:
    """Make the image files in out_dir (kept when present); the image uuid."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uuid = image_uuid(name, version)
    mpath, fpath = out / f"{uuid}.json", out / f"{uuid}.zfs.gz"
    if mpath.is_file() and fpath.is_file():
        return uuid
    with tempfile.TemporaryDirectory() as tmp:
        _tree(Path(tmp), uuid)
        buf = io.BytesIO()
        write_stream(Path(tmp), buf)
    data = gzip.compress(buf.getvalue(), mtime=0)
    fpath.write_bytes(data)
    mpath.write_text(json.dumps(manifest(uuid, data, name, version), indent=2) + "\n")
    return uuid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.smartos_sim.mkimage")
    parser.add_argument("out_dir")
    parser.add_argument("--name", default=NAME)
    parser.add_argument("--version", default=VERSION)
    args = parser.parse_args(argv)
    print(build(args.out_dir, args.name, args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
