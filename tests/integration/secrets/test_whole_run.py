"""The whole-run proof (issue 16): a scenario run end to end with every process it starts
recorded (strace execve with argv and environment, plus /proc sampled for daemons' children
such as libvirtd's QEMU), every log line (--debug / -v), every printed line, every row of every
store and libvirt's qemu log of the domain; none of the secrets used appears in any of it.

Scenario: on libvirt-qemu the tiny guest boots with a CHAP volume, a second CHAP volume is
attached and detached, show/list; an admin password is set through the guest agent, legacy and
v2; virtkit-recover re-homes a failed host's instance with a CHAP volume from a Nova database
on PostgreSQL whose URL has a password.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests import libvirt_helpers as guest
from tests.integration.recovery.test_recover_cli import (
    NOVA_DDL,
    add_nova_bdm,
    add_nova_instance,
    nova_iscsi_info,
)
from tests.iscsi_target import tgtd_available
from tests.secrets_watch import SecretsWatch, private_file
from tests.testbed import env, require

pytestmark = [pytest.mark.slow, pytest.mark.libvirt_qemu, pytest.mark.iscsi,
              pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[3]
VIRTKIT = [sys.executable, "-m", "virt.cli.main"]
RECOVER = [sys.executable, "-m", "virt.cli.recover"]
NOVA_UUID = "5ec7e75e-0000-4000-8000-000000000001"


@contextlib.contextmanager
def nova_database_with_password() -> Iterator[tuple[str, str]]:
    """A Nova database on the test bed's PostgreSQL owned by a new role with a password,
    reached over TCP on 127.0.0.1: (URL with the password, the password)."""
    admin = sa.create_engine(env("VIRTKIT_TEST_PG_URL"), isolation_level="AUTOCOMMIT")
    token = secrets.token_hex(5)
    role, database, password = f"vk_nova_{token}", f"vk_nova_{token}", f"Db-{secrets.token_hex(8)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            conn.exec_driver_sql(f"CREATE DATABASE {database} OWNER {role}")
    except sa.exc.OperationalError as exc:
        admin.dispose()
        require(False, f"PostgreSQL ({exc.orig})")
    try:
        yield f"postgresql://{role}:{password}@127.0.0.1:5432/{database}", password
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def write_libvirt_conf(work: Path) -> Path:
    path = work / "virtkit.conf"
    path.write_text("\n".join([
        "[DEFAULT]", "compute_driver = libvirt", "host = secrets-host",
        f"state_path = {work / 'state'}",
        "[libvirt]", f"connection_uri = {guest.URI}",
        f"virt_type = {env('VIRTKIT_TEST_VIRT_TYPE')}", f"images_path = {work / 'images'}",
    ]) + "\n")
    return path


def run_ok(watch: SecretsWatch, argv: list[str], **kwargs) -> str:
    done = watch.run(argv, cwd=REPO, **kwargs)
    assert done.returncode == 0, (argv[2:5], done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout


def wait_console(watch: SecretsWatch, config: Path, name: str, pattern: str) -> str:
    deadline = time.monotonic() + 120
    out = ""
    while time.monotonic() < deadline:
        out = run_ok(watch, [*VIRTKIT, "console", name, "--config", str(config)])
        if re.search(pattern, out):
            return out
        time.sleep(2)
    raise AssertionError(f"{pattern!r} not on the console:\n{out[-2000:]}")


def libvirt_part(watch: SecretsWatch, work: Path, chap1, chap2) -> None:
    """boot with a CHAP volume, attach/detach another, show/list, console; then delete."""
    config = write_libvirt_conf(work)
    vol1 = private_file(work, "vol1.json", json.dumps(chap1.connection_info()))
    vol2 = private_file(work, "vol2.json", json.dumps(chap2.connection_info()))
    image = guest.tiny_guest_image()
    name = f"vk-secrets-{secrets.token_hex(3)}"
    cli = [*VIRTKIT]
    common = ["--config", str(config), "--debug"]
    booted = json.loads(run_ok(watch, [
        *cli, "boot", name, *common, "--format", "json", "--image", image.ref,
        "--kernel", str(image.kernel), "--ramdisk", str(image.ramdisk), "--vcpus", "1",
        "--memory-mb", "128", "--disk-gb", "1", "--volume", f"{vol1}:/dev/vdb"]))
    uuid = booted["uuid"]
    store = f"sqlite:///{work / 'state' / 'virtkit.sqlite'}"
    try:
        wait_console(watch, config, name, rf"name=vdb sectors={chap1.size_bytes // 512}")
        run_ok(watch, [*cli, "volume", "attach", name, str(vol2), "/dev/vdc", *common])
        assert "vdc" in guest.virsh("domblklist", uuid)
        shown = json.loads(run_ok(watch, [*cli, "show", name, *common, "--format", "json"]))
        assert sorted(v["mountpoint"] for v in shown["block_devices"]) == ["/dev/vdb", "/dev/vdc"]
        run_ok(watch, [*cli, "show", name, *common])
        run_ok(watch, [*cli, "list", *common])
        run_ok(watch, [*cli, "list", *common, "--format", "json"])
        run_ok(watch, [*cli, "volume", "detach", name, "/dev/vdc", *common])
        assert "vdc" not in guest.virsh("domblklist", uuid)
        domain = guest.virsh("domname", uuid).strip()
        watch.add("domain XML", guest.virsh("dumpxml", uuid))
        watch.add_database("virtkit store (running)", store)
    finally:
        run_ok(watch, [*cli, "delete", name, *common])
    watch.add_database("virtkit store (after delete)", store)
    qemu_log = Path("/var/log/libvirt/qemu", f"{domain}.log")
    assert qemu_log.exists(), qemu_log
    watch.add_file("libvirt qemu log", qemu_log)
    for path in (work / "state").glob("virtkit.sqlite*"):  # the bytes at rest, free pages too
        watch.add_file(f"store file {path.name}", path)


def nova_bdm_rows(nova: sa.Engine) -> list[dict]:
    with nova.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.text("SELECT * FROM block_device_mapping ORDER BY id")).mappings()]


def recovery_part(watch: SecretsWatch, work: Path, nova_url: str, chap3) -> None:
    """virtkit-recover of a failed Nova host's instance with a CHAP volume (fake driver)."""
    nova = sa.create_engine(nova_url)
    try:
        with nova.begin() as conn:
            for ddl in NOVA_DDL["postgresql"]:
                conn.exec_driver_sql(ddl)
            add_nova_instance(conn, 1, NOVA_UUID)
            add_nova_bdm(conn, NOVA_UUID, "/dev/vdb", nova_iscsi_info(chap3))
        config = work / "recover.conf"
        config.write_text("\n".join([
            "[DEFAULT]", "compute_driver = fake", f"state_path = {work / 'recover-state'}",
            f"state_connection = sqlite:///{work / 'recover.sqlite'}"]) + "\n")
        bdm_rows = nova_bdm_rows(nova)
        url_file = private_file(work, "nova-db.url", nova_url + "\n")
        done = watch.run([*RECOVER, "--config", str(config), "--failed-host", "nova-a",
                          "--confirm-fenced", "--nova-db-file", str(url_file), "--host", "nova-b",
                          "--format", "json", "-v"], cwd=REPO)
        assert done.returncode == 0, done.stdout + done.stderr
        (item,) = json.loads(done.stdout)["instances"]
        assert item["outcome"] == "recovered"
        assert [(v["mountpoint"], v["size_bytes"]) for v in item["volumes"]] == [
            ("/dev/vdb", chap3.size_bytes)]
        # Nova's own block_device_mapping holds the CHAP password as Nova wrote it: virtkit
        # leaves it as it was; every other row is checked.
        assert nova_bdm_rows(nova) == bdm_rows
        watch.add_database("Nova database", nova, tables=[
            name for name in sa.inspect(nova).get_table_names() if name != "block_device_mapping"])
        watch.add_database("recovery store", f"sqlite:///{work / 'recover.sqlite'}")
        for path in (work / "recover-state").rglob("*.json"):  # the fake hypervisor's records
            watch.add_file(f"fake hypervisor {path.name}", path)
    finally:
        nova.dispose()


