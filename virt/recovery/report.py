"""What a recovery run reports: per instance and per volume, as JSON or lines for people."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from virt.errors import EXIT_FAILED, EXIT_OK


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


def describe_error(exc: BaseException) -> str:
    """An error for the report: its type (what scripts match on) and its text."""
    return f"{type(exc).__name__}: {exc}"


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
