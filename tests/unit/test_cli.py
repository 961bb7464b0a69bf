"""The real `virtkit` console script, end to end on the fake driver, one process per command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.volumes import CHAP_CONNECTION_INFO as CONNECTION_INFO
from tests.volumes import CHAP_SECRET

VIRTKIT = Path(sys.executable).with_name("virtkit")


def _command() -> list[str]:
    return [str(VIRTKIT)] if VIRTKIT.exists() else [sys.executable, "-m", "virt.cli.main"]


class Cli:
    """Runs virtkit with a temp config (via VIRTKIT_CONFIG) and checks the exit code."""

    def __init__(self, tmp_path: Path, extra_config: str = "", pythonpath: str | None = None):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.config = tmp_path / "virtkit.conf"
        self.config.write_text(
            f"[DEFAULT]\nstate_path = {self.state}\nhost = cli-host\n{extra_config}"
        )
        self.env = dict(os.environ, VIRTKIT_CONFIG=str(self.config))
        if pythonpath:
            self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath,
                                                                    os.environ.get("PYTHONPATH")]))

    def run(self, *args: str, expect: int = 0, stdin: str = "") -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*_command(), *args], input=stdin, capture_output=True, text=True,
            env=self.env, timeout=60, cwd=self.tmp,
        )
        assert proc.returncode == expect, (args, proc.returncode, proc.stdout, proc.stderr)
        if expect:
            assert "Traceback" not in proc.stderr
            assert proc.stderr.strip().count("\n") == 0, proc.stderr  # one line
            assert proc.stderr.startswith("virtkit: error: ")
        return proc

    def json(self, *args: str, expect: int = 0, stdin: str = ""):
        return json.loads(self.run(*args, "--format", "json", expect=expect, stdin=stdin).stdout)


@pytest.fixture
def cli(tmp_path):
    return Cli(tmp_path)


@pytest.fixture
def volume_file(tmp_path):
    path = tmp_path / "vol.json"
    path.write_text(json.dumps(CONNECTION_INFO))
    return str(path)


def test_full_lifecycle_across_processes(cli, volume_file):
    booted = cli.json("boot", "web", "--image", "cirros", "--flavor", "m1.tiny")
    assert (booted["vm_state"], booted["power_state"]) == ("active", "running")
    cli.json("boot", "db", "--image", "cirros", "--vcpus", "2", "--memory-mb", "256",
             "--disk-gb", "1", "--stopped")

    listed = cli.json("list")
    assert {(i["name"], i["vm_state"]) for i in listed} == {("web", "active"), ("db", "stopped")}
    assert "web" in cli.run("list").stdout  # the table for people
    assert len(json.loads(cli.run("--format", "json", "list").stdout)) == 2  # global option

    stopped = cli.json("stop", "web", "--timeout", "5")
    assert stopped["vm_state"] == "stopped" and stopped["power_off"]["forced"] is False
    assert cli.json("start", "web")["vm_state"] == "active"
    assert cli.json("reboot", "web")["vm_state"] == "active"
    assert cli.json("reboot", "--hard", "web")["power_state"] == "running"
    assert cli.json("pause", "web")["vm_state"] == "paused"
    assert cli.json("unpause", "web")["vm_state"] == "active"
    assert cli.json("suspend", "web")["vm_state"] == "suspended"
    assert cli.json("resume", booted["uuid"])["vm_state"] == "active"

    snap = cli.json("snapshot", "web", "snap1")
    assert snap["snapshot"] == "snap1" and snap["image"]["ref"]
    clone = cli.json("boot", "clone", "--image", snap["image"]["ref"], "--flavor", "m1.tiny")
    assert clone["vm_state"] == "active"

    attached = cli.json("volume", "attach", "web", volume_file, "/dev/vdb")
    assert attached["mountpoint"] == "/dev/vdb"
    assert attached["connection_info"]["data"]["auth_password"] == "***"
    shown = cli.json("show", "web")
    assert shown["block_devices"][0]["volume_id"] == "vol-1"
    assert shown["live_power_state"] == "running"
    assert {"spawned", "paused", "volume_attach"} <= {e["event"] for e in shown["events"]}
    table = cli.run("show", "web").stdout
    assert CHAP_SECRET not in table and CHAP_SECRET not in json.dumps(shown)
    cli.json("volume", "detach", "web", "vol-1")
    assert cli.json("show", "web")["block_devices"] == []

    console = cli.json("console", "web")["output"]
    assert "web" in console
    assert len(cli.run("console", "web", "--lines", "2").stdout.splitlines()) == 2

    host = cli.json("host")
    assert host["host"] == "cli-host" and host["instances"] == 3
    assert host["resources"]["vcpus_used"] == 4

    assert cli.json("delete", "web")["vm_state"] == "deleted"
    assert {i["name"] for i in cli.json("list")} == {"db", "clone"}
    cli.run("show", "web", expect=3)


def test_boot_with_a_volume_and_explicit_config_flag(cli, volume_file):
    env_free = Cli(cli.tmp)  # same files, but pass --config instead of the variable
    env_free.env.pop("VIRTKIT_CONFIG")
    record = env_free.json("--config", str(cli.config), "boot", "vm", "--image", "cirros",
                           "--flavor", "m1.tiny", "--volume", f"{volume_file}:vdc")
    shown = cli.json("show", record["uuid"])
    assert [b["mountpoint"] for b in shown["block_devices"]] == ["/dev/vdc"]


def test_exit_codes_for_usage_not_found_and_failed(cli, tmp_path):
    cli.run("bogus", expect=2)
    cli.run("boot", "vm", expect=2)  # no --image
    cli.run("boot", "vm", "--image", "cirros", expect=2)  # no flavor
    cli.run("boot", "vm", "--image", "cirros", "--vcpus", "0", "--memory-mb", "1", expect=2)
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m9.huge", expect=2)
    cli.run("--config", str(tmp_path / "missing.conf"), "list", expect=2)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny", "--volume",
            f"{bad}:vdb", expect=2)
    for huge in (["--vcpus", "1", "--memory-mb", "99999999999999999999"],
                 ["--vcpus", "5000", "--memory-mb", "64"]):
        err = cli.run("boot", "vm", "--image", "cirros", *huge, expect=2).stderr
        assert "must be at most" in err
    cli.run("delete", "nope", expect=3)
    error = cli.json("show", "nope", expect=3)["error"]
    assert error == {"exit_code": 3, "type": "InstanceNotFound",
                     "message": "instance nope not found",
                     "hint": "'virtkit list' shows the instances"}
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny", "--stopped")
    cli.run("volume", "attach", "vm", str(bad), "vdb", expect=2)
    cli.run("volume", "detach", "vm", "vdz", expect=3)
    err = cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny", expect=1).stderr
    assert "instance vm already exists" in err
    for timeout in ("nan", "inf", "-1"):
        err = cli.run("stop", "vm", f"--timeout={timeout}", expect=2).stderr
        assert "stop timeout must be a finite number of seconds" in err
    failed = cli.run("pause", "vm", expect=1)
    assert "cannot pause instance vm: it is stopped" in failed.stderr
    debug = subprocess.run([*_command(), "--debug", "show", "nope"], capture_output=True,
                           text=True, env=cli.env, timeout=60)
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_usage_errors_in_json_mode_are_one_line_and_a_json_document(cli):
    for args in (["--format", "json", "boot"], ["list", "--format=json", "--bogus"]):
        proc = cli.run(*args, expect=2)
        assert "virtkit: error: " in proc.stderr and "--help" in proc.stderr
        error = json.loads(proc.stdout)["error"]
        assert error["exit_code"] == 2 and error["type"] == "UsageError"
        assert error["hint"].startswith("see 'virtkit")
    assert cli.run("--format", "xml", "list", expect=2).stdout == ""  # json not legible
    assert cli.run("list", expect=0).stdout  # a valid command is untouched


def test_failed_boot_is_error_with_reason_and_exit_1(tmp_path):
    cli = Cli(tmp_path, "[fake]\nfail_spawn_on_name_prefix = doomed\n")
    failed = cli.run("boot", "doomed-1", "--image", "cirros", "--flavor", "m1.tiny", expect=1)
    assert "fault injected" in failed.stderr
    shown = cli.json("show", "doomed-1")
    assert shown["vm_state"] == "error" and "fault injected" in shown["fault"]
    assert shown["live_power_state"] == "nostate"  # nothing on the hypervisor


LIMITED_DRIVER = """
from drivers.fake.driver import FakeDriver
from virt.driver import Capability


