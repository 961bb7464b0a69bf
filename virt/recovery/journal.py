"""Recovery claims and journal in the state store (tables `virt.store.recovery_claims` and
`recovery_journal`, from migration 0002).

A claim says "host T is recovering instance X from host S" and is taken under a row lock
(`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two
recoverers never take the same instance. The journal records each step of each claim,
`started` before and `done`/`failed` after, which is what makes a run resumable.

Entries are batched per claim: `note` buffers one (with the time it happened), `record`
makes everything buffered durable in one transaction. The recoverer `record`s the spawn's
`started` before it runs (write-ahead) and flushes its `done` after it; other entries ride
along with the next flush. A store write of a step (re-home, power state) is
committed in the same transaction as its `done` entry, so the two cannot disagree. Every
flush also checks that the claim is still this run's (a compare-and-swap on the claim row),
so a recoverer whose claim was taken over stops before its next side effect.

Leases: a live recoverer's heartbeat touches its claims' `updated_at` every lease/4 seconds.
Another recoverer may take a claim over once it has watched that row stay unchanged for a
whole lease on its own monotonic clock: no clocks of two hosts are ever compared.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import threading
import uuid as uuidlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from virt.errors import VirtError
from virt.store import DirectStatement, Store, utcnow
from virt.store import recovery_claims as claims
from virt.store import recovery_journal as journal

#: Test-only fault injection: SIGKILL this process when the journal records STEP:STATUS
#: (at once for a buffered entry, after the commit for a write-ahead one).
CRASH_ENV = "VIRTKIT_RECOVER_CRASH_AT"

Effect = Callable[[sa.Connection], object]


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


# Statements run for every instance, built once and run directly on the DBAPI cursor (see
# virt.store.direct): each instance runs them a dozen times. Bind names must differ from
# columns'.
_OURS = (claims.c.claim_id == sa.bindparam("b_claim"), claims.c.run_id == sa.bindparam("b_run"),
         claims.c.state == ClaimState.CLAIMED)
#: Renew the lease if the claim is still this run's (the compare-and-swap of every flush).
_RENEW_OWNED = DirectStatement(claims.update().where(*_OURS).values(
    updated_at=sa.bindparam("b_now", type_=claims.c.updated_at.type)))
#: The same, ending the claim in the same statement.
_END_OWNED = DirectStatement(claims.update().where(*_OURS).values(
    updated_at=sa.bindparam("b_now", type_=claims.c.updated_at.type),
    state=sa.bindparam("b_state", type_=claims.c.state.type),
    reason=sa.bindparam("b_reason", type_=claims.c.reason.type)))
_CLAIM_ROW = sa.select(claims).where(claims.c.instance_uuid == sa.bindparam("b_uuid"))
_LOCK_CLAIM_ROW = _CLAIM_ROW.with_for_update(skip_locked=True)
_ENTRY_COLUMNS = ("claim_id", "run_id", "instance_uuid", "step", "status", "actor", "detail",
                  "timestamp")
_INSERT_ENTRIES = DirectStatement(journal.insert(), columns=_ENTRY_COLUMNS)
_CLAIM_COLUMNS = tuple(c.name for c in claims.columns)
# RETURNING says whether the row went in: an INSERT's rowcount is -1 with psycopg 3.
_INSERT_CLAIM_UNLESS_ANY: dict[str, DirectStatement] = {
    "sqlite": DirectStatement(
        sqlite.insert(claims).on_conflict_do_nothing(index_elements=["instance_uuid"])
        .returning(claims.c.instance_uuid), columns=_CLAIM_COLUMNS),
    "postgresql": DirectStatement(
        postgresql.insert(claims).on_conflict_do_nothing(index_elements=["instance_uuid"])
        .returning(claims.c.instance_uuid), columns=_CLAIM_COLUMNS),
}


@dataclass(frozen=True)
class Claim:
    instance_uuid: str
    claim_id: str
    source_host: str
    target_host: str
    state: str
    run_id: str
    actor: str
    reason: str | None = None
    resumed: bool = False
    steps: Mapping[str, str] = field(default_factory=dict)  # step -> last status
    taken_over_from: str | None = None


@dataclass(frozen=True)
class Holder:
    """Another recoverer's claim as seen at one moment (what a takeover must still find)."""

    claim_id: str
    run_id: str
    actor: str
    target_host: str
    updated_at: Any

    @classmethod
    def of(cls, row: Mapping[Any, Any]) -> Holder:
        return cls(row["claim_id"], row["run_id"], row["actor"], row["target_host"],
                   row["updated_at"])


@dataclass(frozen=True)
class ClaimRefused:
    """Why an instance could not be claimed (someone else has it, or it is done)."""

    reason: str
    already_done: bool = False
    holder: Holder | None = None  # a live-looking claim of another recoverer
    busy: bool = False  # row locked by another transaction right now: try again