def test_no_secret_leaves_a_whole_run(capsys):
    require(guest.libvirt_up(), "libvirtd with qemu:///system")
    require(tgtd_available(), "tgtd (iSCSI target)")
    with guest.qemu_workdir("virtkit-secrets-") as work, guest.lun_factory(work) as luns, \
            nova_database_with_password() as (nova_url, db_password):
        # Made before the watch: tgtadm, the test target's admin tool, takes CHAP on argv.
        chap1, chap2, chap3 = (luns.create(size_mb=size, chap=True) for size in (16, 8, 4))
        admin_legacy = f"Adm-legacy-{secrets.token_hex(8)}"
        admin_v2 = f"Adm-v2-{secrets.token_hex(8)}"
        watched = {"CHAP password 1": chap1.password, "CHAP password 2": chap2.password,
                   "CHAP password 3 (Nova)": chap3.password, "admin password (legacy)":
                   admin_legacy, "admin password (v2)": admin_v2,
                   "Nova DB password": db_password}
        (work / "watch").mkdir()
        with SecretsWatch(work / "watch") as watch:
            libvirt_part(watch, work, chap1, chap2)
            agent = watch.run([sys.executable, str(Path(__file__).with_name("agent_child.py"))],
                              stdin=f"{admin_legacy}\n{admin_v2}\n", cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
            assert agent.returncode == 0, agent.stderr[-3000:]
            assert agent.stdout.split("\n")[:2] == ["legacy ok", "v2 ok"]
            recovery_part(watch, work, nova_url, chap3)
            watch.sample()
        leaks = watch.leaks(watched)
        with capsys.disabled():
            print(f"\nwhole-run secrets proof: {watch.commands} commands, {watch.execs} "
                  f"processes recorded by strace, {watch.processes_sampled} sampled from /proc, "
                  f"{len(watch.all_texts())} sources, {watch.lines_scanned()} lines scanned, "
                  f"{len(watched)} secrets, {len(leaks)} leaks")
        assert watch.execs >= watch.commands and watch.processes_sampled > watch.commands
        assert any("qemu-system" in text for source, text in watch.all_texts()
                   if source.startswith("/proc")), "the sampler saw no QEMU"
        assert leaks == []