class LimitedDriver(FakeDriver):
    name = "limited"
    capabilities = frozenset(Capability) - {Capability.PAUSE, Capability.VOLUME_ISCSI_CHAP}

    def pause(self, *, instance):
        raise self._unsupported("pause")

    def unpause(self, *, instance):
        raise self._unsupported("unpause")
"""


def test_unsupported_operation_of_a_third_party_driver_exits_4(tmp_path, volume_file):
    plugins = tmp_path / "plugins"
    dist_info = plugins / "limited_driver-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (plugins / "limited_driver.py").write_text(textwrap.dedent(LIMITED_DRIVER))
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: limited-driver\n"
                                        "Version: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[virtkit.compute_drivers]\nlimited = limited_driver:LimitedDriver\n")
    cli = Cli(tmp_path, "compute_driver = limited\n", pythonpath=str(plugins))

    drivers = {d["name"]: d for d in cli.json("drivers")}
    assert drivers["limited"]["loaded"] is True and "pause" not in drivers["limited"]["capabilities"]
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny")
    out = cli.run("pause", "vm", expect=4)
    assert "driver 'limited' does not support pause" in out.stderr
    cli.run("volume", "attach", "vm", volume_file, "vdb", expect=4)  # CHAP not declared
    assert cli.json("show", "vm")["task_state"] is None


def test_drivers_json_lists_every_entry_point(cli):
    drivers = cli.json("drivers")
    assert all(set(d) == {"name", "loaded", "error", "capabilities"} for d in drivers)
    fake = next(d for d in drivers if d["name"] == "fake")
    assert fake["loaded"] is True and fake["error"] is None and "pause" in fake["capabilities"]
    for driver in drivers:
        assert driver["loaded"] or driver["error"]


def test_set_password_from_stdin_never_in_argv_logs_or_state(cli):
    password = "Pw-From-Stdin-93"
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny")
    proc = subprocess.Popen(
        [*_command(), "--debug", "set-password", "vm"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli.env,
    )
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
    out, err = proc.communicate(password + "\n", timeout=60)
    assert proc.returncode == 0, err
    assert password not in cmdline and password not in out and password not in err
    for path in cli.state.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path
    assert "admin password changed" in cli.run("console", "vm").stdout
    cli.run("set-password", "vm", stdin="\n", expect=2)  # empty
    cli.run("stop", "vm", "--timeout", "0")
    # refused before the password is read: an empty one would be exit 2
    err = cli.run("set-password", "vm", stdin="\n", expect=1).stderr
    assert "cannot set-password instance vm: it is stopped" in err
    cli.run("set-password", "ghost", stdin="\n", expect=3)


def test_set_password_prompts_twice_on_a_terminal(cli):
    import pty

    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny")

    def run_on_tty(first: str, second: str) -> tuple[int, str]:
        pid, fd = pty.fork()
        if pid == 0:  # child: becomes virtkit on the pty
            os.execve(_command()[0], [*_command(), "set-password", "vm"], cli.env)
        transcript = b""
        for answer in (first, second):
            while b"password" not in transcript.lower().split(b"\n")[-1]:
                transcript += os.read(fd, 1024)
            os.write(fd, answer.encode() + b"\n")
            transcript += b"\n"
        while True:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            transcript += chunk
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), transcript.decode(errors="replace")

    code, transcript = run_on_tty("Tty-Pass-1", "Tty-Pass-1")
    assert code == 0, transcript
    assert "Tty-Pass-1" not in transcript  # getpass does not echo
    code, transcript = run_on_tty("Tty-Pass-1", "Other-Pass")
    assert code == 2 and "differ" in transcript


def test_two_processes_boot_at_once_and_both_are_recorded(cli):
    procs = [
        subprocess.Popen([*_command(), "boot", f"p{i}", "--image", "cirros", "--flavor",
                          "m1.tiny"], env=cli.env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    assert sorted(i["name"] for i in cli.json("list")) == ["p0", "p1"]


def test_config_sample_has_every_common_and_driver_option(cli):
    from virt.config import COMMON_OPTS

    sample = cli.run("config", "sample").stdout
    for opt in COMMON_OPTS:
        assert f"#{opt.dest} = " in sample
    assert "[fake]" in sample and "#fail_spawn_on_name_prefix = " in sample


def test_demo_runs_on_a_fresh_machine_without_config(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "VIRTKIT_CONFIG"}
    env["HOME"] = str(tmp_path / "home")  # no state of the user's is touched
    proc = subprocess.run([*_command(), "demo"], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for step in ("boot", "list", "stop", "start", "snapshot", "volume attach",
                 "volume detach", "delete"):
        assert f"- {step}:" in proc.stdout
    assert "demo-chap-password" not in proc.stdout
    assert not (tmp_path / "home" / ".local" / "state" / "virtkit").exists()
    report = json.loads(subprocess.run([*_command(), "demo", "--format", "json"],
                                       capture_output=True, text=True, env=env,
                                       timeout=60).stdout)
    assert report["ok"] is True and len(report["steps"]) == 9


def test_reset_state_clears_a_task_left_by_a_dead_process(cli):
    from virt.config import build_conf
    from virt.model import TaskState
    from virt.store import Store

    booted = cli.json("boot", "stuck", "--image", "cirros", "--flavor", "m1.tiny")
    # A process that died mid-operation leaves its task behind.
    store = Store.from_conf(build_conf(cli.config))
    try:
        store.update_instance(booted["uuid"], task_state=TaskState.POWERING_OFF)
    finally:
        store.close()
    refused = cli.run("stop", "stuck", expect=1).stderr
    assert "busy (powering-off)" in refused and "reset-state" in refused
    reset = cli.json("reset-state", "stuck")
    assert (reset["task_state"], reset["vm_state"], reset["power_state"]) == (
        None, "active", "running")
    cli.run("stop", "stuck", "--timeout", "0")
    events = [e["event"] for e in cli.json("show", "stuck")["events"]]
    assert "reset_state" in events
    forced = cli.json("reset-state", "stuck", "--state", "error")
    assert forced["vm_state"] == "error"
    cli.run("reset-state", "stuck", "--state", "bogus", expect=2)


# -- hosts sharing one store ----------------------------------------------------------------


def _two_hosts(tmp_path: Path) -> tuple[Cli, Cli]:
    """host-a and host-b: each its own fake hypervisor, one shared state store."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    hosts = []
    for name in ("a", "b"):
        home = tmp_path / f"host-{name}"
        home.mkdir()
        cli = Cli(home, f"state_connection = {url}\n")
        cli.config.write_text(f"[DEFAULT]\nstate_path = {home / 'state'}\nhost = host-{name}\n"
                              f"state_connection = {url}\n")
        hosts.append(cli)
    return hosts[0], hosts[1]


