"""qcow2 overlays written in-process (checked by qemu-img), the base-image cache, instance disks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from drivers.libvirt import images, qcow2
from virt.driver.rollback import SpawnRollback
from virt.errors import ImageError, ImageNotFound, InvalidRequest
from virt.model import Flavor, ImageRef


def _qemu_img(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.qcow2"
    _qemu_img("create", "-q", "-f", "qcow2", str(path), "10M")
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 64k", str(path)], check=True,
                   capture_output=True, timeout=60)
    return path


@pytest.mark.parametrize("size", [10 << 20, 1 << 30, 600 << 30, 5 << 40])
def test_overlay_is_a_valid_qcow2_that_reads_through_to_its_base(tmp_path, base, size):
    overlay = tmp_path / "ov.qcow2"
    qcow2.write_overlay(str(overlay), backing_file=str(base), backing_format="qcow2", size=size)
    _qemu_img("check", str(overlay))
    info = json.loads(_qemu_img("info", "--output=json", str(overlay)))
    assert info["virtual-size"] == size
    assert info["backing-filename"] == str(base)
    assert info["backing-filename-format"] == "qcow2"
    io = ["qemu-io", "-c", "read -P 0x5a 0 64k", "-c", "write -P 0x11 1M 64k",
          "-c", "read -P 0x11 1M 64k", str(overlay)]
    proc = subprocess.run(io, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "Pattern verification failed" not in proc.stdout
    _qemu_img("check", str(overlay))
    assert qcow2.read_header(str(overlay)) == qcow2.ImageHeader("qcow2", size, str(base))


def test_overlay_never_overwrites(tmp_path, base):
    target = tmp_path / "ov"
    target.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        qcow2.write_overlay(str(target), backing_file=str(base), backing_format="qcow2", size=1)
    assert target.read_bytes() == b"keep"


def test_cache_copies_once_and_follows_changes(tmp_path, base):
    cache = images.ImageCache(str(tmp_path / "cache"))
    first = cache.fetch(str(base))
    assert first.format == "qcow2" and first.virtual_size == 10 << 20
    assert images.ImageCache(str(tmp_path / "cache")).fetch(str(base)) == first  # from disk
    os.utime(base, ns=(1, 1))
    assert cache.fetch(str(base)).path != first.path


def test_cache_errors_name_the_problem(tmp_path, base):
    cache = images.ImageCache(str(tmp_path / "cache"))
    with pytest.raises(ImageNotFound, match="does not exist"):
        cache.fetch(str(tmp_path / "missing.qcow2"))
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageError, match="declared qcow2"):
        cache.fetch(str(raw), "qcow2")
    with pytest.raises(ImageError, match="cannot be booted"):
        cache.fetch(str(raw), "iso")
    overlay = tmp_path / "ov"
    qcow2.write_overlay(str(overlay), backing_file=str(base), backing_format="qcow2", size=1 << 20)
    with pytest.raises(ImageError, match="backing file"):
        cache.fetch(str(overlay))
    # A raw image whose bytes look like qcow2 stays raw when declared raw.
    assert cache.fetch(str(overlay), "raw").format == "raw"


def test_instance_disks_from_flavor(tmp_path, base):
    cache = images.ImageCache(str(tmp_path / "cache"))
    flavor = Flavor("f", 1, 64, root_gb=1, ephemeral_gb=1, swap_mb=16)
    with SpawnRollback("u1") as rollback:
        disks = images.create_instance_disks(cache, str(tmp_path / "inst"), "u1",
                                             ImageRef(str(base)), flavor, rollback=rollback)
    assert json.loads(_qemu_img("info", "--output=json", disks.root))["virtual-size"] == 1 << 30
    assert os.path.getsize(disks.ephemeral) == 1 << 30
    assert b"SWAPSPACE2" in open(disks.swap, "rb").read(4096)
    blkid = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", disks.ephemeral],
                           capture_output=True, text=True, timeout=30, check=False)
    assert blkid.stdout.strip() == "ext4"


def test_failures_leave_no_instance_directory(tmp_path, base):
    cache = images.ImageCache(str(tmp_path / "cache"))
    inst = tmp_path / "inst"
    with pytest.raises(InvalidRequest, match="smaller than image"):
        big = tmp_path / "big.qcow2"
        _qemu_img("create", "-q", "-f", "qcow2", str(big), "2G")
        with SpawnRollback("u2") as rollback:
            images.create_instance_disks(cache, str(inst), "u2", ImageRef(str(big)),
                                         Flavor("f", 1, 64, root_gb=1), rollback=rollback)
    with pytest.raises(ImageNotFound), SpawnRollback("u3") as rollback:
        images.create_instance_disks(cache, str(inst), "u3",
                                     ImageRef(str(base), kernel=str(tmp_path / "nokernel")),
                                     Flavor("f", 1, 64), rollback=rollback)
    assert not (inst / "u2").exists() and not (inst / "u3").exists()


def test_snapshot_is_standalone(tmp_path, base):
    overlay = tmp_path / "ov"
    qcow2.write_overlay(str(overlay), backing_file=str(base), backing_format="qcow2", size=10 << 20)
    ref = images.snapshot_disk(str(overlay), str(tmp_path / "images"), "snap-1")
    info = json.loads(_qemu_img("info", "--output=json", ref.ref))
    assert "backing-filename" not in info
    with pytest.raises(InvalidRequest, match="already exists"):
        images.snapshot_disk(str(overlay), str(tmp_path / "images"), "snap-1")
    with pytest.raises(InvalidRequest, match="invalid"):
        images.snapshot_disk(str(overlay), str(tmp_path / "images"), "../x")


def test_existing_disks_are_reused_and_never_rolled_back(tmp_path, base):
    cache = images.ImageCache(str(tmp_path / "cache"))
    flavor = Flavor("f", 1, 64, root_gb=1, swap_mb=16)
    with SpawnRollback("u1") as rollback:
        first = images.create_instance_disks(cache, str(tmp_path / "inst"), "u1",
                                             ImageRef(str(base)), flavor, rollback=rollback)
    assert first.made_directory and set(first.created) == {first.root, first.swap}
    root_ino = os.stat(first.root).st_ino
    os.unlink(first.swap)  # the swap disk went missing: only it is made again
    rollback = SpawnRollback("u1 again")
    again = images.create_instance_disks(cache, str(tmp_path / "inst"), "u1",
                                         ImageRef(str(base)), flavor, rollback=rollback)
    assert not again.made_directory and again.created == (again.swap,)
    assert os.stat(again.root).st_ino == root_ino
    rollback.roll_back()  # a rollback of the second spawn
    assert rollback.left_behind == []
    assert os.path.exists(again.root) and not os.path.exists(again.swap)
    # A root disk that is not qcow2 is reported and left alone.
    with open(again.root, "wb") as f:
        f.write(b"not a disk")
    with pytest.raises(ImageError, match="not qcow2"), SpawnRollback("u1") as rollback:
        images.create_instance_disks(cache, str(tmp_path / "inst"), "u1",
                                     ImageRef(str(base)), flavor, rollback=rollback)
    assert open(again.root, "rb").read() == b"not a disk"
