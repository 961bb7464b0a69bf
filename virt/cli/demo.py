"""`virtkit demo`: a whole lifecycle on the embedded default driver, narrated."""

from __future__ import annotations

import argparse
import contextlib
import logging
import secrets
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from virt.cli.context import Context
from virt.config import build_conf
from virt.errors import VirtError
from virt.model import ImageRef

if TYPE_CHECKING:
    from virt.compute import ComputeService

LOG = logging.getLogger(__name__)

# The volume the demo attaches: Nova's iSCSI connection_info. The fake driver only checks
# its shape; the CHAP password shows that `show` masks secrets.
DEMO_VOLUME = {
    "driver_volume_type": "iscsi",
    "serial": "demo-volume-1",
    "data": {
        "target_portal": "127.0.0.1:3260",
        "target_iqn": "iqn.2010-10.org.virtkit:demo-volume-1",
        "target_lun": 1,
        "auth_method": "CHAP",
        "auth_username": "demo",
        "auth_password": "demo-chap-password",
    },
}


@contextlib.contextmanager
def _demo_service(ctx: Context) -> Iterator[ComputeService]:
    """The fake driver in a throwaway state directory, unless `--config` is on the demo's own
    command line: `$VIRTKIT_CONFIG` alone never points the demo at a real store and driver."""
    from virt.compute import ComputeService

    if ctx.args.config:
        with ComputeService(ctx.conf) as service:
            yield service
        return
    with tempfile.TemporaryDirectory(prefix="virtkit-demo-") as state:
        conf = build_conf(overrides={"state_path": state, "compute_driver": "fake"})
        with ComputeService(conf) as service:
            yield service


def _clean_up(service: ComputeService, name: str) -> None:
    """Delete the demo's instance if it is still recorded (an interrupted or failed demo)."""
    try:
        record = service.store.find_instance(name)
    except VirtError:
        return  # never recorded, or already deleted
    try:
        service.delete(record.uuid)
    except BaseException as exc:  # report, and let the original outcome stand
        LOG.warning("demo: could not delete its instance %s (%s): %s; delete it with "
                    "`virtkit delete %s`", name, record.uuid, exc, record.uuid)
    else:
        LOG.warning("demo stopped early: deleted its instance %s", name)


def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    say = ctx.out.message
    steps: list[dict[str, str]] = []

    def step(action: str, detail: str) -> None:
        steps.append({"action": action, "detail": detail})
        say(f"- {action}: {detail}")

    with _demo_service(ctx) as service:
        name = f"demo-{secrets.token_hex(3)}"
        try:
            _lifecycle(ctx, args, service, name, step)
        finally:
            _clean_up(service, name)  # also on Ctrl-C and a closed pipe (SIGPIPE)
    say("demo finished: every step succeeded")
    if ctx.out.json:
        ctx.out.data({"ok": True, "instance": name, "steps": steps})
    return 0


def _lifecycle(
    ctx: Context,
    args: argparse.Namespace,
    service: ComputeService,
    name: str,
    step: Callable[[str, str], None],
) -> None:
    where = ctx.args.config or "a throwaway state directory"
    ctx.out.message(f"virtkit demo on driver '{service.driver.name}', host '{service.host}', "
                    f"state in {where}")
    flavor = service.flavor("m1.tiny")
    with ctx.out.progress(f"Booting {name}"):
        record = service.boot(name, image=ImageRef(args.image), flavor=flavor)
    step("boot", f"{name} ({record.uuid}) is {record.vm_state}, "
                 f"{record.power_state.value}, flavor {flavor.name}")
    names = [r.name for r in service.list_instances()]
    step("list", f"{len(names)} instance(s): {', '.join(names)}")
    record, result = service.stop(name, timeout=10)
    step("stop", f"{record.vm_state}, {record.power_state.value} "
                 f"({'forced' if result.forced else 'clean'})")
    record = service.start(name)
    step("start", f"{record.vm_state}, {record.power_state.value}")
    _, image = service.snapshot(name, f"{name}-snap")
    step("snapshot", f"{name}-snap saved as image {image.ref}")
    bdm = service.attach_volume(name, DEMO_VOLUME, "/dev/vdb")
    masked = bdm.as_dict(masked=True)["connection_info"]["data"]["auth_password"]
    step("volume attach", f"{bdm.volume_id} at {bdm.mountpoint} "
                          f"(CHAP password stored, shown as {masked})")
    bdm = service.detach_volume(name, "/dev/vdb")
    step("volume detach", f"{bdm.volume_id} from {bdm.mountpoint}")
    record = service.delete(name)
    step("delete", f"{name} is {record.vm_state}")
    history = [e.event for e in service.store.list_events(record.uuid)]
    step("events", " → ".join(history))
