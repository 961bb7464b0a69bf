"""The docker driver against the real dockerd: every operation, checked with the docker CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid

import pytest
from dockertb import (
    container_inspect,
    containers_with_label,
    docker_cli,
    exec_actions,
    make_driver,
)

from drivers.docker import spec
from virt.conformance.fixtures import wait_for
from virt.errors import (
    ImageNotFound,
    InstanceNotFound,
    InvalidRequest,
    InvalidState,
    SpawnError,
    UnsupportedOperation,
    VirtError,
)
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance, PowerState

pytestmark = pytest.mark.docker

SLEEPER = "sleep 3600"  # with docker-init as PID 1, SIGTERM ends it at once


def exec_in(instance: Instance, *cmd: str, stdin: str | None = None) -> str:
    args = ["exec", *(["-i"] if stdin is not None else []), instance.name, *cmd]
    import subprocess

    result = subprocess.run(
        ["docker", *args], input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def nothing_left(instance: Instance) -> bool:
    by_name = docker_cli("ps", "-a", "--filter", f"name=^{instance.name}$", "--format", "{{.ID}}")
    return not by_name and not containers_with_label(f"{spec.LABEL_UUID}={instance.uuid}")


def new_instance(image: str, *, name: str | None = None, flavor: Flavor | None = None,
                 command: str | None = None) -> Instance:
    props = {"os_command_line": command} if command else {}
    return Instance(
        uuid=str(uuid.uuid4()),
        name=name or f"vk-dk-{uuid.uuid4().hex[:10]}",
        flavor=flavor or Flavor("dk.small", 1, 64, 0),
        image=ImageRef(image, properties=props),
    )


# -- spawn and the flavor ------------------------------------------------------------------


def test_spawn_maps_flavor_to_real_limits(driver, spawn, docker_host):
    flavor = Flavor("dk.256", 1, 256, 1, swap_mb=128)
    instance = spawn(flavor=flavor)
    data = container_inspect(instance.name)
    host_config = data["HostConfig"]
    assert host_config["NanoCpus"] == 1_000_000_000
    assert host_config["Memory"] == 256 * 1024 * 1024
    assert host_config["MemorySwap"] == (256 + 128) * 1024 * 1024
    # The kernel enforces it: the container's own cgroup says 256 MiB.
    limit = exec_in(instance, "sh", "-c",
                    "cat /sys/fs/cgroup/memory.max 2>/dev/null"
                    " || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert int(limit.strip()) == 256 * 1024 * 1024
    labels = data["Config"]["Labels"]
    assert labels[spec.LABEL_UUID] == instance.uuid
    assert labels[spec.LABEL_HOST] == docker_host
    assert data["State"]["Running"] is True
    info = driver.get_info(instance=instance)
    assert info.state is PowerState.RUNNING
    assert info.max_mem_kb == 256 * 1024 and info.num_cpu == 1
    assert instance.name in driver.list_instances()
    assert instance.uuid in driver.list_instance_uuids()
    assert driver.instance_exists(instance=instance)
    # root_gb cannot be enforced on overlay2 over ext4: said so, not pretended.
    if driver.root_disk_limit:
        assert host_config["StorageOpt"] == {"size": "1G"}
    else:
        assert "StorageOpt" not in host_config or not host_config["StorageOpt"]


def test_spawn_powered_off_then_power_on(driver, spawn):
    instance = spawn(command=SLEEPER, power_on=False)
    assert container_inspect(instance.name)["State"]["Status"] == "created"
    assert driver.get_info(instance=instance).state is PowerState.SHUTDOWN
    driver.power_on(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    started = container_inspect(instance.name)["State"]["StartedAt"]
    driver.power_on(instance=instance)  # running: a no-op
    assert container_inspect(instance.name)["State"]["StartedAt"] == started


def test_host_resources_count_our_running_containers(driver, spawn):
    before = driver.get_available_resource()
    spawn(flavor=Flavor("dk.2", 1, 96, 0), command=SLEEPER)
    after = driver.get_available_resource()
    assert after.vcpus >= 1 and after.memory_mb > 0 and after.hypervisor_type == "docker"
    assert after.vcpus_used == before.vcpus_used + 1
    assert after.memory_mb_used == before.memory_mb_used + 96
    assert '"api_version"' in after.cpu_info and '"root_disk_limit"' in after.cpu_info


def test_paused_containers_still_count_as_used(driver, spawn):
    instance = spawn(flavor=Flavor("dk.3", 1, 112, 0), command=SLEEPER)
    running = driver.get_available_resource()
    driver.pause(instance=instance)
    try:
        paused = driver.get_available_resource()  # a frozen cgroup keeps its memory
        assert (paused.vcpus_used, paused.memory_mb_used) == (
            running.vcpus_used, running.memory_mb_used)
        driver.power_off(instance=instance, timeout=5)
        stopped = driver.get_available_resource()
        assert stopped.memory_mb_used == running.memory_mb_used - 112
    finally:
        driver.destroy(instance=instance)


def test_foreign_containers_are_invisible_and_untouched(driver, docker_image):
    name = f"vk-foreign-{uuid.uuid4().hex[:8]}"
    docker_cli("run", "-d", "--name", name, docker_image, "sleep", "60")
    try:
        assert name not in driver.list_instances()
        impostor = new_instance(docker_image, name=name)
        with pytest.raises(InstanceNotFound):
            driver.get_info(instance=impostor)
        driver.destroy(instance=impostor)  # not ours: a no-op
        with pytest.raises(SpawnError, match="did not create"):
            driver.spawn(instance=impostor)
        assert container_inspect(name)["State"]["Running"] is True
    finally:
        docker_cli("rm", "-f", name, check=False)


# -- bad input: clear errors, nothing left behind --------------------------------------------


def test_unknown_image_is_image_not_found(driver, docker_image):
    instance = new_instance(f"virtkit-test/no-such-image-{uuid.uuid4().hex[:6]}:1")
    with pytest.raises(ImageNotFound, match="no-such-image"):
        driver.spawn(instance=instance)
    assert nothing_left(instance)


def test_missing_image_id_is_image_not_found_without_a_pull(driver, docker_image):
    instance = new_instance(docker_image)
    for ref in ("sha256:" + "0" * 64, "0" * 12):
        with pytest.raises(ImageNotFound, match="an image id cannot be pulled"):
            driver.spawn(instance=dataclasses.replace(instance, image=ImageRef(ref)))
        assert nothing_left(instance)


def test_unreachable_registry_is_image_not_found_naming_it(driver, docker_image):
    # nobody there
    instance = new_instance(f"127.0.0.1:1/virtkit-test/absent-{uuid.uuid4().hex[:6]}:1")
    with pytest.raises(ImageNotFound, match="registry could not be reached") as err:
        driver.spawn(instance=instance)
    assert "127.0.0.1:1" in str(err.value)
    assert nothing_left(instance)


def test_instance_without_an_image_is_refused(driver, docker_image):
    instance = dataclasses.replace(new_instance(docker_image), image=None)
    with pytest.raises(InvalidRequest, match=f"instance {instance.uuid} has no image"):
        driver.spawn(instance=instance)
    assert nothing_left(instance)


def test_name_docker_refuses(driver, docker_image):
    instance = new_instance(docker_image, name="x")
    with pytest.raises(InvalidRequest, match="at least two characters"):
        driver.spawn(instance=instance)
    assert nothing_left(instance)


@pytest.mark.parametrize(
    "flavor, message",
    [
        (Flavor("dk.huge", 512, 64, 0), "512 vCPUs"),
        (Flavor("dk.tiny", 1, 4, 0), "under docker's 6 MB"),
        (Flavor("dk.eph", 1, 64, 0, ephemeral_gb=5), "ephemeral"),
    ],
)
def test_flavor_docker_cannot_express(driver, docker_image, flavor, message):
    instance = new_instance(docker_image, flavor=flavor)
    with pytest.raises(InvalidRequest, match=message):
        driver.spawn(instance=instance)
    assert nothing_left(instance)


@pytest.fixture(scope="module")
def patient_driver(docker_image, docker_host, tmp_path_factory):
    """A driver whose post-start check waits long: an early exit is always caught."""
    drv = make_driver(tmp_path_factory, docker_host, start_check_seconds=20.0)
    yield drv
    drv.cleanup_host(host=docker_host)


@pytest.mark.parametrize("command", [
    "sh -c 'echo boot-failed-marker; exit 3'",
    # Still "Running" for a single inspect right after start, however idle the host:
    "sh -c 'echo boot-failed-marker; sleep 0.5; exit 3'",
])
def test_container_that_exits_at_once_fails_spawn_with_its_output(patient_driver, docker_image,
                                                                  command):
    instance = new_instance(docker_image, command=command)
    started = time.monotonic()
    with pytest.raises(SpawnError, match=r"code 3.*boot-failed-marker"):
        patient_driver.spawn(instance=instance)
    # docker's wait returned at the exit: the 20 s window is an upper bound, not a delay.
    assert time.monotonic() - started < 10
    assert nothing_left(instance)


def test_spawn_waits_for_the_container_to_stay_up(driver, docker_image, tmp_path_factory,
                                                  docker_host):
    quick = make_driver(tmp_path_factory, docker_host, start_check_seconds=1.5)
    instance = new_instance(docker_image, command=SLEEPER)
    try:
        started = time.monotonic()
        quick.spawn(instance=instance)
        assert time.monotonic() - started >= 1.5  # it watched the container for the window
        assert quick.get_info(instance=instance).state is PowerState.RUNNING
        # An exit after the window is no spawn failure: it reads CRASHED afterwards.
        late = new_instance(docker_image, command="sh -c 'sleep 3; exit 5'")
        quick.spawn(instance=late)
        assert wait_for(lambda: quick.get_info(instance=late).state is PowerState.CRASHED, 10)
        quick.destroy(instance=late)
    finally:
        quick.destroy(instance=instance)
        quick.cleanup_host(host=docker_host)


def test_spawn_twice_is_refused_and_keeps_the_first(driver, spawn):
    instance = spawn(command=SLEEPER)
    first = container_inspect(instance.name)["Id"]
    with pytest.raises(Exception, match="already exists"):
        driver.spawn(instance=instance)
    assert container_inspect(instance.name)["Id"] == first


# -- power ---------------------------------------------------------------------------------


def test_power_off_clean_and_forced(driver, spawn):
    polite = spawn(command=SLEEPER)
    stubborn = spawn(command="sh -c 'trap \"\" TERM; while :; do sleep 1; done'")
    result = driver.power_off(instance=polite, timeout=10)
    assert result.clean and not result.forced and result.duration_s < 10
    result = driver.power_off(instance=stubborn, timeout=1.5, retry_interval=0.5)
    assert result.forced and not result.clean and result.duration_s >= 1.5
    for instance in (polite, stubborn):
        assert container_inspect(instance.name)["State"]["Running"] is False
        assert driver.get_info(instance=instance).state is PowerState.SHUTDOWN
    assert driver.power_off(instance=polite, timeout=1).already_off


def test_pause_unpause_and_reboots(driver, spawn):
    instance = spawn(command=SLEEPER)
    driver.unpause(instance=instance)  # running: a no-op
    driver.pause(instance=instance)
    assert container_inspect(instance.name)["State"]["Paused"] is True
    assert driver.get_info(instance=instance).state is PowerState.PAUSED
    driver.unpause(instance=instance)
    assert driver.get_info(instance=instance).state is PowerState.RUNNING
    first = container_inspect(instance.name)["State"]["StartedAt"]
    driver.reboot(instance=instance, hard=False)
    second = container_inspect(instance.name)["State"]["StartedAt"]
    driver.reboot(instance=instance, hard=True)
    third = container_inspect(instance.name)["State"]
    assert first < second < third["StartedAt"] and third["Running"]
    driver.power_off(instance=instance, timeout=5)
    with pytest.raises(InvalidState, match="cannot pause .*: it is shutdown; pause needs it running"):
        driver.pause(instance=instance)


def test_crash_and_oom_kill_read_crashed(driver, spawn):
    crasher = spawn(command="sh -c 'sleep 1; exit 3'")
    hog = spawn(
        flavor=Flavor("dk.16", 1, 16, 0),
        command="sh -c 'sleep 1; head -c 300000000 /dev/zero | tail'",
    )
    for instance in (crasher, hog):
        assert wait_for(
            lambda i=instance: driver.get_info(instance=i).state is PowerState.CRASHED, 20
        ), container_inspect(instance.name)["State"]
    assert container_inspect(hog.name)["State"]["OOMKilled"] is True


def test_sigkill_not_sent_by_the_driver_reads_crashed(driver, spawn, docker_host,
                                                      tmp_path_factory):
    events = []
    driver.register_event_listener(events.append)
    try:
        assert driver.event_watcher.synced.wait(15)
        killed = spawn(command=SLEEPER)
        stubborn = spawn(command="sh -c 'trap \"\" TERM; while :; do sleep 1; done'")
        docker_cli("kill", killed.name)  # SIGKILL from someone else: exit code 137
        assert container_inspect(killed.name)["State"]["ExitCode"] == 137
        assert driver.get_info(instance=killed).state is PowerState.CRASHED
        result = driver.power_off(instance=stubborn, timeout=1, retry_interval=0.5)
        assert result.forced  # the driver's own SIGKILL: exit code 137 too, but a stop
        assert container_inspect(stubborn.name)["State"]["ExitCode"] == 137
        assert driver.get_info(instance=stubborn).state is PowerState.SHUTDOWN

        def last(instance):
            return [e.transition for e in events if e.instance_uuid == instance.uuid][-1:]

        assert wait_for(lambda: last(killed) == [Transition.CRASHED]), events
        assert wait_for(lambda: last(stubborn) == [Transition.STOPPED]), events
        # The resync reads the same truth as get_info (it inspects stopped containers).
        resynced = driver._containers.states()
        assert resynced[killed.uuid] is PowerState.CRASHED
        assert resynced[stubborn.uuid] is PowerState.SHUTDOWN
        # A restarted compute service (new driver, same state_path) still knows its stop.
        again = make_driver(tmp_path_factory, docker_host, state=driver.conf.state_path)
        try:
            assert again.get_info(instance=stubborn).state is PowerState.SHUTDOWN
            assert again.get_info(instance=killed).state is PowerState.CRASHED
        finally:
            again.cleanup_host(host=docker_host)
        # Started again and killed from outside: that run is a crash.
        driver.power_on(instance=stubborn)
        docker_cli("kill", stubborn.name)
        assert driver.get_info(instance=stubborn).state is PowerState.CRASHED
        assert wait_for(lambda: last(stubborn) == [Transition.CRASHED]), events
    finally:
        driver.unregister_event_listener(events.append)


def test_unknown_instance(driver, docker_image):
    ghost = new_instance(docker_image)
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=ghost)
    assert not driver.instance_exists(instance=ghost)
    driver.destroy(instance=ghost)
    with pytest.raises(InstanceNotFound):
        driver.power_on(instance=ghost)


def test_destroy_removes_and_is_idempotent(driver, spawn):
    instance = spawn(command=SLEEPER)
    driver.destroy(instance=instance)
    assert nothing_left(instance)
    driver.destroy(instance=instance)


# -- guest: console, files, password, snapshot -----------------------------------------------


def test_console_output_shows_what_the_container_printed(driver, spawn):
    instance = spawn(command="sh -c 'echo hello-from-virtkit-console; exec sleep 3600'")
    output = wait_for(
        lambda: "hello-from-virtkit-console" in driver.get_console_output(instance=instance)
    )
    assert output
    assert len(driver.get_console_output(instance=instance, max_bytes=5)) <= 5


def test_inject_file_reads_back(driver, spawn):
    instance = spawn(command=SLEEPER)
    tmp_mode = exec_in(instance, "stat", "-c", "%a", "/tmp").strip()
    driver.inject_file(instance=instance, path="/etc/motd", contents=b"welcome\n")
    driver.inject_file(instance=instance, path="/tmp/new/deep/note.bin", contents=b"\x00\x01x")
    assert exec_in(instance, "cat", "/etc/motd") == "welcome\n"
    assert exec_in(instance, "od", "-An", "-tx1", "/tmp/new/deep/note.bin").split() == [
        "00", "01", "78"
    ]
    assert exec_in(instance, "stat", "-c", "%a", "/tmp").strip() == tmp_mode  # left alone
    with pytest.raises(InvalidRequest):
        driver.inject_file(instance=instance, path="relative/path", contents=b"x")
    with pytest.raises(InvalidRequest):
        driver.inject_file(instance=instance, path="/etc/../etc/passwd", contents=b"x")


def test_set_admin_password_changes_the_shadow_hash(driver, spawn, caplog):
    instance = spawn(command=SLEEPER)
    password = f"Pw-{uuid.uuid4().hex[:12]} with spaces:and:colons"
    before = exec_in(instance, "cat", "/etc/shadow")
    started = time.time() - 1
    with caplog.at_level(logging.DEBUG):
        driver.set_admin_password(instance=instance, password=password)
    shadow = exec_in(instance, "cat", "/etc/shadow")
    hashed = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]
    assert shadow != before and hashed.startswith("$6$") and len(hashed) > 50
    # The hash is of this password: hash it again with the same salt (password on stdin).
    salt = hashed.split("$")[2]
    again = exec_in(instance, "mkpasswd", "-m", "sha512", "-S", salt, stdin=password + "\n")
    assert again.strip() == hashed
    # It never travelled on a command line nor into a log.
    # The daemon's own record of every exec's command line:
    actions = exec_actions(instance.name, since=started)
    assert "exec_create: chpasswd" in [action.strip() for action in actions]
    assert not any(password in action for action in actions)
    assert password not in caplog.text
    with pytest.raises(InvalidRequest):
        driver.set_admin_password(instance=instance, password="two\nlines")


def test_snapshot_boots_and_keeps_changes(driver, spawn):
    source = spawn(command=SLEEPER)
    driver.inject_file(instance=source, path="/root/from-source.txt", contents=b"carried\n")
    name = f"virtkit-test/snap-{uuid.uuid4().hex[:8]}:v1"
    image = driver.snapshot(instance=source, name=name)
    try:
        assert image.ref == name and image.disk_format == "docker"
        clone = spawn(image=image)
        assert driver.get_info(instance=clone).state is PowerState.RUNNING
        assert exec_in(clone, "cat", "/root/from-source.txt") == "carried\n"
        with pytest.raises(InvalidRequest):
            driver.snapshot(instance=source, name="Not A Valid Name")
    finally:
        driver.destroy(instance=clone) if "clone" in locals() else None
        docker_cli("rmi", "-f", name, check=False)


def test_snapshot_carries_no_ownership_so_its_containers_are_not_ours(driver, spawn):
    source = spawn(command=SLEEPER)
    name = f"virtkit-test/snap-{uuid.uuid4().hex[:8]}:v1"
    stray = f"vk-stray-{uuid.uuid4().hex[:8]}"
    driver.snapshot(instance=source, name=name)
    try:
        labels = json.loads(docker_cli("image", "inspect", "-f", "{{json .Config.Labels}}", name))
        assert labels[spec.LABEL_MANAGED] != "1" and labels[spec.LABEL_SNAPSHOT_OF] == source.uuid
        assert not labels[spec.LABEL_UUID] and not labels[spec.LABEL_HOST]
        docker_cli("run", "-d", "--name", stray, name)  # by hand, with the source's command
        assert stray not in driver.list_instances()
        assert driver.list_instance_uuids().count(source.uuid) == 1
        assert driver.get_info(instance=source).internal_id != container_inspect(stray)["Id"]
        driver.destroy(instance=source)
        assert not driver.instance_exists(instance=source)
        driver.destroy(instance=source)  # gone: a no-op that must not find the stray instead
        assert container_inspect(stray)["State"]["Running"] is True
    finally:
        docker_cli("rm", "-f", stray, check=False)
        docker_cli("rmi", "-f", name, check=False)


def test_hung_chpasswd_is_a_virt_error_within_the_call_timeout(spawn, docker_host,
                                                               tmp_path_factory):
    instance = spawn(command=SLEEPER)
    exec_in(instance, "sh", "-c", "printf '#!/bin/sh\\nexec sleep 30\\n' >/bin/chpasswd")
    quick = make_driver(tmp_path_factory, docker_host, call_timeout=2.0)
    password = f"Hung-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    try:
        with pytest.raises(VirtError, match="did not finish within 2s") as err:
            quick.set_admin_password(instance=instance, password=password)
    finally:
        quick.cleanup_host(host=docker_host)
    assert time.monotonic() - started < 10
    assert password not in str(err.value)


def test_set_admin_password_without_chpasswd(driver, spawn):
    source = spawn(command=SLEEPER)
    exec_in(source, "rm", "/bin/chpasswd")
    name = f"virtkit-test/nochpasswd-{uuid.uuid4().hex[:8]}:v1"
    image = driver.snapshot(instance=source, name=name)
    try:
        bare = spawn(image=image)
        with pytest.raises(UnsupportedOperation, match="no chpasswd"):
            driver.set_admin_password(instance=bare, password="whatever-1")
        driver.destroy(instance=bare)
    finally:
        docker_cli("rmi", "-f", name, check=False)


# -- events --------------------------------------------------------------------------------


def test_lifecycle_events_from_the_daemon(driver, spawn):
    events = []
    driver.register_event_listener(events.append)
    try:
        assert driver.event_watcher.synced.wait(15)
        instance = spawn(command=SLEEPER)
        driver.pause(instance=instance)
        driver.unpause(instance=instance)
        driver.power_off(instance=instance, timeout=5)
        crasher = spawn(command="sh -c 'sleep 1; exit 7'")

        def seen(uuid_, transition):
            return any(e.instance_uuid == uuid_ and e.transition is transition for e in events)

        expected = [(instance.uuid, t) for t in (
            Transition.STARTED, Transition.PAUSED, Transition.RESUMED, Transition.STOPPED)]
        expected.append((crasher.uuid, Transition.CRASHED))
        assert wait_for(lambda: all(seen(*e) for e in expected), 15), events
        ours = [e.transition for e in events if e.instance_uuid == instance.uuid]
        assert ours[:4] == [t for _, t in expected[:4]]
    finally:
        driver.unregister_event_listener(events.append)


def test_spawn_with_admin_password(driver, spawn):
    instance = spawn(command=SLEEPER, admin_password="Spawn-time-pw-1")
    hashed = exec_in(instance, "cat", "/etc/shadow").split(":")[1]
    salt = hashed.split("$")[2]
    again = exec_in(instance, "mkpasswd", "-m", "sha512", "-S", salt, stdin="Spawn-time-pw-1\n")
    assert again.strip() == hashed


def test_a_reboot_is_not_reported_as_a_shutdown(docker_image, docker_host, tmp_path_factory):
    """With the default stopped_event_delay, the die + start of a reboot (the driver's soft
    and hard ones, and a `docker restart` from outside) is one STARTED each, never a
    STOPPED; a real power-off still is one, once the delay has passed."""
    from drivers.docker.options import STOPPED_EVENT_DELAY

    driver = make_driver(tmp_path_factory, docker_host, event_window=1.0)
    events = []
    driver.register_event_listener(events.append)
    instance = new_instance(docker_image, command=SLEEPER)
    try:
        assert driver.event_watcher.synced.wait(15)
        driver.spawn(instance=instance)

        def mine():
            return [e.transition for e in events if e.instance_uuid == instance.uuid]

        assert wait_for(lambda: mine() == [Transition.STARTED], 10), events
        driver.reboot(instance=instance, hard=False, timeout=5)
        driver.reboot(instance=instance, hard=True)
        docker_cli("restart", "-t", "1", instance.name)
        assert wait_for(lambda: mine().count(Transition.STARTED) == 4, 15), mine()
        time.sleep(STOPPED_EVENT_DELAY + 1)  # a held STOPPED would have been delivered
        assert mine() == [Transition.STARTED] * 4
        driver.power_off(instance=instance, timeout=5)
        assert wait_for(lambda: mine()[-1:] == [Transition.STOPPED], STOPPED_EVENT_DELAY + 10)
    finally:
        driver.unregister_event_listener(events.append)
        driver.destroy(instance=instance)
        driver.cleanup_host(host=docker_host)
