"""The wrappers' entry point: `python -m smartos_sim.main TOOL [ARGS...]`."""

from __future__ import annotations

import importlib
import sys

from .state import run_tool

TOOLS = ("vmadm", "imgadm", "zfs", "zpool", "sysinfo", "zlogin")


def main(argv: list[str]) -> int:
    """Run one simulated tool with its arguments; its exit code."""
    if not argv or argv[0] not in TOOLS:
        sys.stderr.write(f"usage: python -m smartos_sim.main {{{','.join(TOOLS)}}} [ARGS...]\n")
        return 2
    module = importlib.import_module(f".{argv[0]}", __package__)
    return run_tool(argv[0], module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