def test_a_host_refuses_to_operate_another_hosts_instance(tmp_path, volume_file):
    host_a, host_b = _two_hosts(tmp_path)
    guest = host_a.json("boot", "guest-on-a", "--image", "cirros", "--flavor", "m1.tiny")
    for args in (("delete", "guest-on-a"), ("stop", "guest-on-a"), ("reboot", "guest-on-a"),
                 ("pause", "guest-on-a"), ("snapshot", "guest-on-a", "s1"),
                 ("console", "guest-on-a"), ("reset-state", "guest-on-a"),
                 ("volume", "attach", "guest-on-a", volume_file, "vdb"),
                 ("volume", "detach", "guest-on-a", "vdb"), ("set-password", "guest-on-a")):
        refused = host_b.run(*args, expect=1, stdin="pw\n").stderr
        assert "on host 'host-a', not this host 'host-b'" in refused, (args, refused)
        assert "virtkit-recover" in refused
    # The record is untouched and the guest still runs on host-a.
    shown = host_a.json("show", "guest-on-a")
    assert (shown["vm_state"], shown["task_state"], shown["power_state"], shown["fault"]) == (
        "active", None, "running", None)
    assert shown["live_power_state"] == "running" and shown["on_this_host"] is True
    events = [e["event"] for e in shown["events"]]
    assert events[0] == "spawning" and not [e for e in events if e.endswith("_failed")]
    # host-b may look: show from anywhere names the owner; list defaults to this host.
    remote = host_b.json("show", "guest-on-a")
    assert remote["host"] == "host-a" and remote["on_this_host"] is False
    assert remote["live_power_state"] == "unknown" and remote["power_state"] == "running"
    assert "host-a (not this host" in host_b.run("show", "guest-on-a").stdout
    assert host_b.json("list") == []
    assert "1 more on other hosts" in host_b.run("list").stdout
    everywhere = host_b.json("list", "--all-hosts")
    assert [(i["uuid"], i["host"]) for i in everywhere] == [(guest["uuid"], "host-a")]
    # Its own host still operates it.
    assert host_a.json("stop", "guest-on-a", "--timeout", "0")["vm_state"] == "stopped"
    assert host_a.json("delete", guest["uuid"])["vm_state"] == "deleted"


