"""Recover a failed host's instances here (or this host's own after a reboot).

Per instance: claim → refresh volumes → re-home → remove a stale domain → spawn → attach →
record the power state, each step journaled `started`/`done` so a killed run resumes where it
stopped (a step found `started` but not `done` is undone first). The volumes, the image
and (optionally) the root disk are checked before anything changes, so an instance that
cannot be finished is released untouched. No step ever deletes an instance's disks; after a
reboot (`--resume-local`) a shut-off domain still defined here is powered on, not rebuilt.
`--dry-run` walks the same steps and only describes the ones that change something.

Journal writes are batched (see `virt.recovery_journal`): one transaction before each step
that must be undone after a crash, one at the end. A claim held by another recoverer is
watched; if its heartbeat stops for a whole lease it is taken over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from oslo_config import cfg

from virt.config import register_group_opts
from virt.driver import ComputeDriver
from virt.errors import (
    EXIT_FAILED,
    EXIT_OK,
    HypervisorUnavailable,
    InstanceMoved,
    InstanceNotFound,
    InvalidRequest,
    NotFenced,
    VirtError,
    VolumeError,
    VolumeNotFound,
)
from virt.model import BlockDevice, Instance, PowerState, VolumeConnection
from virt.recovery_fence import check_fenced
from virt.recovery_journal import (
    Claim,
    ClaimLost,
    ClaimRefused,
    ClaimState,
    Effect,
    Holder,
    RecoveryJournal,
)
from virt.recovery_source import ROOT_DEVICES, Candidate, InstanceSource, VolumeRef
from virt.volume import connector_for, parse_iscsi_target

LOG = logging.getLogger(__name__)

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
    register_group_opts(conf, "recovery", RECOVERY_OPTS)


class Outcome:
    RECOVERED = "recovered"
    PLANNED = "planned"
    SKIPPED = "skipped"
    RELEASED = "released"
    FAILED = "failed"


@dataclass
class VolumeReport:
    volume_id: str | None
    mountpoint: str
    status: str = "pending"
    size_bytes: int | None = None
    path: str | None = None
    error: str | None = None


@dataclass
class InstanceReport:
    uuid: str
    name: str
    outcome: str = Outcome.PLANNED
    duration_s: float = 0.0
    power_state: str | None = None
    volumes: list[VolumeReport] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    error: str | None = None
    resumed: bool = False
    disk: str | None = None  # its root disk here, when checked: "present|missing|rebuilt PATH"


@dataclass
class RecoveryReport:
    run_id: str
    mode: str
    failed_host: str | None
    target_host: str
    source: str
    dry_run: bool
    fenced: str | None = None
    instances: list[InstanceReport] = field(default_factory=list)
    duration_s: float = 0.0

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.instances:
            counts[item.outcome] = counts.get(item.outcome, 0) + 1
        return counts

    @property
    def exit_code(self) -> int:
        bad = (Outcome.FAILED, Outcome.RELEASED)
        return EXIT_FAILED if any(i.outcome in bad for i in self.instances) else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = self.counts()
        data["exit_code"] = self.exit_code
        return data


@dataclass(frozen=True)
class RecoveryOptions:
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


@dataclass
class _Step:
    """One journaled action. `run` does it, `undo` cleans up a half-done attempt.

    `run` may hand back a store write, committed together with the step's `done` entry.
    """

    name: str
    describe: str
    run: Callable[[], Effect | None]
    undo: Callable[[], None] | None = None
    always: bool = False  # read-only or idempotent: run again even when journaled done
    #: Journaled durably on both sides: `started` committed before it runs (a crash leaves
    #: it to undo, even for a recoverer taking the claim over) and `done` right after (a
    #: crash after it does not redo it). For the spawn: undoing or redoing it costs a boot.
    durable: bool = False


class _Release(Exception):
    """Stop this instance before anything changed, giving its claim back."""


class Recoverer:
    """Runs one recovery: plans, claims, executes and reports."""

    def __init__(
        self,
        *,
        driver: ComputeDriver,
        source: InstanceSource,
        journal: RecoveryJournal,
        host: str,
        options: RecoveryOptions,
        node: str | None = None,
        host_status: Callable[[str], str | None] | None = None,
        progress: Callable[[InstanceReport, int, int], None] | None = None,
    ) -> None:
        if options.resume_local == bool(options.failed_host):
            raise InvalidRequest("give either --failed-host HOST or --resume-local")
        if options.failed_host == host:
            raise InvalidRequest(
                f"the failed host {host!r} is this host",
                hint="use --resume-local to restart this host's own instances")
        if options.parallel < 1:
            raise InvalidRequest("--parallel must be at least 1")
        if options.require_instance_disk and (
                type(driver).instance_disk_path is ComputeDriver.instance_disk_path):
            raise InvalidRequest(
                f"[recovery] require_instance_disk: the {driver.name} driver cannot say where "
                "an instance's disk is", hint="unset it for this driver")
        self.driver = driver
        self.source = source
        self.journal = journal
        self.host = host
        self.node = node or host
        self.options = options
        self.host_status = host_status
        self.progress = progress
        self._done = 0
        self._lock = threading.Lock()
        self._contested: dict[str, Holder | None] = {}  # refused for now: watch, maybe take over
        self._joined = source.joins(journal.store)

    @property
    def source_host(self) -> str:
        return self.options.failed_host or self.host

    def run(self) -> RecoveryReport:
        """Check fencing, then recover every candidate; per-instance errors land in the report."""
        started = time.monotonic()
        report = RecoveryReport(
            run_id=self.journal.run_id,
            mode="resume-local" if self.options.resume_local else "evacuate",
            failed_host=self.options.failed_host, target_host=self.host,
            source=self.source.description, dry_run=self.options.dry_run,
        )
        if self.options.failed_host:
            report.fenced = check_fenced(
                self.options.failed_host, confirm=self.options.confirm_fenced,
                command=self.options.fence_command, timeout=self.options.fence_timeout,
                host_status=self.host_status, dry_run=self.options.dry_run)
        candidates = self.candidates()
        total = len(candidates)
        workers = max(1, min(self.options.parallel, total))
        with self._heartbeat(), ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="recover") as pool:
            results = list(pool.map(lambda c: self._recover_counted(c, total), candidates))
            if self._contested and self.options.claim_lease > 0 and not self.options.dry_run:
                settled = self._settle_contested({c.uuid: c for c in candidates}, pool)
                results = [settled.get(item.uuid, item) for item in results]
        report.instances = results
        report.duration_s = round(time.monotonic() - started, 3)
        return report

    @contextlib.contextmanager
    def _heartbeat(self) -> Iterator[None]:
        """Renew this run's claims every lease/4 seconds while the run lasts."""
        if self.options.dry_run or self.options.claim_lease <= 0:
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.options.claim_lease / 4):
                try:
                    self.journal.heartbeat()
                except VirtError as exc:  # flushes check ownership; this only keeps it
                    LOG.warning("claim heartbeat failed: %s", exc)

        thread = threading.Thread(target=beat, name="recover-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _settle_contested(self, by_uuid: dict[str, Candidate],
                          pool: ThreadPoolExecutor) -> dict[str, InstanceReport]:
        """Watch claims other recoverers hold until each is done, freed, or stale for a lease.

        Staleness is judged on this host's monotonic clock: the claim row must stay exactly
        the same (no heartbeat, no progress) for a whole lease.
        """
        lease = self.options.claim_lease
        settled: dict[str, InstanceReport] = {}
        watch = {uuid: (holder, time.monotonic()) for uuid, holder in self._contested.items()}
        self._contested.clear()
        while watch:
            time.sleep(lease / 4)
            retry: list[tuple[Candidate, Holder | None]] = []
            for uuid, (seen, since) in list(watch.items()):
                row = self.journal.holder(uuid)
                current = Holder.of(row) if row is not None else None
                if row is not None and row["state"] == ClaimState.DONE:
                    del watch[uuid]
                    settled[uuid] = self._skipped(by_uuid[uuid], f"recovered by {row['actor']}")
                elif current is None or row is None or row["state"] == ClaimState.FAILED:
                    del watch[uuid]
                    retry.append((by_uuid[uuid], None))  # given back: claim it normally
                elif current != seen:
                    watch[uuid] = (current, time.monotonic())
                elif time.monotonic() - since >= lease:
                    del watch[uuid]
                    retry.append((by_uuid[uuid], seen))
            for item in pool.map(lambda job: self.recover(job[0], take_over=job[1]), retry):
                settled[item.uuid] = item
            for uuid, holder in self._contested.items():
                settled.pop(uuid, None)
                watch[uuid] = (holder, time.monotonic())
            self._contested.clear()
        return settled

    @staticmethod
    def _skipped(candidate: Candidate, reason: str) -> InstanceReport:
        item = InstanceReport(candidate.uuid, candidate.name, outcome=Outcome.SKIPPED)
        item.volumes = [VolumeReport(v.volume_id, v.mountpoint) for v in candidate.volumes]
        item.error = reason
        return item

    def candidates(self) -> list[Candidate]:
        """The instances of the source host, plus those this host had claimed and not finished."""
        wanted = tuple(self.options.instances)
        found = {c.uuid: c for c in self.source.candidates(self.source_host, wanted)}
        if not self.options.resume_local:
            # Unfinished claims of any recoverer: ours to resume, others' to watch.
            for row in self.journal.pending_claims(self.source_host, any_target=True):
                uuid = row["instance_uuid"]
                if uuid not in found and (not wanted or uuid in wanted):
                    try:
                        found[uuid] = self.source.get(uuid)
                    except InstanceNotFound:
                        continue
        missing = [u for u in wanted if u not in found]
        if missing:
            raise InvalidRequest(
                f"instance(s) {', '.join(missing)} are not on host {self.source_host}")
        return list(found.values())

    def _recover_counted(self, candidate: Candidate, total: int) -> InstanceReport:
        item = self.recover(candidate)
        with self._lock:
            self._done += 1
            done = self._done
        if self.progress:
            self.progress(item, done, total)
        return item

    def recover(self, candidate: Candidate, *, take_over: Holder | None = None) -> InstanceReport:
        """Recover one instance; never raises."""
        started = time.monotonic()
        item = InstanceReport(candidate.uuid, candidate.name)
        item.volumes = [VolumeReport(v.volume_id, v.mountpoint) for v in candidate.volumes]
        claim: Claim | None = None
        try:
            if self.options.dry_run:
                item.steps.append(f"claim {candidate.name} from {self.source_host}")
                self._execute(candidate, None, item)
                item.outcome = Outcome.PLANNED
            else:
                if take_over is not None:
                    self._check_takeover(take_over)
                taken = self.journal.claim(candidate.uuid, self.source_host,
                                           renew_done=self.options.resume_local,
                                           take_over=take_over)
                if isinstance(taken, ClaimRefused):
                    item.outcome = Outcome.SKIPPED
                    item.error = taken.reason
                    if taken.holder is not None or taken.busy:
                        with self._lock:
                            self._contested[candidate.uuid] = taken.holder
                    return item
                claim = taken
                item.resumed = claim.resumed
                if claim.taken_over_from:
                    item.steps.append(f"took the claim over from {claim.taken_over_from}")
                self._execute(candidate, claim, item)
                item.outcome = Outcome.RECOVERED
                self.journal.note(claim, "recovered", "done", item.power_state)
                self.journal.finish(claim, ClaimState.DONE)
        except _Release as why:
            item.outcome, item.error = Outcome.RELEASED, str(why)
            if claim is not None:
                self.journal.release(claim, str(why))
        except ClaimLost as lost:
            item.outcome, item.error = Outcome.FAILED, str(lost)
            LOG.warning("recovery of %s stopped: %s", candidate.uuid, lost)
        except Exception as exc:  # one instance's failure never stops the run
            item.outcome, item.error = Outcome.FAILED, _describe(exc)
            LOG.warning("recovery of %s failed: %s", candidate.uuid, item.error)
            if claim is not None:
                self._record_failure(candidate, claim, item.error)
        finally:
            item.duration_s = round(time.monotonic() - started, 3)
        return item

    def _check_takeover(self, holder: Holder) -> None:
        """A recoverer that got as far as spawning may have left the instance running on its
        own host: taking over then needs that host fenced, like the failed host."""
        steps = self.journal.claim_steps(holder.claim_id)
        if not any(s == "spawn" or s.startswith("attach:") for s in steps):
            return
        try:
            check_fenced(holder.target_host, command=self.options.fence_command,
                         timeout=self.options.fence_timeout, host_status=self.host_status)
        except NotFenced as exc:
            raise _Release(
                f"claimed by {holder.actor}, whose lease expired after it started spawning "
                f"on {holder.target_host}; not taken over: {exc}") from None

    def _record_failure(self, candidate: Candidate, claim: Claim, error: str) -> None:
        try:
            self.journal.finish(claim, ClaimState.FAILED, error)
            self.source.record_result(candidate.uuid, power_state=None, running=False,
                                      fault=f"recovery failed: {error}")
        except ClaimLost as exc:
            LOG.warning("not recording the failure of %s: %s", candidate.uuid, exc)
        except Exception as exc:  # the report still carries the original error
            LOG.warning("could not record the failure of %s: %s", candidate.uuid, _describe(exc))

    # -- the steps --------------------------------------------------------------------------

    def _execute(self, candidate: Candidate, claim: Claim | None, item: InstanceReport) -> None:
        instance = candidate.instance(self.host)
        done = claim.steps if claim else {}
        devices: list[BlockDevice] = []
        steps = self._plan(candidate, instance, devices, item, done)
        spawned_here = False  # the domain here is this run's: no earlier attach is on it
        for step in steps:
            status = done.get(step.name)
            if self.options.dry_run:
                item.steps.append(step.describe)
                if step.always:
                    step.run()
                continue
            assert claim is not None
            if status == "done" and not step.always:
                item.steps.append(f"{step.describe} (done in an earlier run)")
                continue
            if step.undo and (status in ("started", "failed") or (
                    status is None and claim.resumed and not spawned_here)):
                # A step with no entry in a resumed claim may still have happened: an
                # attach's entries wait in the buffer for the claim's end, and on SQLite with
                # synchronous=NORMAL a power cut can lose the last committed transactions,
                # write-ahead entries included (see docs/recovery.md, "Power cuts").
                # Undoing is harmless when it did not happen.
                step.undo()
            if step.durable:  # write-ahead: a crash from here on leaves something to undo
                self.journal.record(claim, step.name, "started")
            else:
                self.journal.note(claim, step.name, "started")
            try:
                effect = step.run()
            except _Release:
                raise
            except Exception as exc:
                self.journal.note(claim, step.name, "failed", _describe(exc))
                raise
            self.journal.note(claim, step.name, "done", effect=effect)
            if step.durable:
                self.journal.flush(claim)
            item.steps.append(step.describe)
            spawned_here = spawned_here or step.name == "spawn"

    def _plan(self, candidate: Candidate, instance: Instance, devices: list[BlockDevice],
              item: InstanceReport, done: Mapping[str, str]) -> list[_Step]:
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
            raise _Release(f"its domain here is {state.value}: left as it is (unpause or "
                           "resume it, or power it off, then run again)")
        return self._power_on_steps(candidate, instance, devices, item)

    def _refresh_step(self, candidate: Candidate, devices: list[BlockDevice],
                      item: InstanceReport) -> _Step:
        def refresh() -> Effect | None:
            found, writes = self._refresh_volumes(candidate, item)
            devices.extend(found)
            return self._write(*writes) if writes else None

        return _Step("volumes", f"refresh {len(candidate.volumes)} volume connection(s)",
                     refresh, always=True)

    def _power_on_steps(self, candidate: Candidate, instance: Instance,
                        devices: list[BlockDevice], item: InstanceReport) -> list[_Step]:
        """Start the shut-off domain defined here (like Nova's resume_state_on_host_boot),
        each volume put back in its definition with the refreshed connection first."""
        steps = [self._refresh_step(candidate, devices, item)]
        steps += [self._reattach_step(instance, volume, devices) for volume in candidate.volumes]
        steps.append(_Step("power-on", "power on its existing domain (disks kept)",
                           lambda: self.driver.power_on(instance=instance,
                                                        block_devices=list(devices))))
        steps.append(_Step("power", "record the power state",
                           lambda: self._record_power(candidate, instance, item)))
        return steps

    def _reattach_step(self, instance: Instance, volume: VolumeRef,
                       devices: list[BlockDevice]) -> _Step:
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

        return _Step(f"reattach:{volume.device}",
                     f"re-attach volume at {volume.mountpoint} to the stopped domain", reattach)

    def _spawn_steps(self, candidate: Candidate, instance: Instance, devices: list[BlockDevice],
                     item: InstanceReport, done: Mapping[str, str]) -> list[_Step]:
        if done.get("spawn") != "done":  # nothing changes for one that cannot be spawned
            problem = candidate.problem or (
                None if candidate.image else "it has no image to spawn from")
            if problem:
                raise _Release(f"{problem} (left unclaimed)")
        at_spawn, hot = self._split_volumes(candidate)
        steps = [self._refresh_step(candidate, devices, item)]
        if self.options.require_instance_disk and candidate.image is not None and not at_spawn:
            steps.insert(0, _Step("disk", "check its root disk is here",
                                  lambda: self._check_disk(instance, item), always=True))
        if not self.options.resume_local:
            steps.append(_Step("rehome", f"re-home to {self.host}",
                               lambda: self._rehome(candidate)))
        steps.append(_Step("remove-stale", "remove any stale domain of it here",
                           lambda: self._remove_domain(instance)))

        def spawn() -> None:
            names = {d.device_name for d in devices}
            boot = [d for d in devices if d.device_name in {v.device for v in at_spawn}]
            LOG.debug("spawning %s with %s", instance.uuid, sorted(names))
            image = candidate.image
            if image is None:
                raise InvalidRequest(f"instance {candidate.uuid} has no image to spawn from")
            self.driver.spawn(instance=instance, image=image, block_devices=boot,
                              power_on=candidate.should_run)

        power = "running" if candidate.should_run else "stopped"
        steps.append(_Step("spawn", f"spawn ({power}) with {len(at_spawn)} volume(s) at boot",
                           spawn, undo=lambda: self._remove_domain(instance), durable=True))
        for volume in hot:
            steps.append(self._attach_step(instance, volume, devices))
        steps.append(_Step("power", "record the power state",
                           lambda: self._record_power(candidate, instance, item)))
        return steps

    def _check_disk(self, instance: Instance, item: InstanceReport) -> None:
        """Release an instance whose root disk should be on shared storage and is not
        (a wrong mount, a deleted directory), unless the operator allows rebuilding it."""
        path = self.driver.instance_disk_path(instance=instance)
        if path is None:  # refused at construction: the driver keeps no disk file
            return
        if os.path.exists(path):
            item.disk = f"present {path}"
            return
        if not self.options.rebuild_missing_disks:
            item.disk = f"missing {path}"
            raise _Release(f"its root disk {path} is missing (is the shared instance storage "
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
                     devices: list[BlockDevice]) -> _Step:
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

        return _Step(f"attach:{volume.device}", f"attach volume at {volume.mountpoint}",
                     attach, undo=undo)

    def _rehome(self, candidate: Candidate) -> Effect | None:
        def write(conn: sa.Connection | None) -> None:
            self.source.rehome(candidate.uuid, host=self.host, node=self.node,
                               from_host=self.source_host, conn=conn)

        try:
            return self._write(write)
        except InstanceMoved as moved:  # before anything changed here
            raise _Release(moved.message) from None

    def _write(self, *writes: Callable[[sa.Connection | None], None]) -> Effect | None:
        """Source writes: handed back to commit with the journal when the source is the
        journal's store, else done now (a Nova database is another database)."""
        if not self._joined:
            for write in writes:
                write(None)
            return None

        def joined(conn: sa.Connection) -> None:
            for write in writes:
                write(conn)

        return joined

    def _refresh_volumes(self, candidate: Candidate, item: InstanceReport
                         ) -> tuple[list[BlockDevice], list[Callable[[sa.Connection | None], None]]]:
        """Check every volume from this host (re-login with CHAP); missing ones release.

        Returns the devices and the source writes that refresh their connection_info.
        """
        devices: list[BlockDevice] = []
        writes: list[Callable[[sa.Connection | None], None]] = []
        problems: list[str] = []
        for volume, vreport in zip(candidate.volumes, item.volumes, strict=True):
            try:
                conn = VolumeConnection.from_connection_info(dict(volume.connection_info))
                connector = connector_for(conn)
                if conn.driver_volume_type.lower() == "iscsi":
                    parse_iscsi_target(conn)  # malformed connection_info fails even unprobed
                if self.options.volume_check == "probe":
                    found = connector.probe(conn, timeout=self.options.volume_timeout)
                    vreport.size_bytes, vreport.path = found.size_bytes, found.path
                if not self.options.dry_run:
                    writes.append(functools.partial(
                        self._refresh_write, candidate.uuid, volume, conn.to_connection_info()))
                devices.append(BlockDevice(connection=conn, mountpoint=volume.mountpoint,
                                           volume_id=volume.volume_id, disk_bus=volume.disk_bus))
                vreport.status = "reachable"
            except VirtError as exc:
                vreport.status, vreport.error = "missing", str(exc)
                problems.append(f"volume {volume.volume_id or volume.mountpoint}: {exc}")
        if problems and not self.options.allow_missing_volumes:
            raise _Release("; ".join(problems) + " (left unclaimed; --allow-missing-volumes "
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
        """The power state of its domain here, None if there is none."""
        if not self.driver.instance_exists(instance=instance):
            return None
        state = self.driver.get_info(instance=instance).state
        if state is PowerState.UNKNOWN:
            raise HypervisorUnavailable(f"the state of {instance.uuid} is unknown")
        return state

    def _record_power(self, candidate: Candidate, instance: Instance,
                      item: InstanceReport) -> Effect | None:
        state = self.driver.get_info(instance=instance).state
        if state is PowerState.UNKNOWN:
            raise HypervisorUnavailable(f"the state of {instance.uuid} is unknown after spawn")
        item.power_state = state.value
        for vreport in item.volumes:
            if vreport.status == "reachable":
                vreport.status = "attached"
        return self._write(lambda conn: self.source.record_result(
            candidate.uuid, power_state=state, running=state is PowerState.RUNNING, conn=conn))


def _stored_device(volume: VolumeRef) -> BlockDevice | None:
    """The volume as the source records it (to detach it), None if that is unusable."""
    try:
        conn = VolumeConnection.from_connection_info(dict(volume.connection_info))
    except VirtError:
        return None
    return BlockDevice(connection=conn, mountpoint=volume.mountpoint,
                       volume_id=volume.volume_id, disk_bus=volume.disk_bus)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, VirtError):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"


