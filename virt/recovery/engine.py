"""Recover a failed host's instances here (or this host's own after a reboot).

Per instance: plan (`virt.recovery.plan`) -> claim -> execute the planned steps, each
journaled `started`/`done` so a killed run resumes where it stopped (a step found `started`
but not `done` is undone first, where it has an undo). The volumes, the image and
(optionally) the root disk are checked before anything changes, so an instance that cannot
be finished is released untouched. While the claim is held the instance's task_state is
`recovering` (in the virtkit store), so `virtkit stop` and the like refuse it instead of
racing the recovery; the claim's end clears it. `--dry-run` walks the same steps and only
describes the ones that change something.

Journal writes are batched (see `virt.recovery.journal`): one transaction before each step
that must be undone after a crash, one at the end. A claim held by another recoverer is
watched; if its heartbeat stops for a whole lease it is taken over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from virt.driver import Capability, ComputeDriver
from virt.errors import InstanceNotFound, InvalidRequest, NotFenced, VirtError
from virt.lifecycle import fault_text
from virt.model import BlockDevice
from virt.recovery.fence import check_fenced
from virt.recovery.journal import (
    Claim,
    ClaimLost,
    ClaimRefused,
    ClaimState,
    Holder,
    RecoveryJournal,
)
from virt.recovery.options import RecoveryOptions
from virt.recovery.plan import Planner, Release
from virt.recovery.report import (
    InstanceReport,
    Outcome,
    RecoveryReport,
    VolumeReport,
    describe_error,
)
from virt.recovery.sources import Candidate, InstanceSource

LOG = logging.getLogger(__name__)

#: How often a claim another recoverer holds is looked at (at most; a quarter lease if less):
#: most are done within moments, and staleness is still judged over a whole lease.
WATCH_INTERVAL_S = 1.0


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
        if options.require_instance_disk and not driver.supports(Capability.INSTANCE_DISK_FILE):
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
        self.planner = Planner(driver=driver, source=source, host=host, node=self.node,
                               source_host=self.source_host, options=options,
                               joined=self._joined)

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
            time.sleep(min(lease / 4, WATCH_INTERVAL_S))
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
                taken = self._claim(candidate, take_over)
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
                recorded = self._execute(candidate, claim, item)
                item.outcome = Outcome.RECOVERED
                self.journal.note(claim, "recovered", "done", item.power_state)
                self.journal.finish(claim, ClaimState.DONE, effect=None if recorded else (
                    self.planner.write(lambda conn: self.source.end_recovery(
                        candidate.uuid, conn=conn))))
        except Release as why:
            item.outcome, item.error = Outcome.RELEASED, str(why)
            if claim is not None:
                self.journal.release(claim, str(why), effect=self.planner.write(
                    lambda conn: self.source.end_recovery(candidate.uuid, conn=conn)))
        except ClaimLost as lost:
            item.outcome, item.error = Outcome.FAILED, str(lost)
            LOG.warning("recovery of %s stopped: %s", candidate.uuid, lost)
        except Exception as exc:  # one instance's failure never stops the run
            item.outcome, item.error = Outcome.FAILED, describe_error(exc)
            LOG.warning("recovery of %s failed: %s", candidate.uuid, item.error)
            if claim is not None:
                self._record_failure(candidate, claim, exc)
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
            raise Release(
                f"claimed by {holder.actor}, whose lease expired after it started spawning "
                f"on {holder.target_host}; not taken over: {exc}") from None

    def _claim(self, candidate: Candidate, take_over: Holder | None) -> Claim | ClaimRefused:
        """Claim the instance; the claim's transaction marks it `recovering` in the source
        (when the source is the journal's store; otherwise right after)."""
        def mark(conn: sa.Connection | None) -> None:
            self.source.begin_recovery(candidate.uuid, host=self.host, conn=conn)

        taken = self.journal.claim(candidate.uuid, self.source_host,
                                   renew_done=self.options.resume_local, take_over=take_over,
                                   effect=mark if self._joined else None)
        if isinstance(taken, Claim) and not self._joined:
            mark(None)
        return taken

    def _record_failure(self, candidate: Candidate, claim: Claim, exc: Exception) -> None:
        """End the claim as failed and record the fault (which clears `recovering`)."""
        try:
            self.journal.finish(claim, ClaimState.FAILED, describe_error(exc))
            self.source.record_result(candidate.uuid, power_state=None,
                                      fault=fault_text("recovery failed", exc))
        except ClaimLost as lost:
            LOG.warning("not recording the failure of %s: %s", candidate.uuid, lost)
        except Exception as other:  # the report still carries the original error
            LOG.warning("could not record the failure of %s: %s", candidate.uuid,
                        describe_error(other))

    # -- the steps --------------------------------------------------------------------------

    def _execute(self, candidate: Candidate, claim: Claim | None, item: InstanceReport) -> bool:
        """Run the planned steps, journaled; True if this run recorded the outcome in the
        source (which ends the `recovering` mark)."""
        instance = candidate.instance(self.host)
        done = claim.steps if claim else {}
        devices: list[BlockDevice] = []
        steps = self.planner.plan(candidate, instance, devices, item, done)
        spawned_here = False  # the domain here is this run's: no earlier attach is on it
        recorded = False
        for step in steps:
            status = done.get(step.name)
            if self.options.dry_run:
                item.steps.append(step.describe)
                if step.always:
                    step.run()
                continue
            assert claim is not None
            if status == "done" and not (step.always or step.rerun):
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
            except Release:
                raise
            except Exception as exc:
                self.journal.note(claim, step.name, "failed", describe_error(exc))
                raise
            self.journal.note(claim, step.name, "done", effect=effect)
            if step.durable:
                self.journal.flush(claim)
            item.steps.append(step.describe)
            spawned_here = spawned_here or step.name == "spawn"
            recorded = recorded or step.name == "power"
        return recorded