# -- configuration mistakes -----------------------------------------------------------------


def test_unknown_default_option_is_refused_with_the_closest_name(tmp_path):
    cli = Cli(tmp_path, "compute_drivr = libvirt\n")
    err = cli.run("list", expect=2).stderr
    assert "unknown option 'compute_drivr' in [DEFAULT] of" in err and str(cli.config) in err
    assert "did you mean 'compute_driver'?" in err


def test_unknown_option_in_the_drivers_group_is_refused(tmp_path):
    cli = Cli(tmp_path, "[fake]\nspawn_latency = 5\n")
    err = cli.run("list", expect=2).stderr
    assert "unknown option 'spawn_latency' in [fake]" in err
    assert "did you mean 'spawn_latency_ms'?" in err


def test_bad_value_is_a_one_line_config_error_naming_option_and_file(tmp_path):
    cli = Cli(tmp_path, "[fake]\nvcpus = abc\n")
    err = cli.run("host", expect=2).stderr
    assert "invalid value for option 'vcpus' in [fake] of" in err and str(cli.config) in err
    assert "unexpected" not in err and "LocationInfo" not in err
    err = Cli(tmp_path, "db_auto_upgrade = maybe\n").run("list", expect=2).stderr
    assert "'db_auto_upgrade' in [DEFAULT]" in err


