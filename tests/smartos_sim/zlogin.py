"""zlogin: run a command in a running zone (the simulated guest's commands only)."""

from __future__ import annotations

import shlex
import sys

from . import guest, vms
from .state import SimError, State
from .vmadm import getopt

USAGE = "usage: zlogin [-dinCEQS] [-e cmdchar] [-l user] zonename [command [argument ...]]"


def main(state: State, argv: list[str]) -> int:
    """zlogin [-Q] ZONE COMMAND [ARGS...]: stdin and stdout passed through."""
    split = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    opts, _ = getopt(argv[:split], "dinCEQS", "el")
    rest = argv[split:]
    if not rest:
        raise SimError(USAGE, 2)
    zone, command = rest[0], rest[1:]
    with state.locked():
        vm = vms.load(state, zone)
    if vm is None:
        raise SimError(f"zlogin: zone '{zone}' unknown", 1)
    if vm.get("zone_state") != "running" or vm.get("state") not in ("running", "provisioning"):
        raise SimError(f"zlogin: login allowed only to running zones ({zone} is "
                       f"'{vm.get('zone_state', vm.get('state'))}').", 1)
    if not command:
        raise SimError("zlogin: interactive login is not supported by the simulator", 1)
    if len(command) == 1 and " " in command[0]:
        command = shlex.split(command[0])
    return guest.run(vms.zone_root(state, zone), command, sys.stdin.buffer, sys.stdout.buffer,
                     sys.stderr.buffer)
