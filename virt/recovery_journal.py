"""Recovery claims and journal in the state store (tables from migration 0002).

A claim says "host T is recovering instance X from host S" and is taken under a row lock
(`SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two
recoverers never take the same instance. The journal records each step of each claim,
`started` before and `done`/`failed` after, which is what makes a run resumable.
"""

from __future__ import annotations

import enum
import os
import signal
import socket
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from virt.store import Store
from virt.store_records import utcnow

recovery_metadata = sa.MetaData()

claims = sa.Table(
    "recovery_claims",
    recovery_metadata,
    sa.Column("instance_uuid", sa.String(36), primary_key=True),
    sa.Column("claim_id", sa.String(36), nullable=False),
    sa.Column("source_host", sa.String(255), nullable=False),
    sa.Column("target_host", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

journal = sa.Table(
    "recovery_journal",
    recovery_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("claim_id", sa.String(36), nullable=False),
    sa.Column("run_id", sa.String(36), nullable=False),
    sa.Column("instance_uuid", sa.String(36), nullable=False),
    sa.Column("step", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("timestamp", sa.DateTime, nullable=False),
)

#: Test-only fault injection: SIGKILL this process when the journal records STEP:STATUS.
CRASH_ENV = "VIRTKIT_RECOVER_CRASH_AT"


class ClaimState(enum.StrEnum):
    CLAIMED = "claimed"
    DONE = "done"
    FAILED = "failed"


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


@dataclass(frozen=True)
class ClaimRefused:
    """Why an instance could not be claimed (someone else has it, or it is done)."""

    reason: str
    already_done: bool = False


def actor_name(host: str) -> str:
    """Who is acting, for the journal: host and process id."""
    return f"{host}/pid {os.getpid()} on {socket.gethostname()}"


class RecoveryJournal:
    """Claims and journal entries, on one Store's engine."""

    def __init__(self, store: Store, *, host: str, run_id: str | None = None) -> None:
        self.store = store
        self.host = host
        self.run_id = run_id or str(uuidlib.uuid4())
        self.actor = actor_name(host)
        self._crash_at = os.environ.get(CRASH_ENV, "")

    def claim(self, instance_uuid: str, source_host: str, *,
              renew_done: bool = False) -> Claim | ClaimRefused:
        """Take (or resume) the claim on an instance; refuse if another recoverer has it.

        `renew_done` starts a new claim over a finished one of this host (resume-local runs
        after every reboot).
        """
        now = utcnow()
        with self.store.transaction() as conn:
            row = conn.execute(
                sa.select(claims).where(claims.c.instance_uuid == instance_uuid)
                .with_for_update(skip_locked=True)
            ).mappings().first()
            if row is None and _exists(conn, instance_uuid):
                return ClaimRefused("another recoverer is claiming it right now")
            if row is not None and row["source_host"] == source_host:
                if row["target_host"] != self.host and row["state"] != ClaimState.FAILED:
                    return ClaimRefused(
                        f"claimed by {row['actor']} (run {row['run_id']})",
                        already_done=row["state"] == ClaimState.DONE)
                if (row["target_host"] == self.host and row["state"] == ClaimState.DONE
                        and not renew_done):
                    return ClaimRefused("already recovered here", already_done=True)
                if row["target_host"] == self.host and row["state"] != ClaimState.DONE:
                    conn.execute(claims.update().where(claims.c.instance_uuid == instance_uuid)
                                 .values(state=ClaimState.CLAIMED, run_id=self.run_id,
                                         actor=self.actor, reason=None, updated_at=now))
                    return Claim(instance_uuid, row["claim_id"], source_host, self.host,
                                 ClaimState.CLAIMED, self.run_id, self.actor, resumed=True)
            # New claim; an old row (an earlier recovery from another host, or a failed
            # attempt by another host) is replaced.
            claim_id = str(uuidlib.uuid4())
            values = dict(claim_id=claim_id, source_host=source_host, target_host=self.host,
                          state=ClaimState.CLAIMED, run_id=self.run_id, actor=self.actor,
                          reason=None, claimed_at=now, updated_at=now)
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(claims.insert().values(instance_uuid=instance_uuid,
                                                            **values))
                except sa.exc.IntegrityError:
                    return ClaimRefused("another recoverer claimed it at the same moment")
            else:
                conn.execute(claims.update().where(claims.c.instance_uuid == instance_uuid)
                             .values(**values))
            return Claim(instance_uuid, claim_id, source_host, self.host, ClaimState.CLAIMED,
                         self.run_id, self.actor)

    def release(self, claim: Claim, reason: str) -> None:
        """Give the instance back unclaimed (nothing was changed), journaling why."""
        self.record(claim, "release", "done", reason)
        with self.store.transaction() as conn:
            conn.execute(claims.delete().where(claims.c.claim_id == claim.claim_id))

    def finish(self, claim: Claim, state: ClaimState, reason: str | None = None) -> None:
        with self.store.transaction() as conn:
            conn.execute(claims.update().where(claims.c.claim_id == claim.claim_id)
                         .values(state=state, reason=reason, updated_at=utcnow()))

    def record(self, claim: Claim, step: str, status: str, detail: str | None = None) -> None:
        """Append one journal entry (committed before this returns)."""
        with self.store.transaction() as conn:
            conn.execute(journal.insert().values(
                claim_id=claim.claim_id, run_id=self.run_id, instance_uuid=claim.instance_uuid,
                step=step, status=status, actor=self.actor, detail=detail, timestamp=utcnow()))
        if self._crash_at and self._crash_at == f"{step}:{status}":
            os.kill(os.getpid(), signal.SIGKILL)

    def step_status(self, claim: Claim) -> dict[str, str]:
        """The last status of each step of this claim ('started', 'done', 'failed')."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                sa.select(journal.c.step, journal.c.status)
                .where(journal.c.claim_id == claim.claim_id).order_by(journal.c.id)
            ).all()
        return {step: status for step, status in rows}

    def pending_claims(self, source_host: str) -> list[dict[str, Any]]:
        """This host's unfinished claims on instances of `source_host` (for resuming)."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                sa.select(claims).where(
                    claims.c.source_host == source_host, claims.c.target_host == self.host,
                    claims.c.state.in_([ClaimState.CLAIMED, ClaimState.FAILED]))
            ).mappings().all()
        return [dict(row) for row in rows]

    def entries(self, instance_uuid: str) -> list[dict[str, Any]]:
        """The journal of one instance, oldest first."""
        with self.store.transaction() as conn:
            rows = conn.execute(
                sa.select(journal).where(journal.c.instance_uuid == instance_uuid)
                .order_by(journal.c.id)
            ).mappings().all()
        return [dict(row) for row in rows]


def _exists(conn: sa.Connection, instance_uuid: str) -> bool:
    """True if a claim row exists (it was skipped because another transaction holds it)."""
    if conn.dialect.name != "postgresql":
        return False
    return conn.execute(
        sa.select(sa.literal(1)).select_from(claims).where(claims.c.instance_uuid == instance_uuid)
    ).first() is not None