def test_a_config_file_that_is_not_utf8_or_unreadable_is_a_config_error(tmp_path):
    cli = Cli(tmp_path)
    cli.config.write_bytes(b"[DEFAULT]\nhost = caf\xe9\n")
    err = cli.run("list", expect=2).stderr
    assert f"config file {cli.config} is not UTF-8 text" in err and "0xe9" in err
    # read() of /proc/self/mem at offset 0 fails (EIO) even for root, unlike a chmod 000 file
    err = cli.run("--config", "/proc/self/mem", "list", expect=2).stderr
    assert "cannot read config file /proc/self/mem: Input/output error" in err
    err = cli.run("--config", str(tmp_path), "list", expect=2).stderr
    assert f"config file {tmp_path} is not a regular file" in err


def test_a_state_path_that_cannot_be_created_is_a_config_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cli = Cli(tmp_path)
    cli.config.write_text(f"[DEFAULT]\nstate_path = {blocker}/state\n")
    err = cli.run("list", expect=2).stderr
    assert f"cannot create state_path {blocker}/state: Not a directory" in err
    cli.config.write_text(f"[DEFAULT]\nstate_path = {blocker}\n")
    err = cli.run("list", expect=2).stderr
    assert f"state_path {blocker} is not a directory" in err


@pytest.mark.parametrize("info, words", [
    ({"driver_volume_type": "iscsi", "data": [1, 2]}, "'data' must be an object, got an array"),
    ({"driver_volume_type": "iscsi", "data": "x"}, "'data' must be an object, got a string"),
    ({"driver_volume_type": None, "data": {}}, "'driver_volume_type' must be a non-empty string"),
    ({"driver_volume_type": 5, "data": {}}, "'driver_volume_type' must be a non-empty string"),
])
def test_malformed_connection_info_is_a_usage_error(cli, tmp_path, info, words):
    path = tmp_path / "vol.json"
    path.write_text(json.dumps(info))
    err = cli.run("volume", "attach", "vm", str(path), "vdb", expect=2).stderr
    assert words in err, err