class ClaimLost(VirtError):
    """This run's claim was taken over (its lease expired): stop touching the instance."""


def actor_name(host: str) -> str:
    """Who is acting, for the journal: host and process id."""
    return f"{host}/pid {os.getpid()} on {socket.gethostname()}"


@dataclass
class _Pending:
    """Entries not yet written, each with the store write it stands for (if any)."""

    items: list[tuple[dict[str, Any], Effect | None]] = field(default_factory=list)


class RecoveryJournal:
    """Claims and journal entries, on one Store's engine."""

    def __init__(self, store: Store, *, host: str, run_id: str | None = None) -> None:
        self.store = store
        self.host = host
        self.run_id = run_id or str(uuidlib.uuid4())
        self.actor = actor_name(host)
        self._crash_at = os.environ.get(CRASH_ENV, "")
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    # -- claims -----------------------------------------------------------------------------

    def claim(self, instance_uuid: str, source_host: str, *, renew_done: bool = False,
              take_over: Holder | None = None,
              effect: Effect | None = None) -> Claim | ClaimRefused:
        """Take (or resume) the claim on an instance; refuse if another recoverer has it.

        `renew_done` starts a new claim over a finished one of this host (resume-local runs
        after every reboot). `take_over` replaces another recoverer's claim, but only if it
        is still exactly as the caller saw it go stale. `effect` (a store write, e.g. the
        instance's task state) commits in the same transaction if the claim is taken.
        """
        with self.store.kept_transaction() as conn:
            taken = self._claim(conn, instance_uuid, source_host, renew_done, take_over)
            if effect is not None and isinstance(taken, Claim):
                effect(conn)
            return taken

    def _claim(self, conn: sa.Connection, instance_uuid: str, source_host: str,
               renew_done: bool, take_over: Holder | None) -> Claim | ClaimRefused:
        """The claim decision, on the caller's transaction."""
        if take_over is None and conn.dialect.name in _INSERT_CLAIM_UNLESS_ANY:
            # The usual case, an instance never claimed: one statement. A row already
            # there (or being inserted) makes it a no-op, and the checks below decide.
            claim = self._new_claim(conn, instance_uuid, source_host, replace=False)
            if isinstance(claim, Claim):
                return claim
        row = conn.execute(_LOCK_CLAIM_ROW, {"b_uuid": instance_uuid}).mappings().first()
        if row is None and _exists(conn, instance_uuid):
            return ClaimRefused("another recoverer is claiming it right now", busy=True)
        if row is not None and take_over is not None:
            return self._take_over(conn, row, take_over)
        if row is not None and row["source_host"] == source_host:
            if row["target_host"] != self.host and row["state"] != ClaimState.FAILED:
                done = row["state"] == ClaimState.DONE
                return ClaimRefused(
                    f"claimed by {row['actor']} (run {row['run_id']})", already_done=done,
                    holder=None if done else Holder.of(row))
            if (row["target_host"] == self.host and row["state"] == ClaimState.DONE
                    and not renew_done):
                return ClaimRefused("already recovered here", already_done=True)
            if row["target_host"] == self.host and row["state"] != ClaimState.DONE:
                conn.execute(claims.update().where(claims.c.instance_uuid == instance_uuid)
                             .values(state=ClaimState.CLAIMED, run_id=self.run_id,
                                     actor=self.actor, reason=None, updated_at=utcnow()))
                return Claim(instance_uuid, row["claim_id"], source_host, self.host,
                             ClaimState.CLAIMED, self.run_id, self.actor, resumed=True,
                             steps=_steps(conn, row["claim_id"]))
        # New claim; an old row (an earlier recovery from another host, or a failed
        # attempt by another host) is replaced.
        return self._new_claim(conn, instance_uuid, source_host, replace=row is not None)

    def _new_claim(self, conn: sa.Connection, instance_uuid: str, source_host: str, *,
                   replace: bool, taken_over_from: str | None = None) -> Claim | ClaimRefused:
        now = utcnow()
        claim_id = str(uuidlib.uuid4())
        values = dict(claim_id=claim_id, source_host=source_host, target_host=self.host,
                      state=ClaimState.CLAIMED, run_id=self.run_id, actor=self.actor,
                      reason=None, claimed_at=now, updated_at=now)
        if not replace:
            if not _insert_claim(conn, dict(instance_uuid=instance_uuid, **values)):
                return ClaimRefused("another recoverer claimed it at the same moment", busy=True)
        else:
            conn.execute(claims.update().where(claims.c.instance_uuid == instance_uuid)
                         .values(**values))
        return Claim(instance_uuid, claim_id, source_host, self.host, ClaimState.CLAIMED,
                     self.run_id, self.actor, taken_over_from=taken_over_from)

    def _take_over(self, conn: sa.Connection, row: Mapping[Any, Any],
                   seen: Holder) -> Claim | ClaimRefused:
        """Replace a stale claim of another recoverer, journaling who took it from whom."""
        if row["state"] == ClaimState.DONE:
            return ClaimRefused(f"recovered by {row['actor']} (run {row['run_id']})",
                                already_done=True)
        if Holder.of(row) != seen:
            return ClaimRefused(f"claimed by {row['actor']} (run {row['run_id']}), alive again",
                                holder=Holder.of(row))
        claim = self._new_claim(conn, row["instance_uuid"], row["source_host"], replace=True,
                                taken_over_from=f"{seen.actor} (run {seen.run_id})")
        assert isinstance(claim, Claim)
        detail = (f"taken over by {self.actor} (run {self.run_id}) from {seen.actor} "
                  f"(run {seen.run_id}, claim {seen.claim_id}): its lease expired")
        now = utcnow()
        conn.execute(journal.insert(), [
            self._row(seen.claim_id, row["instance_uuid"], "takeover", "done", detail, now),
            self._row(claim.claim_id, row["instance_uuid"], "takeover", "done", detail, now)])
        return claim

    def holder(self, instance_uuid: str) -> dict[str, Any] | None:
        """The claim row of an instance as it is now (None: unclaimed)."""
        with self.store.transaction() as conn:
            row = conn.execute(
                sa.select(claims).where(claims.c.instance_uuid == instance_uuid)
            ).mappings().first()
        return None if row is None else dict(row)

    def heartbeat(self) -> int:
        """Renew the lease on every live claim of this run; returns how many."""
        with self.store.transaction() as conn:
            return conn.execute(
                claims.update().where(claims.c.run_id == self.run_id,
                                      claims.c.state == ClaimState.CLAIMED)
                .values(updated_at=utcnow())).rowcount

    def release(self, claim: Claim, reason: str, *, effect: Effect | None = None) -> None:
        """Give the instance back unclaimed (nothing was changed), journaling why; `effect`
        (e.g. clearing the instance's task state) commits with it."""
        def delete(conn: sa.Connection) -> None:
            conn.execute(claims.delete().where(claims.c.claim_id == claim.claim_id))
            if effect is not None:
                effect(conn)

        self.note(claim, "release", "done", reason)
        self.flush(claim, delete)

    def finish(self, claim: Claim, state: ClaimState, reason: str | None = None, *,
               effect: Effect | None = None) -> None:
        """End the claim, with everything still buffered (then `effect`), in one
        transaction."""
        self._flush(claim, effect, end=(state, reason))

    # -- entries ----------------------------------------------------------------------------

    def note(self, claim: Claim, step: str, status: str, detail: str | None = None, *,
             effect: Effect | None = None) -> None:
        """Buffer one entry (and the store write it stands for) for the next flush."""
        self._buffer(claim, step, status, detail, effect)
        self._maybe_crash(step, status)

    def record(self, claim: Claim, step: str, status: str, detail: str | None = None) -> None:
        """Append one entry and make it, and everything buffered, durable before returning."""
        self._buffer(claim, step, status, detail, None)
        self._flush(claim, None, intent=step)
        self._maybe_crash(step, status)

    def flush(self, claim: Claim, effect: Effect | None = None) -> None:
        """Commit the buffered entries and writes of `claim` (then `effect`) in one transaction.

        Raises ClaimLost if the claim is no longer this run's: the entries are still written
        (what was done, by whom) but no store write is.
        """
        self._flush(claim, effect)

    def _flush(self, claim: Claim, effect: Effect | None, *, intent: str | None = None,
               end: tuple[ClaimState, str | None] | None = None) -> None:
        """The one transaction: check the claim is ours (and end it if `end`), insert the
        entries, run their store writes and `effect`."""
        with self._lock:
            pending = self._pending.pop(claim.claim_id, _Pending())
        rows = [row for row, _ in pending.items]
        writes = [w for _, w in pending.items if w is not None]
        ours = {"b_claim": claim.claim_id, "b_run": self.run_id, "b_now": utcnow()}
        try:
            with self.store.kept_transaction() as conn:
                if end is None:
                    owned = _RENEW_OWNED.execute(conn, ours).rowcount
                else:
                    owned = _END_OWNED.execute(
                        conn, {**ours, "b_state": end[0], "b_reason": end[1]}).rowcount
                if not owned:
                    raise ClaimLost(f"the claim on {claim.instance_uuid} is no longer this "
                                    f"run's: {_holder_text(conn, claim.instance_uuid)}")
                if rows:
                    _INSERT_ENTRIES.executemany(conn, rows)
                for write in [*writes, *([effect] if effect else [])]:
                    write(conn)
        except ClaimLost:
            done = [row for row, w in pending.items if w is None]
            if intent is not None:  # the write-ahead entry of a step that will not run
                done = done[:-1]
            self._write_rows(done)
            raise
        except BaseException:
            # Keep the entries of what happened for the failure record; an entry that stood
            # for a store write that did not commit goes with it.
            with self._lock:
                mine = self._pending.setdefault(claim.claim_id, _Pending())
                mine.items[:0] = [(row, None) for row, w in pending.items if w is None]
            raise

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with self.store.transaction() as conn:
                conn.execute(journal.insert(), rows)

    def discard(self, claim: Claim) -> None:
        with self._lock:
            self._pending.pop(claim.claim_id, None)

    def _buffer(self, claim: Claim, step: str, status: str, detail: str | None,
                effect: Effect | None) -> None:
        row = self._row(claim.claim_id, claim.instance_uuid, step, status, detail, utcnow())
        with self._lock:
            self._pending.setdefault(claim.claim_id, _Pending()).items.append((row, effect))

    def _row(self, claim_id: str, instance_uuid: str, step: str, status: str,
             detail: str | None, when: Any) -> dict[str, Any]:
        return dict(claim_id=claim_id, run_id=self.run_id, instance_uuid=instance_uuid,
                    step=step, status=status, actor=self.actor, detail=detail, timestamp=when)

    def _maybe_crash(self, step: str, status: str) -> None:
        if self._crash_at and self._crash_at == f"{step}:{status}":
            os.kill(os.getpid(), signal.SIGKILL)

    # -- reading ----------------------------------------------------------------------------

    def step_status(self, claim: Claim) -> dict[str, str]:
        """The last status of each step of this claim ('started', 'done', 'failed')."""
        with self.store.transaction() as conn:
            return _steps(conn, claim.claim_id)

    def claim_steps(self, claim_id: str) -> dict[str, str]:
        """The last status of each step of any claim, by its id."""
        with self.store.transaction() as conn:
            return _steps(conn, claim_id)

    def pending_claims(self, source_host: str, *, any_target: bool = False
                       ) -> list[dict[str, Any]]:
        """Unfinished claims on instances of `source_host`: this host's (for resuming), or
        everyone's with `any_target` (another recoverer's may have to be taken over)."""
        where = [claims.c.source_host == source_host,
                 claims.c.state.in_([ClaimState.CLAIMED, ClaimState.FAILED])]
        if not any_target:
            where.append(claims.c.target_host == self.host)
        with self.store.transaction() as conn:
            rows = conn.execute(sa.select(claims).where(*where)).mappings().all()
        return [dict(row) for row in rows]

    def entries(self, instance_uuid: str) -> list[dict[str, Any]]:
        """The journal of one instance, oldest first."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                sa.select(journal).where(journal.c.instance_uuid == instance_uuid)
                .order_by(journal.c.id)
            ).mappings().all()
        return [dict(row) for row in rows]


def recovering_host(store: Store, instance_uuid: str) -> str | None:
    """The host whose recoverer holds a live claim on the instance now, None if none."""
    with store.transaction() as conn:
        return conn.execute(
            sa.select(claims.c.target_host).where(claims.c.instance_uuid == instance_uuid,
                                                  claims.c.state == ClaimState.CLAIMED)
        ).scalar()


def _steps(conn: sa.Connection, claim_id: str) -> dict[str, str]:
    rows = conn.execute(
        sa.select(journal.c.step, journal.c.status)
        .where(journal.c.claim_id == claim_id).order_by(journal.c.id)
    ).all()
    return {step: status for step, status in rows}


def _insert_claim(conn: sa.Connection, values: dict[str, Any]) -> bool:
    """Insert a claim row; False if another recoverer inserted one first.

    SQLite and PostgreSQL say so with ON CONFLICT DO NOTHING (no savepoint round trips);
    other databases through a savepoint and the IntegrityError.
    """
    insert = _INSERT_CLAIM_UNLESS_ANY.get(conn.dialect.name)
    if insert is not None:
        return insert.execute(conn, values).fetchone() is not None
    try:
        with conn.begin_nested():
            conn.execute(claims.insert(), values)
    except sa.exc.IntegrityError:
        return False
    return True


def _holder_text(conn: sa.Connection, instance_uuid: str) -> str:
    row = conn.execute(_CLAIM_ROW, {"b_uuid": instance_uuid}).mappings().first()
    if row is None:
        return "it was released"
    return f"now held by {row['actor']} (run {row['run_id']}, {row['state']})"


def _exists(conn: sa.Connection, instance_uuid: str) -> bool:
    """True if a claim row exists (it was skipped because another transaction holds it)."""
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(
        sa.select(sa.literal(1)).select_from(claims).where(claims.c.instance_uuid == instance_uuid)
    ).first() is not None
