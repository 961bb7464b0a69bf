"""Install the simulator's executables: `python -m tests.smartos_sim.install BIN_DIR STATE_ROOT`.

Writes `vmadm imgadm zfs zpool sysinfo zlogin` into BIN_DIR: /bin/sh wrappers that exec this
Python (absolute path) on the package with the state root baked in, so that they work from
any directory, in any environment and over a non-interactive ssh session. Idempotent.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .main import TOOLS
from .state import ROOT_ENV, State

PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def wrapper(tool: str, state_root: Path, python: str = sys.executable) -> str:
    """The text of one tool's wrapper."""
    return ("#!/bin/sh\n"
            f"# virtkit SmartOS simulator: {tool} (tests only)\n"
            "unset PYTHONHOME PYTHONSTARTUP PYTHONSAFEPATH\n"
            f"export {ROOT_ENV}={shlex.quote(str(state_root))}\n"
            f"export PYTHONPATH={shlex.quote(str(PACKAGE_PARENT))}\n"
            f"exec {shlex.quote(python)} -S -m smartos_sim.main {tool} \"$@\"\n")


def install(bin_dir: str | os.PathLike[str], state_root: str | os.PathLike[str],
            python: str = sys.executable) -> dict[str, str]:
    """Write the wrappers and set up the state root; tool name -> wrapper path."""
    bin_path = Path(bin_dir).resolve()
    root = Path(state_root).resolve()
    bin_path.mkdir(parents=True, exist_ok=True)
    State(root).init()
    out = {}
    for tool in TOOLS:
        target = bin_path / tool
        text = wrapper(tool, root, python)
        if not target.exists() or target.read_text() != text:
            tmp = target.with_name(f".{tool}.tmp")
            tmp.write_text(text)
            tmp.chmod(0o755)
            os.replace(tmp, target)
        out[tool] = str(target)
    return out


def state_root_of(bin_dir: str | os.PathLike[str]) -> Path | None:
    """The state root a wrapper directory was installed for (read from its vmadm)."""
    try:
        text = (Path(bin_dir) / "vmadm").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"export {ROOT_ENV}="):
            return Path(shlex.split(line.partition("=")[2])[0])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.smartos_sim.install",
                                     description="install the SmartOS simulator's tools")
    parser.add_argument("bin_dir")
    parser.add_argument("state_root")
    args = parser.parse_args(argv)
    for path in install(args.bin_dir, args.state_root).values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