def test_unknown_group_is_only_a_warning_and_conformance_is_known(tmp_path):
    cli = Cli(tmp_path, "[someplugin]\nx = 1\n[conformance]\nimage_ref = cirros\n")
    proc = cli.run("list")
    assert "virtkit: warning: config group [someplugin]" in proc.stderr
    assert "conformance" not in proc.stderr


def test_agent_and_recovery_groups_refuse_unknown_options(tmp_path):
    from virt import agent, recovery
    from virt.config import build_conf
    from virt.errors import ConfigError

    path = tmp_path / "x.conf"
    for group, register, typo in (("agent", agent.register_opts, "timeot"),
                                  ("recovery", recovery.register_opts, "paralel")):
        path.write_text(f"[{group}]\n{typo} = 3\n")
        with pytest.raises(ConfigError, match=f"unknown option '{typo}' in \\[{group}\\]"):
            register(build_conf(path))


# -- volumes ----------------------------------------------------------------------------------


def test_a_volume_is_attached_to_one_instance_unless_multiattach(cli, volume_file, tmp_path):
    cli.run("boot", "a", "--image", "cirros", "--flavor", "m1.tiny")
    cli.run("boot", "b", "--image", "cirros", "--flavor", "m1.tiny")
    cli.run("volume", "attach", "a", volume_file, "vdb")
    err = cli.run("volume", "attach", "b", volume_file, "vdb", expect=2).stderr
    assert "volume vol-1 is already attached to a (host cli-host)" in err
    assert cli.json("show", "b")["block_devices"] == []
    cli.run("boot", "c", "--image", "cirros", "--flavor", "m1.tiny", "--volume",
            f"{volume_file}:vdb", expect=2)
    assert "c" not in {i["name"] for i in cli.json("list")}  # refused before any record
    # Multiattach volumes may be shared, when every attachment says so.
    shared = tmp_path / "shared.json"
    shared.write_text(json.dumps(dict(CONNECTION_INFO, serial="vol-m", multiattach=True)))
    cli.run("volume", "attach", "a", str(shared), "vdc")
    cli.run("volume", "attach", "b", str(shared), "vdc")
    cli.run("volume", "detach", "a", "vol-1")
    cli.run("volume", "attach", "b", volume_file, "vdd")  # free again


