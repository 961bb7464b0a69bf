"""Where the commands run: the global zone itself (LocalExecutor) or over SSH to it
(SSHExecutor), each command bounded in time, payloads and secrets on stdin only.

An executor runs an argv and returns its `Completed` result, whatever the exit code; the
`commands` module reads the codes. What can go wrong on the way (the command hung, the
global zone cannot be reached, the host key is wrong) raises `ExecutorError`, which
`classify` turns into HypervisorUnavailable or AccessDenied.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import IO
from urllib.parse import urlparse

from drivers.smartos.options import REAL_PATHS
from virt.driver.errors import EngineFault, FaultKind
from virt.errors import ConfigError

LOG = logging.getLogger(__name__)

#: The global zone's own commands (the same paths on SmartOS and Linux test hosts).
CAT = "/usr/bin/cat"
MKDIR = "/usr/bin/mkdir"
RM = "/usr/bin/rm"

#: ssh's own exit code for its failures (the remote command's codes pass through).
SSH_FAILED = 255


@dataclass(frozen=True)
class Completed:
    """One finished command: its argv (never holding a secret), exit code and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class ExecutorError(Exception):
    """The command could not be run to its end (not: it ran and failed)."""

    def __init__(self, kind: FaultKind, detail: str, hint: str | None = None) -> None:
        super().__init__(detail)
        self.fault = EngineFault(kind, detail, hint)


class CommandTimeout(ExecutorError):
    """The command did not finish in its time and was killed."""

    def __init__(self, command: str, seconds: float, where: str) -> None:
        super().__init__(
            FaultKind.UNAVAILABLE,
            f"'{command}' did not finish within {seconds:g}s on {where} and was killed",
            hint="check the global zone (a hung vmadm or zfs?), or raise [smartos] "
            "command_timeout",
        )
        self.seconds = seconds


def classify(exc: BaseException) -> EngineFault | None:
    """The fault an executor error stands for (None: not the executor's)."""
    if isinstance(exc, ExecutorError):
        return exc.fault
    return None


def describe(argv: tuple[str, ...] | list[str]) -> str:
    """A command line for messages: the tool's base name and its arguments."""
    return " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else ""


