"""The `[docker]` option group."""

from __future__ import annotations

from oslo_config import cfg

from virt.driver import options

GROUP = "docker"

#: Seconds a STOPPED event is held back: a `docker restart` (or a reboot) reports `die` and
#: then `start` within well under a second, so this is only its margin on a loaded host.
STOPPED_EVENT_DELAY = 5.0

OPTS: list[cfg.Opt] = [
    cfg.StrOpt(
        "base_url",
        default="unix:///var/run/docker.sock",
        help="Where dockerd listens: unix:///path/to/docker.sock or tcp://host:port.",
    ),
    cfg.StrOpt(
        "api_version",
        default=None,
        help="Docker Engine API version to speak (e.g. 1.41). Unset: negotiate with the daemon. "
        "Versions older than 1.30 are refused.",
    ),
    cfg.StrOpt(
        "network",
        default="bridge",
        help="Docker network every container joins.",
    ),
    # Shared by name with the other drivers (virt.driver.options).
    options.reboot_timeout(default=10.0, deprecated_name="stop_timeout"),
    options.call_timeout(default=30.0),
    options.stopped_event_delay(default=STOPPED_EVENT_DELAY),
    cfg.FloatOpt(
        "start_check_seconds",
        default=0.0,
        min=0.0,
        help="After starting a container, spawn waits up to this many seconds (docker's "
        "own 'wait', returning as soon as the container stops) for it to exit; a container "
        "that stops within it fails the spawn with its exit code and output. 0 (the "
        "default) checks with one inspect only: a command that exits a moment later is a "
        "guest that crashed after a successful start, and reads CRASHED.",
    ),
    cfg.BoolOpt(
        "pull_missing",
        default=True,
        help="Pull an image that is not present locally. Off: a missing image is an error.",
    ),
    cfg.FloatOpt(
        "pull_timeout",
        default=600.0,
        min=1.0,
        help="Upper bound in seconds on pulling one image.",
    ),
    cfg.FloatOpt(
        "snapshot_timeout",
        default=600.0,
        min=1.0,
        help="Upper bound in seconds on committing a container to a snapshot image (the "
        "container is paused meanwhile). dockerd cannot cancel a commit: one that outlasts "
        "it may still add the image later, which the error says.",
    ),
    cfg.BoolOpt(
        "tty",
        default=True,
        help="Give containers a terminal and an open stdin (like 'docker run -it'), so that "
        "images whose command is a shell keep running.",
    ),
    cfg.BoolOpt(
        "init",
        default=True,
        help="Run docker-init as PID 1 so that signals reach the image's command and zombies "
        "are reaped.",
    ),
    cfg.IntOpt(
        "console_tail_lines",
        default=2000,
        min=1,
        help="At most this many log lines are read for the console output.",
    ),
    cfg.FloatOpt(
        "event_window",
        default=5.0,
        min=0.5,
        help="The event watcher reads the daemon's event stream in windows of this many "
        "seconds, so that a stream that hangs (e.g. after a dockerd restart) is noticed.",
    ),
    cfg.FloatOpt(
        "resync_interval",
        default=60.0,
        min=1.0,
        help="Seconds between full state resyncs of the event watcher (missed events heal).",
    ),
]
