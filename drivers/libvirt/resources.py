"""What this host offers: resources, its address, and whether QEMU's user reaches our paths."""

from __future__ import annotations

import functools
import grp
import json
import logging
import os
import pwd
import re
import shutil
import socket
import stat

import libvirt

from drivers.libvirt import xen
from drivers.libvirt.connection import READABLE_DIRECTORY_HINT, Connection, user_name
from drivers.libvirt.domains import Ownership
from virt.errors import ConfigError
from virt.model import HostResources

LOG = logging.getLogger(__name__)
QEMU_CONF = "/etc/libvirt/qemu.conf"
#: The accounts distributions build libvirt to run QEMU as, when qemu.conf sets none.
DEFAULT_QEMU_USERS = ("libvirt-qemu", "qemu")
_USER_LINE = re.compile(r'^\s*user\s*=\s*"([^"]+)"', re.MULTILINE)
GIB = 1024**3


def host_resources(conn: libvirt.virConnect, instances_path: str,
                   domain_type: str, ownership: Ownership) -> HostResources:
    """The host's capacity and use, as libvirt and the instances' file system report it;
    the vCPUs used are those of virtkit's running domains (`ownership`), not of others'."""
    model, memory_mb, cpus, _mhz, _nodes, sockets, cores, threads = conn.getInfo()
    vcpus_used = 0
    mem_used = 0
    active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    for dom in ownership.ours(active, every=False):
        _state, max_kb, _mem, ncpu, _cpu = dom.info()
        vcpus_used += ncpu
        mem_used += max_kb // 1024
    try:
        stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
        free = stats["free"] + stats.get("buffers", 0) + stats.get("cached", 0)
        mem_used = (stats["total"] - free) // 1024
    except (libvirt.libvirtError, KeyError):
        pass  # the test driver has no node memory stats: count our guests' memory instead
    disk = shutil.disk_usage(instances_path)
    return HostResources(
        vcpus=cpus, memory_mb=memory_mb, local_gb=disk.total // GIB,
        vcpus_used=vcpus_used, memory_mb_used=mem_used,
        local_gb_used=(disk.total - disk.free) // GIB,
        hypervisor_type=conn.getType(), hypervisor_version=conn.getVersion(),
        hypervisor_hostname=conn.getHostname(),
        cpu_info=json.dumps({"arch": model, "topology": {
            "sockets": sockets, "cores": cores, "threads": threads}}),
        disk_available_least=disk.free // GIB,
        supported_instances=((model, domain_type, "hvm"),),
    )


def local_ip() -> str:
    """The address this host uses to reach others (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))
            return str(sock.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def is_local_system_uri(uri: str) -> bool:
    """qemu:///system (the local system daemon, whose QEMU runs as its own user)."""
    return uri.split("?", 1)[0].rstrip("/") == "qemu:///system"


def qemu_user(conf_path: str = QEMU_CONF) -> pwd.struct_passwd | None:
    """The account the local libvirtd runs QEMU as (qemu.conf `user`, else the
    distribution's default); None if no such account exists."""
    names: tuple[str, ...] = DEFAULT_QEMU_USERS
    try:
        with open(conf_path, encoding="utf-8") as conf:
            found = _USER_LINE.search(conf.read())
        if found:
            names = (found.group(1).lstrip("+"),)
    except OSError:
        pass
    for name in names:
        try:
            return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except (KeyError, ValueError):
            continue
    return None


def check_traversable(paths: dict[str, str], user: pwd.struct_passwd) -> None:
    """ConfigError unless `user` can search every directory down to each path.

    `paths` maps the option that set a path ("[libvirt] images_path") to the path.
    """
    if user.pw_uid == 0:
        return
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for option, path in paths.items():
        blocked = _first_blocked(os.path.realpath(path), user.pw_uid, groups)
        if blocked is None:
            continue
        directory, st = blocked
        raise ConfigError(
            f"QEMU runs as {user_name(user.pw_uid)}, which cannot traverse {directory} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}) on the way to "
            f"{path} ({option}): guests could not read their disks",
            hint=f"{READABLE_DIRECTORY_HINT} (or allow it: chmod o+x {directory})")


def _first_blocked(path: str, uid: int, groups: set[int]
                   ) -> tuple[str, os.stat_result] | None:
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return None  # not made yet: init_host makes it with a traversable mode
        if not stat.S_ISDIR(st.st_mode):
            return None
        if st.st_uid == uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return current, st
    return None


@functools.lru_cache(maxsize=1)
def _kvm_runs_guests() -> bool:
    from drivers.libvirt import kvm_probe

    return kvm_probe.kvm_runs_guests()


def domain_type(uri: str, configured: str, connection: Connection) -> str:
    """The domain type to define on `uri`: test, or `configured` (kvm, qemu), or for
    'auto' what a bounded local boot probe (or a remote host's capabilities) shows."""
    if uri.startswith("test:"):
        found = "test"
    elif configured == "auto" and xen.is_xen_uri(uri):
        found = xen.DOMAIN_TYPE
    elif configured != "auto":
        found = configured
    elif "://" in uri and uri.split("://", 1)[1].split("/", 1)[0]:
        # A remote host cannot be probed from here: trust its domain capabilities.
        try:
            connection.call(lambda c: c.getDomainCapabilities(None, None, None, "kvm", 0))
            found = "kvm"
        except libvirt.libvirtError:
            found = "qemu"
    else:
        found = "kvm" if _kvm_runs_guests() else "qemu"
    LOG.info("libvirt driver uses domain type %s on %s", found, uri)
    return found