def new_run_id() -> str:
    return str(uuidlib.uuid4())


def report_lines(report: RecoveryReport) -> Sequence[str]:
    """The report as lines for people."""
    title = "plan" if report.dry_run else "recovery"
    lines = [f"{title} {report.mode}: {report.failed_host or report.target_host} -> "
             f"{report.target_host} ({report.source})"]
    if report.fenced:
        lines.append(f"fencing: {report.fenced}")
    for item in report.instances:
        extra = f" [{item.power_state}]" if item.power_state else ""
        lines.append(f"  {item.outcome:<9} {item.name} {item.uuid}{extra} {item.duration_s:.2f}s")
        if report.dry_run or item.outcome == Outcome.FAILED:
            lines.extend(f"      - {step}" for step in item.steps)
        if item.disk:
            lines.append(f"      root disk {item.disk}")
        for vol in item.volumes:
            size = f" {vol.size_bytes} bytes" if vol.size_bytes is not None else ""
            err = f": {vol.error}" if vol.error else ""
            lines.append(f"      volume {vol.mountpoint} {vol.status}{size}{err}")
        if item.error:
            lines.append(f"      error: {item.error}")
    counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items())) or "nothing to do"
    lines.append(f"{len(report.instances)} instance(s): {counts} in {report.duration_s:.2f}s")
    return lines
