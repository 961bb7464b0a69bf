"""The [libvirt] options."""

from __future__ import annotations

from oslo_config import cfg

from virt.driver import options

OPTS: list[cfg.Opt] = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt URI: qemu:///system, qemu+ssh://host/system, or test:///default "
               "(libvirt's embedded test driver)."),
    cfg.StrOpt("virt_type", default="auto", choices=["auto", "kvm", "qemu", "xen"],
               help="Domain type. 'auto' uses KVM when a bounded boot probe shows it runs "
               "guests, else QEMU software emulation (TCG); on a xen:// URI it is 'xen' "
               "(Xen PV guests through libvirt's libxl driver, direct kernel boot). Ignored "
               "for test:// URIs."),
    cfg.StrOpt("xen_console_dir", default="/var/log/xen/console",
               help="With virt_type = xen: the directory where dom0's xenconsoled logs each "
               "guest's console (xenconsoled --log=guest --log-dir), read by "
               "get_console_output as guest-<domain name>.log."),
    cfg.StrOpt("xen_bridge", default="xenbr0",
               help="With virt_type = xen: the dom0 bridge a VIF that names no bridge or "
               "network joins (libxl has no usermode networking; xenbr0 is libxl's own "
               "default). Empty: such a VIF is refused."),
    cfg.StrOpt("images_path", default="$state_path/images",
               help="Base-image cache: each base image is copied here once; instance root "
               "disks are qcow2 overlays on it."),
    cfg.StrOpt("iscsi_attach", default="native", choices=["native", "host"],
               help="How iSCSI volumes are attached: 'native' (QEMU's own initiator, CHAP in "
               "a libvirt secret) or 'host' (kernel initiator through os-brick)."),
    cfg.BoolOpt("gluster_native", default=True,
                help="GlusterFS volumes through QEMU's own gluster driver (libgfapi, no FUSE in "
                "the data path). False, or a QEMU without its gluster block driver, mounts each "
                "export once under <instances_path>/gluster-mounts (FUSE) instead."),
    cfg.StrOpt("gluster_mount_namespace_pidfile", default="",
               help="Pid file of a process (e.g. libvirtd) whose mount namespace QEMU runs in, "
               "when it is not this service's: GlusterFS FUSE mounts are made there "
               "(nsenter). Empty: this service's own namespace, the usual case."),
    cfg.StrOpt("disk_cachemode", default="none",
               choices=["none", "writethrough", "writeback", "directsync", "unsafe"],
               help="QEMU cache mode of instance disks and volumes."),
    cfg.IntOpt("console_log_max_bytes", default=1024 * 1024, min=1024,
               help="Upper bound on what get_console_output returns (the tail of the log)."),
    options.stopped_event_delay(15.0),
    options.reboot_timeout(60.0),
    cfg.FloatOpt("volume_probe_timeout", default=10.0, min=0.5,
                 help="Bound on probing an iSCSI portal and logging in before an attach."),
    cfg.FloatOpt("detach_timeout", default=30.0, min=1,
                 help="Seconds to wait for a guest to release a hot-detached volume."),
    options.call_timeout(30.0, deprecated_name="connect_timeout"),
    cfg.IntOpt("keepalive_interval", default=5, min=1,
               help="Seconds between keepalive probes on remote connections; a dead libvirtd "
               "is detected after interval x (count + 1) seconds."),
    cfg.IntOpt("keepalive_count", default=3, min=1, help="Unanswered keepalives before the "
               "connection counts as lost."),
]
