"""The `[smartos]` option group."""

from __future__ import annotations

from oslo_config import cfg

from virt.driver import options

GROUP = "smartos"

#: Where the tools live on a real SmartOS global zone (`bin_dir` empty).
REAL_PATHS = {
    "vmadm": "/usr/sbin/vmadm",
    "imgadm": "/usr/sbin/imgadm",
    "zfs": "/usr/sbin/zfs",
    "zpool": "/usr/sbin/zpool",
    "sysinfo": "/usr/bin/sysinfo",
    "zlogin": "/usr/sbin/zlogin",
}

#: Seconds a STOPPED event is held back: a reboot shows stopped between two polls.
STOPPED_EVENT_DELAY = 15.0

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "host",
        default="local",
        help="Where the global zone is: 'local' (virtkit runs in the global zone) or "
        "ssh://user@host[:port] (OpenSSH, one kept connection, host key verified).",
    ),
    cfg.StrOpt(
        "ssh_key_file",
        default=None,
        help="Private key for the SSH executor (unset: the ssh client's default identities).",
    ),
    cfg.StrOpt(
        "known_hosts_file",
        default=None,
        help="known_hosts file holding the global zone's host key; the key is always verified "
        "(StrictHostKeyChecking=yes). Unset: ~/.ssh/known_hosts.",
    ),
    cfg.StrOpt(
        "bin_dir",
        default="",
        help="Directory holding vmadm, imgadm, zfs, zpool, sysinfo and zlogin. Empty: their "
        "real paths on SmartOS (/usr/sbin/vmadm, /usr/sbin/imgadm, /usr/sbin/zfs, "
        "/usr/sbin/zpool, /usr/bin/sysinfo, /usr/sbin/zlogin).",
    ),
    cfg.FloatOpt(
        "command_timeout",
        default=120.0,
        min=1.0,
        help="Upper bound in seconds on one command (a hung command is killed and raised as "
        "a timeout). vmadm create has provision_timeout instead; a power-off adds its own.",
    ),
    cfg.StrOpt(
        "zpool",
        default="zones",
        help="The zpool holding images and instances.",
    ),
    cfg.StrOpt(
        "nic_tag",
        default="admin",
        help="nic_tag of every instance NIC (see nictagadm list on the global zone).",
    ),
    cfg.ListOpt(
        "resolvers",
        default=[],
        help="DNS resolvers (IP addresses) written into each instance.",
    ),
    cfg.StrOpt(
        "image_dir",
        default="/var/tmp/virtkit-images",
        help="Directory on the global zone holding image manifests (<uuid>.json) and files "
        "for 'imgadm install', and where snapshots are written.",
    ),
    cfg.FloatOpt(
        "provision_timeout",
        default=600.0,
        min=1.0,
        help="Upper bound in seconds on 'vmadm create' (vmadm's own provisioning wait is "
        "300 s, longer for big HVM guests).",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=2.0,
        min=0.1,
        help="Seconds between two 'vmadm list' polls of the lifecycle event watcher.",
    ),
    cfg.IntOpt(
        "control_persist",
        default=300,
        min=1,
        help="Seconds the kept SSH connection stays open without commands (ControlPersist).",
    ),
    # Shared by name with the other drivers (virt.driver.options).
    options.reboot_timeout(default=60.0),
    options.stopped_event_delay(default=STOPPED_EVENT_DELAY),
]
