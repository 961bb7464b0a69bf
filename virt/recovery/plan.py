"""The plan of one instance's recovery: the journaled steps, in order, for what it needs.

Evacuate: refresh volumes -> re-home -> remove a stale domain -> spawn -> attach -> record
the power state. After a reboot (`--resume-local`) a shut-off domain still defined here is
powered on with its volumes put back, not rebuilt. No step ever deletes an instance's disks.
A failed spawn is cleaned up by the driver's spawn itself (`virt.lifecycle`); the plan only
removes a domain it finds here before spawning (stale, or half-made by a run that was killed).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from virt.driver import Capability, ComputeDriver
from virt.errors import (
    InstanceMoved,
    InstanceNotFound,
    VirtError,
    VolumeError,
    VolumeNotFound,
)
from virt.lifecycle import spawn_leftover
from virt.model import BlockDevice, Instance, PowerState, VolumeConnection
from virt.recovery.journal import Effect
from virt.recovery.options import RecoveryOptions
from virt.recovery.report import InstanceReport
from virt.recovery.sources import ROOT_DEVICES, Candidate, InstanceSource, VolumeRef
from virt.volume import connector_for, parse_glusterfs_volume, parse_iscsi_target

LOG = logging.getLogger(__name__)

#: A write to the instance source, on the journal's transaction (or None: its own).
SourceWrite = Callable[[sa.Connection | None], None]


#: Each protocol's connection_info check (the connector probes; this runs unprobed too).
_PARSERS: dict[str, Callable[[VolumeConnection], object]] = {
    "iscsi": parse_iscsi_target, "glusterfs": parse_glusterfs_volume}


@dataclass
class Step:
    """One journaled action. `run` does it, `undo` cleans up a half-done attempt.

    `run` may hand back a store write, committed together with the step's `done` entry.
    """

    name: str
    describe: str
    run: Callable[[], Effect | None]
    undo: Callable[[], None] | None = None
    always: bool = False  # read-only or idempotent: run again even when journaled done
    #: Idempotent and needed again while a later step is not done: run again on resume even
    #: when journaled done (unlike `always`, never in a dry run: it changes things).
    rerun: bool = False
    #: Journaled durably on both sides: `started` committed before it runs (a crash leaves
    #: it to undo, even for a recoverer taking the claim over) and `done` right after (a
    #: crash after it does not redo it). For the spawn: redoing it costs a boot.
    durable: bool = False


class Release(Exception):
    """Stop this instance before anything changed, giving its claim back."""


class Planner:
    """Builds the steps of one instance's recovery on this host."""

    def __init__(self, *, driver: ComputeDriver, source: InstanceSource, host: str, node: str,
                 source_host: str, options: RecoveryOptions, joined: bool) -> None:
        self.driver = driver
        self.source = source
        self.host = host
        self.node = node
        self.source_host = source_host
        self.options = options
        self.joined = joined

    def plan(self, candidate: Candidate, instance: Instance, devices: list[BlockDevice],
              item: InstanceReport, done: Mapping[str, str]) -> list[Step]:
        """The steps for this instance: after a reboot, a domain still defined here is
        started as it is (its disks untouched); otherwise it is spawned."""
        if not self.options.resume_local or "spawn" in done:
            return self._spawn_steps(candidate, instance, devices, item, done)
        state = self._local_state(instance)
        if state is None:
            return self._spawn_steps(candidate, instance, devices, item, done)
        if state is PowerState.RUNNING or not candidate.should_run:
            item.steps.append(f"defined here and {state.value}, as recorded: nothing to do")
            item.power_state = state.value
            return []
        if state not in (PowerState.SHUTDOWN, PowerState.CRASHED):
            raise Release(f"its domain here is {state.value}: left as it is (unpause or "
                          "resume it, or power it off, then run again)")
        return self._power_on_steps(candidate, instance, devices, item)

    def _refresh_step(self, candidate: Candidate, devices: list[BlockDevice],
                      item: InstanceReport) -> Step:
        def refresh() -> Effect | None:
            found, writes = self._refresh_volumes(candidate, item)
            devices.extend(found)
            return self.write(*writes) if writes else None

        return Step("volumes", f"refresh {len(candidate.volumes)} volume connection(s)",
                    refresh, always=True)

    def _power_on_steps(self, candidate: Candidate, instance: Instance,
                        devices: list[BlockDevice], item: InstanceReport) -> list[Step]:
        """Start the shut-off domain defined here (like Nova's resume_state_on_host_boot),
        each volume put back in its definition with the refreshed connection first."""
        steps = [self._refresh_step(candidate, devices, item)]
        steps += [self._reattach_step(instance, volume, devices) for volume in candidate.volumes]
        steps.append(Step("power-on", "power on its existing domain (disks kept)",
                          lambda: self.driver.power_on(instance=instance,
                                                       block_devices=list(devices))))
        steps.append(Step("power", "record the power state",
                          lambda: self._record_power(candidate, instance, item)))
        return steps

    def _reattach_step(self, instance: Instance, volume: VolumeRef,
                       devices: list[BlockDevice]) -> Step:
        """Detach the volume from the stopped domain's definition if it is there, then attach
        it with the refreshed connection: there exactly once, never with stale details.
        Idempotent, so a crash needs no undo. A volume missing (and allowed to be) is only
        detached: the domain would not start with it."""
        def reattach() -> None:
            bdm = next((d for d in devices if d.device_name == volume.device), None)
            stored = bdm or _stored_device(volume)
            if stored is not None:
                try:
                    self.driver.detach_volume(instance=instance, block_device=stored)
                except VolumeNotFound:
                    pass
            if bdm is not None:
                self.driver.attach_volume(instance=instance, block_device=bdm)

        return Step(f"reattach:{volume.device}",
                    f"re-attach volume at {volume.mountpoint} to the stopped domain", reattach)

    def _spawn_steps(self, candidate: Candidate, instance: Instance, devices: list[BlockDevice],
                     item: InstanceReport, done: Mapping[str, str]) -> list[Step]:
        if done.get("spawn") != "done":  # nothing changes for one that cannot be spawned
            problem = candidate.problem or (
                None if candidate.image else "it has no image to spawn from")
            if problem:
                raise Release(f"{problem} (left unclaimed)")
        at_spawn, hot = self._split_volumes(candidate)
        steps = [self._refresh_step(candidate, devices, item)]
        if self.options.require_instance_disk and candidate.image is not None and not at_spawn:
            steps.insert(0, Step("disk", "check its root disk is here",
                                 lambda: self._check_disk(instance, item), always=True))
        if not self.options.resume_local:
            steps.append(Step("rehome", f"re-home to {self.host}",
                              lambda: self._rehome(candidate)))
        # Until the spawn is done this runs on every attempt: a run killed during its spawn
        # left a half-made domain (its rollback never ran); a spawn that failed left none.
        steps.append(Step("remove-stale", "remove any stale domain of it here",
                          lambda: self._remove_domain(instance),
                          rerun=done.get("spawn") != "done"))
        power = "running" if candidate.should_run else "stopped"
        steps.append(Step("spawn", f"spawn ({power}) with {len(at_spawn)} volume(s) at boot",
                          lambda: self._spawn(candidate, instance, devices, at_spawn, item),
                          durable=True))
        for volume in hot:
            steps.append(self._attach_step(instance, volume, devices))
        steps.append(Step("power", "record the power state",
                          lambda: self._record_power(candidate, instance, item)))
        return steps

    def _spawn(self, candidate: Candidate, instance: Instance, devices: list[BlockDevice],
               at_spawn: list[VolumeRef], item: InstanceReport) -> None:
        """Spawn with the volumes that go in at boot. A failure is the driver's to clean up
        (nothing is undone here); the report says if it left the domain behind. The image
        is `instance.image` (the driver refuses an instance without one)."""
        boot = [d for d in devices if d.device_name in {v.device for v in at_spawn}]
        LOG.debug("spawning %s with %s", instance.uuid, sorted(d.device_name for d in devices))
        try:
            self.driver.spawn(instance=instance, block_devices=boot,
                              power_on=candidate.should_run)
        except Exception:
            left = spawn_leftover(self.driver, instance)
            if left:
                item.steps.append(f"spawn failed and {left}")
            raise

    def _check_disk(self, instance: Instance, item: InstanceReport) -> None:
        """Release an instance whose root disk should be on shared storage and is not
        (a wrong mount, a deleted directory), unless the operator allows rebuilding it."""
        if not self.driver.supports(Capability.INSTANCE_DISK_FILE):
            return  # refused at construction when the option asks for the check
        path = self.driver.instance_disk_path(instance=instance)
        if os.path.exists(path):
            item.disk = f"present {path}"
            return
        if not self.options.rebuild_missing_disks:
            item.disk = f"missing {path}"
            raise Release(f"its root disk {path} is missing (is the shared instance storage "
                          "mounted here?); left unclaimed; --rebuild-missing-disks rebuilds "
                          "it from its image, losing what was on it")
        item.disk = f"rebuilt {path}"
        item.steps.append(f"root disk {path} missing: rebuilt from the image "
                          "(--rebuild-missing-disks)")

    def _split_volumes(self, candidate: Candidate) -> tuple[list[VolumeRef], list[VolumeRef]]:
        """Volumes given to spawn (all for a stopped instance; the root one) and hot-attached."""
        if not candidate.should_run:
            return list(candidate.volumes), []
        at_spawn = [v for v in candidate.volumes if v.device in ROOT_DEVICES]
        return at_spawn, [v for v in candidate.volumes if v.device not in ROOT_DEVICES]

    def _attach_step(self, instance: Instance, volume: VolumeRef,
                     devices: list[BlockDevice]) -> Step:
        def device() -> BlockDevice | None:
            return next((d for d in devices if d.device_name == volume.device), None)

        def attach() -> None:
            bdm = device()
            if bdm is not None:  # None: missing and allowed to be
                self.driver.attach_volume(instance=instance, block_device=bdm)

        def undo() -> None:
            bdm = device()
            if bdm is None:
                return
            try:
                self.driver.detach_volume(instance=instance, block_device=bdm)
            except (VolumeError, InstanceNotFound) as exc:
                LOG.debug("undo attach of %s: %s", volume.device, exc)

        return Step(f"attach:{volume.device}", f"attach volume at {volume.mountpoint}",
                    attach, undo=undo)

    def _rehome(self, candidate: Candidate) -> Effect | None:
        def write(conn: sa.Connection | None) -> None:
            self.source.rehome(candidate.uuid, host=self.host, node=self.node,
                               from_host=self.source_host, conn=conn)

        try:
            return self.write(write)
        except InstanceMoved as moved:  # before anything changed here
            raise Release(moved.message) from None

    def write(self, *writes: SourceWrite) -> Effect | None:
        """Source writes: handed back to commit with the journal when the source is the
        journal's store, else done now (a Nova database is another database)."""
        if not self.joined:
            for write in writes:
                write(None)
            return None

        def joined(conn: sa.Connection) -> None:
            for write in writes:
                write(conn)

        return joined

    def _refresh_volumes(self, candidate: Candidate, item: InstanceReport
                         ) -> tuple[list[BlockDevice], list[SourceWrite]]:
        """Check every volume from this host (re-login with CHAP); missing ones release.

        Returns the devices and the source writes that refresh their connection_info.
        """
        devices: list[BlockDevice] = []
        writes: list[SourceWrite] = []
        problems: list[str] = []
        for volume, vreport in zip(candidate.volumes, item.volumes, strict=True):
            try:
                conn = VolumeConnection.from_connection_info(dict(volume.connection_info))
                connector = connector_for(conn)
                parse = _PARSERS.get(conn.driver_volume_type.lower())
                if parse is not None:
                    parse(conn)  # malformed connection_info fails even unprobed
                if self.options.volume_check == "probe":
                    found = connector.probe(conn, timeout=self.options.volume_timeout)
                    vreport.size_bytes, vreport.path = found.size_bytes, found.path
                if not self.options.dry_run:
                    writes.append(functools.partial(
                        self._refresh_write, candidate.uuid, volume, conn.to_connection_info()))
                devices.append(BlockDevice(connection=conn, mountpoint=volume.mountpoint,
                                           volume_id=volume.volume_id, disk_bus=volume.disk_bus))
                # Only a probe shows a volume reachable; `none` validated its record only.
                vreport.status = "reachable" if self.options.volume_check == "probe" else (
                    "not checked")
            except VirtError as exc:
                vreport.status, vreport.error = "missing", str(exc)
                problems.append(f"volume {volume.volume_id or volume.mountpoint}: {exc}")
        if problems and not self.options.allow_missing_volumes:
            raise Release("; ".join(problems) + " (left unclaimed; --allow-missing-volumes "
                          "recovers it without them)")
        return devices, writes

    def _refresh_write(self, uuid: str, volume: VolumeRef, info: dict[str, Any],
                       db: sa.Connection | None) -> None:
        self.source.refresh_volume(uuid, volume, info, conn=db)

    def _remove_domain(self, instance: Instance) -> None:
        """Destroy a domain of this instance here, never its disks: they may be the only
        copy of its data (shared storage, or this host's own after a reboot). The spawn
        that follows reuses a valid root disk it finds."""
        if self.driver.instance_exists(instance=instance):
            self.driver.destroy(instance=instance, destroy_disks=False)

    def _local_state(self, instance: Instance) -> PowerState | None:
        """The power state of its domain here, None if there is none (an unreachable engine
        raises HypervisorUnavailable, like every driver call: `virt.lifecycle`)."""
        if not self.driver.instance_exists(instance=instance):
            return None
        return self.driver.get_info(instance=instance).state

    def _record_power(self, candidate: Candidate, instance: Instance,
                      item: InstanceReport) -> Effect | None:
        state = self.driver.get_info(instance=instance).state  # raises if unreachable
        item.power_state = state.value
        for vreport in item.volumes:
            if vreport.status in ("reachable", "not checked"):  # the attach went through
                vreport.status = "attached"
        return self.write(lambda conn: self.source.record_result(
            candidate.uuid, power_state=state, conn=conn))


def _stored_device(volume: VolumeRef) -> BlockDevice | None:
    """The volume as the source records it (to detach it), None if that is unusable."""
    try:
        conn = VolumeConnection.from_connection_info(dict(volume.connection_info))
    except VirtError:
        return None
    return BlockDevice(connection=conn, mountpoint=volume.mountpoint,
                       volume_id=volume.volume_id, disk_bus=volume.disk_bus)
