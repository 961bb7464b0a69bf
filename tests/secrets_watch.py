"""Everything a whole-run scenario lets out, collected to check that no secret is in it.

`SecretsWatch` runs each command under `strace -f -e trace=execve -v` (every process it
starts, with its argv and environment), samples every process's cmdline and environ from
/proc while the run lasts (children of daemons, e.g. libvirtd's QEMU), keeps what each command
printed (its log lines with --debug) and any text added to it (store rows, stored faults,
libvirt's qemu log), then `leaks(secrets)` says which secret turned up where.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

_EXECVE = re.compile(r"^\d+\s+execve\(")


@dataclass
class SecretsWatch:
    """Collects texts by source; see the module docstring."""

    workdir: Path
    texts: list[tuple[str, str]] = field(default_factory=list)
    execs: int = 0
    commands: int = 0
    _sampled: dict[tuple[int, str], str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    # -- the /proc sampler -------------------------------------------------------------------

    def __enter__(self) -> SecretsWatch:
        assert shutil.which("strace"), "strace is needed"
        self._thread = threading.Thread(target=self._sample_loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _sample_loop(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        """Read every process's cmdline and environ once (kept per pid and start time)."""
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                start = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[19]
                key = (int(entry.name), start)
                if key in self._sampled:
                    continue
                cmdline = Path(entry.path, "cmdline").read_bytes()
                environ = Path(entry.path, "environ").read_bytes()
            except (OSError, IndexError):
                continue  # gone meanwhile
            if cmdline:  # kernel threads have none: nothing to read yet, sample again later
                self._sampled[key] = (cmdline + b"\n" + environ).decode(errors="replace")

    @property
    def processes_sampled(self) -> int:
        return len(self._sampled)

    # -- commands ----------------------------------------------------------------------------

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
            stdin: str = "", timeout: float = 300, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """`argv` under strace; its execve records, stdout and stderr are kept."""
        self.commands += 1
        trace = self.workdir / f"strace-{self.commands}.txt"
        done = subprocess.run(
            ["strace", "-f", "-qq", "-e", "trace=execve", "-v", "-s", "100000", "-o", str(trace),
             "--", *argv], input=stdin, capture_output=True, text=True, timeout=timeout,
            env=dict(env if env is not None else os.environ), cwd=cwd, check=False)
        name = f"command {self.commands} ({Path(argv[0]).name})"  # its args may be the leak
        records = trace.read_text(errors="replace")
        self.execs += sum(1 for line in records.splitlines() if _EXECVE.match(line))
        self.add(f"execve of {name}", records)
        self.add(f"stdout of {name}", done.stdout)
        self.add(f"stderr of {name}", done.stderr)
        return done

    def add(self, source: str, text: str) -> None:
        """More text to check (rows, faults, a log file)."""
        self.texts.append((source, text))

    def add_file(self, source: str, path: Path) -> None:
        self.add(source, path.read_bytes().decode(errors="replace"))

    def add_database(self, source: str, url: str | sa.Engine,
                     tables: Sequence[str] | None = None) -> int:
        """Every row of every table (or of `tables`) of a database; returns the row count."""
        engine = url if isinstance(url, sa.Engine) else sa.create_engine(url)
        rows = 0
        try:
            meta = sa.MetaData()
            meta.reflect(engine)
            with engine.connect() as conn:
                for table in meta.sorted_tables:
                    if tables is not None and table.name not in tables:
                        continue
                    found = [dict(r) for r in conn.execute(sa.select(table)).mappings()]
                    rows += len(found)
                    self.add(f"{source} table {table.name}", "\n".join(map(repr, found)))
        finally:
            if not isinstance(url, sa.Engine):
                engine.dispose()
        return rows

    # -- the check ---------------------------------------------------------------------------

    def all_texts(self) -> list[tuple[str, str]]:
        sampled = [(f"/proc of pid {pid}", text) for (pid, _), text in self._sampled.items()]
        return self.texts + sampled

    def lines_scanned(self) -> int:
        return sum(text.count("\n") + 1 for _, text in self.all_texts() if text)

    def leaks(self, secrets: Mapping[str, str]) -> list[str]:
        """'<secret name> in <source>' for each secret (as is, or base64) found anywhere."""
        forms = {name: _forms(value) for name, value in secrets.items()}
        found = []
        for source, text in self.all_texts():
            for name, variants in forms.items():
                if any(v in text for v in variants):
                    found.append(f"{name} in {source}")
        return found


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [secret, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()]


def private_file(directory: Path, name: str, text: str) -> Path:
    """`text` in a new 0600 file (credentials handed to a command by file)."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path

