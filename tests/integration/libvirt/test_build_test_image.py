"""scripts/build-test-image: its JSON stays valid for any output directory, and it caches."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.testbed import env, require

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "build-test-image"
HOSTILE_DIR = "out \"q\" \\b 'x' <&]]> $HOME"

pytestmark = pytest.mark.slow


def _build(out: Path) -> dict[str, str]:
    done = subprocess.run([str(SCRIPT), str(out)], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, str] = json.loads(done.stdout)
    return result


def test_json_of_a_hostile_output_directory(tmp_path):
    # The test bed's kernel package is seeded into the new directory: no download.
    debs = Path(env("VIRTKIT_TEST_KERNEL")).parent / "debs"
    require(debs.is_dir() and any(debs.glob("*.deb")), "the test image's kernel package")
    out = tmp_path / HOSTILE_DIR
    shutil.copytree(debs, out / "debs")
    first = _build(out)
    assert first == {"kernel": str(out / "vmlinuz"), "ramdisk": str(out / "initrd.gz"),
                     "disk": str(out / "disk.qcow2")}
    assert all(Path(p).stat().st_size > 0 for p in first.values())
    built = (out / "initrd.gz").stat().st_mtime_ns
    assert _build(out) == first  # cached: the same answer, nothing rebuilt
    assert (out / "initrd.gz").stat().st_mtime_ns == built