class Executor:
    """Runs the SmartOS tools by name (`vmadm` ...) from `bin_dir` (empty: the real paths)."""

    #: Where the commands run, for messages.
    where: str = "the global zone"

    def __init__(self, *, bin_dir: str = "", timeout: float = 120.0) -> None:
        self.bin_dir = bin_dir
        self.timeout = timeout
        #: How many commands ran (for the benchmark's commands-per-operation count).
        self.count = 0

    def path(self, tool: str) -> str:
        if self.bin_dir:
            return f"{self.bin_dir.rstrip('/')}/{tool}"
        return REAL_PATHS[tool]

    def run(self, tool: str, *args: str, stdin: bytes | None = None,
            timeout: float | None = None, stdout_to: str | None = None) -> Completed:
        """Run `tool args...`; `stdin` is written to it (payloads, secrets), `stdout_to`
        sends its output to a file on the global zone instead of back here."""
        argv = (self.path(tool), *args)
        self.count += 1
        return self._run(argv, stdin, self.timeout if timeout is None else timeout, stdout_to)

    def system(self, path: str, *args: str, stdin: bytes | None = None,
               stdout_to: str | None = None) -> Completed:
        """Run one of the global zone's own commands (`/usr/bin/cat` ...), not in bin_dir."""
        self.count += 1
        return self._run((path, *args), stdin, self.timeout, stdout_to)

    def write_file(self, path: str, data: bytes) -> None:
        """Write `data` to `path` on the global zone (mode 0600), through stdin."""
        done = self.system(CAT, stdin=data, stdout_to=path)
        if done.returncode != 0:
            raise ExecutorError(FaultKind.FAILED, f"cannot write {path}: {done.err}")

    def sha1(self, path: str, *, timeout: float) -> tuple[str, int]:
        """(sha1 hex digest, size in bytes) of the file `path` on the global zone, read
        once as a stream (never whole into memory)."""
        digest = hashlib.sha1(usedforsecurity=False)  # imgadm's manifest checksum
        size = 0
        command, argv = self._command((CAT, path), None)
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
        try:
            while proc.stdout is not None and (chunk := proc.stdout.read(1 << 20)):
                digest.update(chunk)
                size += len(chunk)
            err = proc.stderr.read() if proc.stderr is not None else b""
            code = proc.wait()
        finally:
            timer.cancel()
        self.count += 1
        if code != 0:
            if code < 0:
                raise CommandTimeout(describe(argv), timeout, self.where)
            raise ExecutorError(FaultKind.FAILED, f"cannot read {path}: "
                                f"{err.decode('utf-8', 'replace').strip()}")
        return digest.hexdigest(), size

    def _command(self, argv: tuple[str, ...], stdout_to: str | None) -> tuple[list[str],
                                                                                tuple[str, ...]]:
        """The local command line that runs `argv` where the tools are."""
        return list(argv), argv

    def _run(self, argv: tuple[str, ...], stdin: bytes | None, timeout: float,
             stdout_to: str | None) -> Completed:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor keeps open."""

    def _timed_out(self) -> None:
        """After a command was killed at its bound."""

    def _bounded(self, command: list[str], argv: tuple[str, ...], stdin: bytes | None,
                 timeout: float, stdout: IO[bytes] | int) -> Completed:
        """Run `command` (argv, or ssh + argv) with a deadline; kill its process group at it."""
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=stdout,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise ExecutorError(
                FaultKind.UNAVAILABLE, f"{command[0]} does not exist on {self.where}",
                hint="set [smartos] bin_dir to where vmadm, imgadm and zfs are, or run "
                "virtkit in a SmartOS global zone") from None
        except PermissionError:
            raise ExecutorError(
                FaultKind.ACCESS_DENIED, f"{command[0]} may not be run by this user",
                hint="run the compute service as root in the global zone") from None
        try:
            out, err = proc.communicate(stdin or b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            _abandon(proc)
            self._timed_out()
            raise CommandTimeout(describe(argv), timeout, self.where) from None
        except BaseException:
            _abandon(proc)
            raise
        return Completed(argv, proc.returncode, out or b"", err or b"")


def _abandon(proc: subprocess.Popen[bytes]) -> None:
    """Kill the command and close its pipes without reading them to their end (over SSH
    the kept connection holds copies of them until the remote command ends)."""
    _kill_group(proc)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


class LocalExecutor(Executor):
    """The commands run here: virtkit itself is in the global zone."""

    where = "this host"

    def _run(self, argv: tuple[str, ...], stdin: bytes | None, timeout: float,
             stdout_to: str | None) -> Completed:
        if stdout_to is None:
            return self._bounded(list(argv), argv, stdin, timeout, subprocess.PIPE)
        fd = os.open(stdout_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as sink:
            return self._bounded(list(argv), argv, stdin, timeout, sink)


_SSH_URL = re.compile(r"^ssh://(?:(?P<user>[^@/:]+)@)?(?P<host>[^/:@]+|\[[0-9a-fA-F:]+\])"
                      r"(?::(?P<port>\d{1,5}))?/?$")


@dataclass(frozen=True)
class SSHTarget:
    """Where an SSHExecutor connects: user, host and port from ssh://user@host[:port]."""

    user: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> SSHTarget:
        match = _SSH_URL.match(url.strip())
        if not match or not 0 < int(match.group("port") or 22) < 65536:
            raise ConfigError(f"[smartos] host {url!r} is neither 'local' nor "
                              "ssh://user@host[:port]", hint="e.g. ssh://root@gz1.example.com")
        return cls(match.group("user") or "root", match.group("host").strip("[]"),
                   int(match.group("port") or 22))

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class SSHExecutor(Executor):
    """The commands run on a global zone over OpenSSH: one kept (multiplexed) connection
    reused by every command, the host key verified, the remote command shell-quoted."""

    def __init__(self, target: SSHTarget, *, key_file: str | None = None,
                 known_hosts: str | None = None, persist: int = 300, bin_dir: str = "",
                 timeout: float = 120.0, ssh: str | None = None) -> None:
        super().__init__(bin_dir=bin_dir, timeout=timeout)
        self.target = target
        self.where = f"the global zone {target}"
        self._ssh = ssh or shutil.which("ssh") or "ssh"
        self._dir = tempfile.mkdtemp(prefix="virtkit-ssh-")  # mkdtemp makes it 0700
        self._socket = os.path.join(self._dir, "master")
        self._persist = persist
        self._lock = threading.Lock()
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": "yes",
            "GlobalKnownHostsFile": "/dev/null",
            "ControlPath": self._socket,
            "ConnectTimeout": str(max(1, min(int(timeout), 30))),
            "ServerAliveInterval": "15",
            "ServerAliveCountMax": "3",
            "LogLevel": "ERROR",
        }
        if known_hosts:
            options["UserKnownHostsFile"] = known_hosts
        if key_file:
            options["IdentityFile"] = key_file
            options["IdentitiesOnly"] = "yes"
        self._login = f"{target.user}@{target.host}"
        self._base = [self._ssh, "-F", "none", "-T", "-p", str(target.port)]
        for name, value in options.items():
            self._base += ["-o", f"{name}={value}"]

    def remote_command(self, argv: tuple[str, ...], stdout_to: str | None = None) -> str:
        """The command line the remote shell runs: every word quoted."""
        line = " ".join(shlex.quote(word) for word in argv)
        if stdout_to is not None:
            line = f"umask 077 && {line} > {shlex.quote(stdout_to)}"
        return line

    def _command(self, argv: tuple[str, ...], stdout_to: str | None) -> tuple[list[str],
                                                                                tuple[str, ...]]:
        self._ensure_master()
        # ControlMaster=no: a command never becomes the master (a master started by a
        # command would hold its pipes open); without the master it connects on its own.
        return [*self._base, "-o", "ControlMaster=no", self._login, "--",
                self.remote_command(argv, stdout_to)], argv

    def _ensure_master(self) -> None:
        """Open the kept connection (ControlMaster=auto, ControlPersist) unless it is up."""
        with self._lock:
            if os.path.exists(self._socket):
                return
            with tempfile.TemporaryFile() as err:
                try:
                    code = subprocess.run(
                        [*self._base, "-o", "ControlMaster=auto", "-o",
                         f"ControlPersist={self._persist}", "-N", "-f", self._login],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                        timeout=self.timeout, check=False).returncode
                except subprocess.TimeoutExpired:
                    raise ExecutorError(
                        FaultKind.UNAVAILABLE, f"cannot reach the global zone {self.target}: "
                        f"no SSH connection within {self.timeout:g}s") from None
                err.seek(0)
                text = err.read().decode("utf-8", "replace").strip()
            if code != 0:
                raise self._ssh_error(text)
            LOG.debug("smartos: SSH connection to %s kept open", self.target)

    def _run(self, argv: tuple[str, ...], stdin: bytes | None, timeout: float,
             stdout_to: str | None) -> Completed:
        command, _ = self._command(argv, stdout_to)
        done = self._bounded(command, argv, stdin, timeout, subprocess.PIPE)
        if done.returncode == SSH_FAILED:
            raise self._ssh_error(done.err)
        return done

    def _ssh_error(self, text: str) -> ExecutorError:
        """What ssh's own failure (exit 255) means."""
        lowered = text.lower()
        first = text.splitlines()[-1] if text else "ssh failed"
        if "host key verification failed" in lowered or "host key for" in lowered \
                or "remote host identification has changed" in lowered:
            return ExecutorError(
                FaultKind.ACCESS_DENIED,
                f"the host key of {self.target} is not the one in the known_hosts file; "
                "virtkit refuses to talk to it", hint="check the global zone's key and "
                "[smartos] known_hosts_file (ssh-keyscan, then verify the fingerprint)")
        if "permission denied" in lowered:
            return ExecutorError(
                FaultKind.ACCESS_DENIED, f"{self.target} refused the SSH key: {first}",
                hint="add the public key of [smartos] ssh_key_file to the global zone's "
                "/root/.ssh/authorized_keys")
        return ExecutorError(FaultKind.UNAVAILABLE,
                             f"cannot reach the global zone {self.target}: {first}",
                             hint="check that it is up and sshd listens there")

    def master_alive(self) -> bool:
        """Whether the kept connection is up (ssh -O check)."""
        done = subprocess.run([*self._base, "-O", "check", self._login],
                              capture_output=True, timeout=10, check=False)
        return done.returncode == 0

    def _timed_out(self) -> None:
        """A killed client leaves its remote command running (sshd does not signal a
        command without a terminal) and its session open: closing the kept connection
        closes the session; the next command opens a new connection."""
        self._exit_master()

    def _exit_master(self) -> None:
        try:
            subprocess.run([*self._base, "-O", "exit", self._login],
                           capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            LOG.debug("smartos: closing the SSH connection to %s: %s", self.target, exc)

    def close(self) -> None:
        """Close the kept connection and remove its private directory."""
        with self._lock:
            if not os.path.isdir(self._dir):
                return
            self._exit_master()
            shutil.rmtree(self._dir, ignore_errors=True)


def make_executor(host: str, *, bin_dir: str, timeout: float, key_file: str | None = None,
                  known_hosts: str | None = None, persist: int = 300) -> Executor:
    """The executor `[smartos] host` names: 'local' or ssh://user@host[:port]."""
    if host.strip() in ("", "local"):
        return LocalExecutor(bin_dir=bin_dir, timeout=timeout)
    if urlparse(host.strip()).scheme != "ssh":
        raise ConfigError(f"[smartos] host {host!r} is neither 'local' nor ssh://user@host[:port]")
    return SSHExecutor(SSHTarget.parse(host), key_file=key_file, known_hosts=known_hosts,
                       persist=persist, bin_dir=bin_dir, timeout=timeout)
