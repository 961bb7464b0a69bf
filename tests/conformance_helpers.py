"""Running the conformance suite against test drivers installed as a third party would be:
a module plus a `.dist-info` with `virtkit.compute_drivers` entry points on PYTHONPATH, the
suite in a pytest subprocess, its matrix column read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: The fake SAN's CHAP target, and the suite's options that exercise every capability of
#: the fake (volumes, CHAP, the unreachable engine).
FAKE_SAN = "chap_credentials = iqn.2010-10.org.x:v2=u:not-a-real-secret-5678"
VOLUME = ('volume_connection_info = {"driver_volume_type": "iscsi", "serial": "v1", "data": '
          '{"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.org.x:v1", '
          '"target_lun": 1}}')
CHAP_VOLUME = ('chap_volume_connection_info = {"driver_volume_type": "iscsi", "serial": "v2", '
               '"data": {"target_portal": "127.0.0.1:3260", "target_iqn": '
               '"iqn.2010-10.org.x:v2", "target_lun": 1, "auth_method": "CHAP", '
               '"auth_username": "u", "auth_password": "not-a-real-secret-5678"}}')
UNREACHABLE = "unreachable_overrides = DEFAULT.instances_path=/dev/null/unreachable"


def install_drivers(root: Path, module: str, source: str, entries: Mapping[str, str]) -> Path:
    """`source` as module `module` under `root`, with one entry point per `entries` item
    (entry-point name -> class name in the module); `root` is the site to put on PYTHONPATH."""
    (root / f"{module}.py").write_text(source)
    dist = root / f"{module}-1.0.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{entry} = {module}:{cls}" for entry, cls in entries.items()]
    (dist / "entry_points.txt").write_text("[virtkit.compute_drivers]\n" + "\n".join(lines) + "\n")
    return root


def run_suite(site: Path, workdir: Path, driver: str, config: str, matrix: Path, *,
              pyargs: bool = True, select: str | None = None
              ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], dict[str, str]]:
    """One suite run of `driver` with the config text `config`, in a pytest subprocess from
    `workdir` (which holds no tests): the process, its matrix column and each test's outcome.

    Without `pyargs` it is the short form, `pytest --virtkit-config FILE` with no test path;
    `select` is a `-k` expression.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{driver}.conf"
    path.write_text(config)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    env.pop("PYTEST_ADDOPTS", None)
    target = ["--pyargs", "virt.conformance"] if pyargs else []
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *target,
         "--virtkit-config", str(path), "--virtkit-matrix", str(matrix),
         *(["-k", select] if select else [])],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    column = json.loads(matrix.with_suffix(".json").read_text())["drivers"][driver]
    tests = [t for op in column["operations"].values() for t in op["tests"]]
    outcomes = {t["test"]: t["outcome"] for t in tests + column["driver_checks"]}
    return proc, column, outcomes