def test_state_directory_and_database_are_private(cli):
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny")
    # Not listable by others; passable, for a hypervisor reaching instances_path under it.
    assert cli.state.stat().st_mode & 0o777 == 0o711
    for path in cli.state.glob("virtkit.sqlite*"):
        assert path.stat().st_mode & 0o777 == 0o600, path


NOVOL_DRIVER = """
from drivers.fake.driver import FakeDriver
from virt.driver import Capability


class NoVolumeDriver(FakeDriver):
    name = "novol"
    capabilities = frozenset(Capability) - {Capability.VOLUME_ATTACH,
                                            Capability.VOLUME_ISCSI_CHAP}
"""


def test_boot_with_a_volume_on_a_driver_without_volumes_records_nothing(tmp_path, volume_file):
    plugins = tmp_path / "plugins"
    dist_info = plugins / "novol_driver-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (plugins / "novol_driver.py").write_text(textwrap.dedent(NOVOL_DRIVER))
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: novol-driver\n"
                                        "Version: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[virtkit.compute_drivers]\nnovol = novol_driver:NoVolumeDriver\n")
    cli = Cli(tmp_path, "compute_driver = novol\n", pythonpath=str(plugins))
    err = cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny", "--volume",
                  f"{volume_file}:vdb", expect=4).stderr
    assert "does not support volume attach" in err
    assert cli.json("list") == []


# -- schema upgrades --------------------------------------------------------------------------


def _store_at_revision(cli: Cli, revision: str) -> None:
    import sqlalchemy as sa
    from alembic import command

    from virt.store.migrate import alembic_config

    cli.state.mkdir(exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{cli.state / 'virtkit.sqlite'}")
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def test_db_version_and_upgrade_when_auto_upgrade_is_off(tmp_path):
    cli = Cli(tmp_path, "db_auto_upgrade = false\n")
    _store_at_revision(cli, "0001")
    version = cli.json("db", "version")
    assert (version["current"], version["state"], version["up_to_date"]) == (
        ["0001"], "outdated", False)
    assert version["db_auto_upgrade"] is False
    err = cli.run("list", expect=1).stderr
    assert "older than this virtkit needs" in err and "virtkit db upgrade" in err
    assert cli.json("db", "version")["current"] == ["0001"]  # nothing moved it
    upgraded = cli.json("db", "upgrade")
    assert upgraded["before"] == ["0001"] and upgraded["upgraded"] is True
    assert upgraded["after"] == version["head"]
    assert cli.json("db", "upgrade")["upgraded"] is False
    assert "schema already at" in cli.run("db", "upgrade").stdout
    assert cli.json("db", "version")["state"] == "current"
    assert cli.json("list") == []


def test_db_auto_upgrade_on_by_default(cli):
    _store_at_revision(cli, "0001")
    assert cli.json("list") == []
    assert cli.json("db", "version")["state"] == "current"


# -- small things -----------------------------------------------------------------------------


def test_show_events_zero_shows_none(cli):
    cli.run("boot", "vm", "--image", "cirros", "--flavor", "m1.tiny")
    assert cli.json("show", "vm", "--events", "0")["events"] == []
    assert [e["event"] for e in cli.json("show", "vm", "--events", "1")["events"]] == ["spawned"]
    cli.run("show", "vm", "--events", "-1", expect=2)


def test_host_table_shows_supported_instances_readably(cli):
    out = cli.run("host").stdout
    assert "x86_64 / fake / hvm" in out and "('" not in out


def test_a_driver_that_fails_to_load_is_reported_once(tmp_path):
    plugins = tmp_path / "plugins"
    dist_info = plugins / "needy_driver-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (plugins / "needy_driver.py").write_text("import virtkit_no_such_lib_4711\n")
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: needy-driver\n"
                                        "Version: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[virtkit.compute_drivers]\nneedy = needy_driver:Driver\n")
    cli = Cli(tmp_path, "compute_driver = needy\n", pythonpath=str(plugins))
    err = cli.run("list", expect=2).stderr  # run() asserts a single line
    assert "needs the Python module 'virtkit_no_such_lib_4711'" in err
    assert "Could not load" not in err


