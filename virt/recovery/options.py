"""The `[recovery]` options and the options of one run."""

from __future__ import annotations

from dataclasses import dataclass

from oslo_config import cfg

from virt.config import register_group_opts

RECOVERY_OPTS = [
    cfg.StrOpt("fence_check_command", default="",
               help="Command that says whether a failed host is fenced: run with the host "
               "name as its last argument, exit 0 means fenced (powered off). Without it, "
               "the host must be marked fenced in the store or --confirm-fenced given."),
    cfg.IntOpt("fence_check_timeout", default=60, min=1,
               help="Seconds the fence check command may take; slower means not fenced."),
    cfg.StrOpt("volume_check", default="probe", choices=["probe", "none"],
               help="probe: log in to each volume's target (CHAP included) and read its size "
               "before recovering; none: trust the stored connection_info."),
    cfg.FloatOpt("volume_timeout", default=15.0, min=1,
                 help="Seconds a volume probe may take."),
    cfg.IntOpt("parallel", default=4, min=1, max=64,
               help="Instances recovered at once."),
    cfg.IntOpt("claim_lease_seconds", default=60, min=0,
               help="A recoverer renews its claims every lease/4 seconds. A claim of another "
               "recoverer that stays unrenewed for this long (watched on this host's clock) "
               "is taken over; its host must be fenced if it had got as far as spawning. "
               "Longer than any single spawn or attach can take. 0: never take over."),
    cfg.BoolOpt("require_instance_disk", default=False,
                help="Instance disks live on storage shared with the failed host: an instance "
                "booted from an image whose root disk is not found here is left unclaimed, "
                "named in the report (--rebuild-missing-disks rebuilds it from the image). "
                "Needs a driver that can say where a root disk is (libvirt)."),
    cfg.StrOpt("nova_connection", default="", secret=True,
               help="With --nova-db: the SQLAlchemy URL of Nova's cell database, password "
               "included (this file should be readable by root only). $VIRTKIT_NOVA_DB and "
               "nova_connection_file take precedence."),
    cfg.StrOpt("nova_connection_file", default="",
               help="With --nova-db: a file (mode 0600) whose first line is the URL of Nova's "
               "cell database; takes precedence over nova_connection."),
    cfg.StrOpt("nova_image_dir", default="",
               help="With --nova-db: where the images of Nova's instances are, by Glance id: "
               "Nova's image cache (<instances_path>/_base, files named sha1(image id)) or "
               "files named by the id. Empty: image_ref goes to the driver as it is."),
    cfg.BoolOpt("shared_storage", default=False, deprecated_for_removal=True,
                deprecated_reason="recovery never removes an instance's disks any more; "
                "the option has no effect",
                help="Ignored: a stale or half-spawned domain is always removed keeping its "
                "disks, and spawn reuses a valid existing root disk."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register the `[recovery]` group on `conf`."""
    register_group_opts(conf, "recovery", RECOVERY_OPTS)


@dataclass(frozen=True)
class RecoveryOptions:
    """What one run does: the command line's flags over the `[recovery]` options."""

    failed_host: str | None = None
    instances: tuple[str, ...] = ()
    resume_local: bool = False
    dry_run: bool = False
    parallel: int = 4
    confirm_fenced: bool = False
    allow_missing_volumes: bool = False
    volume_check: str = "probe"
    volume_timeout: float = 15.0
    fence_command: str = ""
    fence_timeout: float = 60.0
    claim_lease: float = 60.0
    require_instance_disk: bool = False
    rebuild_missing_disks: bool = False
