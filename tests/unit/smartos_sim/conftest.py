"""A fresh simulated global zone per test: the tools installed, the test image built."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.smartos_sim import install, mkimage
from tests.smartos_sim.state import State


@dataclass
class Sim:
    """The simulator as an operator reaches it: executables run as subprocesses."""

    bin: Path
    root: Path
    image_dir: Path
    image: str

    @property
    def state(self) -> State:
        return State(self.root)

    def run(self, tool: str, *args: str, stdin: str | bytes | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        proc = subprocess.run([str(self.bin / tool), *args], input=data if data is not None
                              else b"", capture_output=True, timeout=timeout, cwd="/")
        return subprocess.CompletedProcess(proc.args, proc.returncode,
                                           proc.stdout.decode(errors="replace"),
                                           proc.stderr.decode(errors="replace"))

    def ok(self, tool: str, *args: str, stdin: str | bytes | None = None
           ) -> subprocess.CompletedProcess[str]:
        proc = self.run(tool, *args, stdin=stdin)
        assert proc.returncode == 0, (proc.args, proc.stdout, proc.stderr)
        return proc

    def install_image(self) -> None:
        self.ok("imgadm", "install", "-m", str(self.image_dir / f"{self.image}.json"),
                "-f", str(self.image_dir / f"{self.image}.zfs.gz"))

    def create(self, **payload: Any) -> str:
        """vmadm create of a joyent zone of the test image (payload overrides); its uuid."""
        body = {"brand": "joyent", "image_uuid": self.image, "max_physical_memory": 256,
                "alias": "vm"}
        body.update(payload)
        proc = self.ok("vmadm", "create", stdin=json.dumps(body))
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("Successfully created VM "), proc.stderr
        return last.rsplit(" ", 1)[1]

    def get(self, uuid: str) -> dict[str, Any]:
        return json.loads(self.ok("vmadm", "get", uuid).stdout)

    def zfs_db(self) -> dict[str, Any]:
        return json.loads((self.root / "zfs.json").read_text())


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("smartos-images")
    return path, mkimage.build(path)


@pytest.fixture
def sim(tmp_path: Path, image_dir: tuple[Path, str]) -> Sim:
    install.install(tmp_path / "bin", tmp_path / "root")
    return Sim(bin=tmp_path / "bin", root=tmp_path / "root", image_dir=image_dir[0],
               image=image_dir[1])


@pytest.fixture
def zone_sim(sim: Sim) -> Sim:
    """A simulator with the test image installed."""
    sim.install_image()
    return sim