# -- the demo -----------------------------------------------------------------------------------


def test_demo_ignores_virtkit_config_and_leaves_nothing_when_the_pipe_closes(cli):
    proc = subprocess.Popen([*_command(), "demo"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli.env, cwd=cli.tmp)
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()
    proc.stdout.close()  # like `virtkit demo | head -1`
    _, err = proc.communicate(timeout=60)
    assert "throwaway state directory" in first
    assert b"Traceback" not in err and b"unexpected" not in err
    assert cli.json("list", "--all-hosts") == []  # $VIRTKIT_CONFIG's store never touched


def test_demo_on_an_explicit_config_deletes_its_instance_when_cut_short(tmp_path):
    import signal
    import time

    cli = Cli(tmp_path, "[fake]\nspawn_latency_ms = 3000\n")
    # SIGPIPE: the reader goes away after the first line.
    proc = subprocess.Popen([*_command(), "--config", str(cli.config), "demo"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env)
    assert proc.stdout is not None
    assert str(cli.config) in proc.stdout.readline().decode()
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err, err  # rich exits 1 on EPIPE
    assert b"deleted its instance" in err
    assert cli.json("list", "--all-hosts") == []
    # Ctrl-C in the middle of the boot.
    proc = subprocess.Popen([*_command(), "demo", "--config", str(cli.config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli.env)
    assert proc.stdout is not None
    assert "virtkit demo on driver 'fake'" in proc.stdout.readline().decode()
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"deleted its instance" in err
    assert cli.json("list", "--all-hosts") == []


def test_unreachable_engine_list_and_show_read_the_records_operations_exit_1(cli):
    """The engine cut off (the fake's instances_path made unusable): list and show print the
    stored records with power state unknown and one warning, exit 0; what needs the engine
    exits 1 with the reason, touching no record."""
    web = cli.json("boot", "web", "--image", "cirros", "--flavor", "m1.tiny")
    cli.config.write_text(cli.config.read_text() + "instances_path = /dev/null/x\n")

    listed = cli.run("--format", "json", "list")
    assert [(i["name"], i["vm_state"], i["power_state"]) for i in json.loads(listed.stdout)] \
        == [("web", "active", "unknown")]
    warning = listed.stderr.strip()
    assert warning.startswith("virtkit: warning: the hypervisor cannot be reached (")
    assert "/dev/null/x" in warning and "\n" not in warning and "Traceback" not in warning
    table = cli.run("list")
    assert "unknown" in table.stdout and "running" not in table.stdout
    assert table.stderr.strip() == warning

    shown = cli.run("--format", "json", "show", "web")
    data = json.loads(shown.stdout)
    assert (data["uuid"], data["live_power_state"]) == (web["uuid"], "unknown")
    assert data["power_state"] == "running"  # the stored state is kept as it was
    assert shown.stderr.strip() == warning
    assert "cannot be reached" in cli.run("show", "web").stdout

    for args in (("stop", "web"), ("start", "web"), ("reboot", "web"), ("delete", "web"),
                 ("pause", "web"), ("snapshot", "web", "snap"), ("console", "web"),
                 ("reset-state", "web"), ("boot", "db", "--image", "cirros", "--flavor",
                                          "m1.tiny")):
        failed = cli.run(*args, expect=1)
        assert failed.stderr.startswith("virtkit: error: cannot "), failed.stderr
        assert "/dev/null/x" in failed.stderr
    after = cli.json("list")
    assert len(after) == 1  # no record for the refused boot
    assert {k: after[0][k] for k in ("vm_state", "task_state", "fault", "updated_at")} == \
        {k: web[k] for k in ("vm_state", "task_state", "fault", "updated_at")}
