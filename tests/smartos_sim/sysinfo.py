"""sysinfo: the simulated host's facts as JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

from .state import POOL, SimError, State


def facts(state: State) -> dict[str, Any]:
    """The sysinfo object (the keys a driver reads, per research/smartos.md §8)."""
    host = state.host()
    nics = {}
    for i, tag in enumerate(host.get("nic_tags", [])):
        nics[f"e1000g{i}"] = {"MAC Address": f"00:0c:29:00:00:{i:02x}",
                              "ip4addr": f"10.99.{i}.10" if i == 0 else "",
                              "Link Status": "up", "NIC Names": [tag]}
    return {
        "Live Image": host["live_image"], "System Type": "SunOS", "Boot Time": str(
            host.get("boot_time", 0)), "Datacenter Name": host["datacenter"],
        "SDC Version": "7.0", "Manufacturer": "virtkit", "Product": "SmartOS simulator",
        "Serial Number": "SIM-0001", "SKU Number": "", "HW Version": "1", "HW Family": "sim",
        "Setup": "true", "VM Capable": True, "Bhyve Capable": True, "Bhyve Max Vcpus": 32,
        "HVM API": True, "CPU Type": host["cpu_type"], "CPU Virtualization": "vmx",
        "CPU Physical Cores": int(host["sockets"]), "CPU Total Cores": int(host["cores"]),
        "CPU Count": int(host["cores"]), "UUID": host["uuid"], "Hostname": host["hostname"],
        "MiB of Memory": str(host["memory_mib"]), "Zpool": POOL, "Zpool Disks": "sim0",
        "Zpool Profile": "striped", "Zpool Creation": int(host.get("boot_time", 0)),
        "Zpool Size in GiB": int(host["zpool_size"]) >> 30, "Disks": {
            "sim0": {"Size in GB": int(host["zpool_size"]) // 10**9}},
        "Boot Parameters": {"console": "text"}, "Network Interfaces": nics,
        "Virtual Network Interfaces": {}, "Link Aggregations": {},
    }


def main(state: State, argv: list[str]) -> int:
    """sysinfo [-p]: the JSON object (-p: key='value' lines)."""
    if argv and argv[0] not in ("-p",):
        raise SimError(f"Usage: sysinfo [-f|-p|-u]\nunknown option {argv[0]}", 2)
    with state.locked():
        data = facts(state)
    if argv:
        for key, value in data.items():
            if not isinstance(value, dict):
                name = key.replace(" ", "_")
                sys.stdout.write(f"{name}='{value}'\n")
        return 0
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    return 0
