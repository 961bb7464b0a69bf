"""The executors: the local one, and SSH against the test bed's real sshd (one kept
connection for many commands, the host key verified, every command bounded in time)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import time

import pytest

from drivers.smartos.connection import (
    CommandTimeout,
    ExecutorError,
    LocalExecutor,
    SSHExecutor,
    SSHTarget,
    make_executor,
)
from drivers.smartos.options import REAL_PATHS
from virt.driver.errors import FaultKind
from virt.errors import ConfigError

TRICKY = ["a b", "$(touch /tmp/virtkit-pwned)", "';\"", "*", "$HOME", "x\ny"]


@pytest.fixture
def ssh(ssh_bed):
    executor = make_executor(ssh_bed.url, bin_dir="", timeout=20, key_file=ssh_bed.key,
                             known_hosts=ssh_bed.known_hosts, persist=60)
    assert isinstance(executor, SSHExecutor)
    yield executor
    executor.close()


@pytest.fixture(params=["local", "ssh"])
def executor(request, ssh_bed):
    if request.param == "local":
        yield LocalExecutor(timeout=20)
    else:
        yield request.getfixturevalue("ssh")


def test_target_parsing():
    assert SSHTarget.parse("ssh://root@gz1:2200") == SSHTarget("root", "gz1", 2200)
    assert SSHTarget.parse("ssh://gz1.example.com") == SSHTarget("root", "gz1.example.com", 22)
    assert SSHTarget.parse("ssh://admin@[fe80::1]:22").host == "fe80::1"
    for bad in ("ssh://", "ssh://root@gz1:99999", "ssh://root@gz1/path", "gz1"):
        with pytest.raises(ConfigError):
            SSHTarget.parse(bad)
    with pytest.raises(ConfigError):
        make_executor("http://gz1", bin_dir="", timeout=5)
    assert isinstance(make_executor("local", bin_dir="", timeout=5), LocalExecutor)


def test_tools_come_from_bin_dir_or_the_real_paths():
    assert LocalExecutor().path("vmadm") == "/usr/sbin/vmadm"
    assert LocalExecutor().path("sysinfo") == "/usr/bin/sysinfo"
    assert LocalExecutor(bin_dir="/opt/sim/bin/").path("zfs") == "/opt/sim/bin/zfs"


def test_words_reach_the_command_unchanged(executor):
    done = executor.system("/usr/bin/printf", "%s|", *TRICKY)
    assert done.returncode == 0
    assert done.out == "".join(f"{word}|" for word in TRICKY)
    assert not os.path.exists("/tmp/virtkit-pwned")


def test_the_remote_command_is_quoted_word_by_word(ssh):
    line = ssh.remote_command(("/usr/sbin/vmadm", "get", "a b;rm -rf /"))
    assert line == "/usr/sbin/vmadm get 'a b;rm -rf /'"


def test_stdin_carries_the_payload_and_exit_codes_pass_through(executor):
    secret = b"root:s3cret-\xff\n" * 3
    done = executor.system("/usr/bin/cat", stdin=secret)
    assert (done.returncode, done.stdout) == (0, secret)
    assert executor.system("/bin/sh", "-c", "echo oops >&2; exit 3").returncode == 3
    assert executor.system("/bin/sh", "-c", "echo oops >&2; exit 3").err == "oops"


def test_stdout_to_a_file_and_its_digest(executor, tmp_path):
    target = str(tmp_path / "stream.zfs")
    data = os.urandom(3 * 1024 * 1024 + 7)
    executor.write_file(target, data)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert executor.sha1(target, timeout=20) == (hashlib.sha1(data).hexdigest(), len(data))
    with pytest.raises(ExecutorError):
        executor.sha1(str(tmp_path / "missing"), timeout=20)


def test_a_hung_command_is_killed_at_its_bound(executor, monkeypatch):
    monkeypatch.setitem(REAL_PATHS, "sleep", "/usr/bin/sleep")
    began = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        executor.run("sleep", "30", timeout=1.0)
    assert time.monotonic() - began < 10
    assert caught.value.fault.kind is FaultKind.UNAVAILABLE
    assert "did not finish within 1s" in str(caught.value)


def test_a_missing_tool_is_unavailable():
    with pytest.raises(ExecutorError) as caught:
        LocalExecutor(bin_dir="/nonexistent").run("vmadm", "list")
    assert caught.value.fault.kind is FaultKind.UNAVAILABLE
    assert "bin_dir" in (caught.value.fault.hint or "")


def _master_pid(executor: SSHExecutor) -> int | None:
    done = subprocess.run([*executor._base, "-O", "check", executor._login],
                          capture_output=True, text=True, timeout=10, check=False)
    match = re.search(r"pid=(\d+)", done.stderr + done.stdout)
    return int(match.group(1)) if match else None


def _handshakes(log) -> int:
    return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


def test_one_kept_connection_serves_many_commands(ssh, ssh_bed):
    before = _handshakes(ssh_bed.log)
    assert ssh.system("/usr/bin/true").returncode == 0
    pid = _master_pid(ssh)
    assert pid is not None and ssh.master_alive()
    for _ in range(8):
        assert ssh.system("/usr/bin/true").returncode == 0
    assert _master_pid(ssh) == pid, "the commands did not reuse the kept connection"
    if ssh_bed.log.exists() and os.access(ssh_bed.log, os.R_OK):
        # Nine commands, one handshake (a concurrent test may add its own: far fewer than 9).
        assert _handshakes(ssh_bed.log) - before < 5
    directory = ssh._dir
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    ssh.close()
    assert not os.path.exists(directory)


def test_a_wrong_host_key_is_refused(ssh_bed, tmp_path):
    known = tmp_path / "known_hosts"
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    target = SSHTarget.parse(ssh_bed.url)
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    known.write_text(f"{host} {(tmp_path / 'other.pub').read_text().split()[0]} "
                     f"{(tmp_path / 'other.pub').read_text().split()[1]}\n")
    executor = SSHExecutor(target, key_file=ssh_bed.key, known_hosts=str(known), timeout=20)
    try:
        with pytest.raises(ExecutorError) as caught:
            executor.system("/usr/bin/true")
        assert caught.value.fault.kind is FaultKind.ACCESS_DENIED
        assert "host key" in str(caught.value)
    finally:
        executor.close()


def test_an_unknown_host_key_is_refused_too(ssh_bed, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    executor = SSHExecutor(SSHTarget.parse(ssh_bed.url), key_file=ssh_bed.key,
                           known_hosts=str(empty), timeout=20)
    try:
        with pytest.raises(ExecutorError) as caught:
            executor.system("/usr/bin/true")
        assert caught.value.fault.kind is FaultKind.ACCESS_DENIED
    finally:
        executor.close()


def test_an_unreachable_global_zone_is_unavailable(ssh_bed, tmp_path):
    executor = SSHExecutor(SSHTarget("root", "127.0.0.1", 1), key_file=ssh_bed.key,
                           known_hosts=ssh_bed.known_hosts, timeout=5)
    try:
        with pytest.raises(ExecutorError) as caught:
            executor.system("/usr/bin/true")
        assert caught.value.fault.kind is FaultKind.UNAVAILABLE
        assert "cannot reach the global zone root@127.0.0.1:1" in str(caught.value)
    finally:
        executor.close()


def test_after_a_hung_command_the_next_one_runs(ssh):
    assert ssh.system("/usr/bin/true").returncode == 0
    with pytest.raises(CommandTimeout):
        ssh._run(("/usr/bin/sleep", "20"), None, 1.0, None)
    assert ssh.system("/usr/bin/echo", "back").out == "back\n"
