"""The libvirt driver lists, counts, finds and removes only virtkit's domains (those with its
<metadata> element), on libvirt's embedded test driver; and on test:/// it does not claim
volumes."""

from __future__ import annotations

import time
import uuid

import libvirt
import pytest

from drivers.libvirt import domains, events
from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.xml import VIRTKIT_NS
from virt.config import build_conf
from virt.driver import Capability
from virt.errors import InstanceExists, InstanceNotFound
from virt.events import Transition
from virt.model import Flavor, ImageRef, Instance

XML = ("<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
       "<memory unit='MiB'>512</memory><vcpu>3</vcpu>{metadata}"
       "<os><type>hvm</type></os></domain>")
OURS = f"<metadata><vk:instance xmlns:vk='{VIRTKIT_NS}'/></metadata>"
THEIRS = "<metadata><app:thing xmlns:app='https://example.org/other-tool/1'/></metadata>"


@pytest.fixture
def conn():
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt.open("test:///default")


@pytest.fixture
def define(conn):
    made: list[libvirt.virDomain] = []

    def make(metadata: str, *, start: bool = True) -> Instance:
        uid = str(uuid.uuid4())
        name = f"own-{uid[:8]}"
        dom = conn.defineXML(XML.format(name=name, uuid=uid, metadata=metadata))
        if start:
            dom.create()
        made.append(dom)
        return Instance(uuid=uid, name=name, flavor=Flavor("f", 3, 512))

    yield make
    for dom in made:
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass  # removed by the test


@pytest.fixture
def driver(tmp_path):
    conf = build_conf(overrides={"state_path": str(tmp_path / "state")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    drv = LibvirtDriver(conf)
    drv.init_host(host="own")
    yield drv
    drv.cleanup_host(host="own")


def test_only_domains_with_virtkit_metadata_are_ours(conn, define):
    ours, theirs, bare = define(OURS), define(THEIRS), define("")
    ownership = domains.Ownership()
    listed = ownership.ours(conn.listAllDomains(0))
    uuids = {d.UUIDString() for d in listed}
    assert ours.uuid in uuids and theirs.uuid not in uuids and bare.uuid not in uuids
    assert "test" not in {d.name() for d in listed}  # the test driver's own domain
    for inst, mine in ((ours, True), (theirs, False), (bare, False)):
        assert ownership.is_ours(conn.lookupByUUIDString(inst.uuid), inst.uuid) is mine
    assert ownership.is_ours(None, ours.uuid) is False


def test_a_verdict_is_read_once_per_domain(conn, define):
    define(OURS)
    define("")
    ownership = domains.Ownership()
    ownership.ours(conn.listAllDomains(0))
    calls = []

    class Counting:
        def __init__(self, dom):
            self.dom = dom

        def __getattr__(self, name):
            if name == "metadata":
                calls.append(name)
            return getattr(self.dom, name)

    again = ownership.ours([Counting(d) for d in conn.listAllDomains(0)])
    assert calls == [] and again


def test_claim_forget_and_gone_domains(conn, define):
    ownership = domains.Ownership()
    bare = define("")
    dom = conn.lookupByUUIDString(bare.uuid)
    assert not ownership.is_ours(dom, bare.uuid)
    ownership.claim(bare.uuid)  # the driver defined it: its verdict is replaced
    assert ownership.is_ours(dom, bare.uuid)
    assert bare.uuid in {d.UUIDString() for d in ownership.ours(conn.listAllDomains(0))}
    ownership.forget(bare.uuid)
    assert not ownership.is_ours(dom, bare.uuid)  # read again: no metadata
    ownership.forget("not-a-uuid")  # nothing to forget, no error


def test_verdicts_of_domains_no_longer_listed_are_dropped(conn, define):
    ownership = domains.Ownership()
    for _ in range(3):
        ownership.claim(str(uuid.uuid4()))  # domains since undefined elsewhere
    ours = define(OURS)
    listed = conn.listAllDomains(0)
    ownership.SLACK = 0
    ownership.ours(listed, every=False)  # a partial listing drops nothing
    assert len(ownership._verdicts) >= 2 * 3
    assert ours.uuid in {d.UUIDString() for d in ownership.ours(listed)}
    assert len(ownership._verdicts) == 2 * len(listed)


def test_driver_never_lists_finds_counts_or_destroys_another_s_domain(driver, conn, define):
    before = driver.get_available_resource()
    theirs = define("")
    assert theirs.uuid not in driver.list_instance_uuids()
    assert theirs.name not in driver.list_instances()
    assert driver.instance_exists(instance=theirs) is False
    with pytest.raises(InstanceNotFound):
        driver.get_info(instance=theirs)
    with pytest.raises(InstanceNotFound):
        driver.power_off(instance=theirs, timeout=0)
    after = driver.get_available_resource()
    assert after.vcpus_used == before.vcpus_used
    assert after.memory_mb_used == before.memory_mb_used  # the test driver counts guests
    driver.destroy(instance=theirs)  # a no-op for someone else's domain
    dom = conn.lookupByUUIDString(theirs.uuid)
    assert dom.isActive() == 1
    # spawn never redefines it either
    with pytest.raises(InstanceExists):
        driver.spawn(instance=Instance(uuid=theirs.uuid, name="vkt-clash",
                                       flavor=Flavor("f", 1, 64), image=ImageRef("/x")))


def test_driver_lists_and_counts_virtkit_domains_it_did_not_define_itself(driver, define):
    before = driver.get_available_resource()
    ours = define(OURS)  # e.g. defined by this driver in an earlier process
    assert ours.uuid in driver.list_instance_uuids()
    assert driver.instance_exists(instance=ours)
    after = driver.get_available_resource()
    assert after.vcpus_used == before.vcpus_used + 3
    driver.destroy(instance=ours)
    assert not driver.instance_exists(instance=ours)


def test_test_driver_does_not_claim_volumes(driver):
    assert Capability.VOLUME_ATTACH in LibvirtDriver.capabilities
    assert Capability.VOLUME_ATTACH not in driver.connection_capabilities
    assert Capability.VOLUME_ISCSI_CHAP not in driver.connection_capabilities
    assert driver.supports(Capability.SNAPSHOT)


def test_lifecycle_events_and_listed_states_are_only_of_virtkit_s_domains(conn, define):
    ours, theirs = define(OURS), define(THEIRS)
    ownership = domains.Ownership()
    states = events.list_power_states(conn, ownership)
    assert ours.uuid in states and theirs.uuid not in states
    got: list = []
    lifecycle = events.LibvirtEvents(got.append, stopped_delay=0, ownership=ownership)
    try:
        for instance in (theirs, ours):
            dom = conn.lookupByUUIDString(instance.uuid)
            lifecycle.push(dom, libvirt.VIR_DOMAIN_EVENT_STARTED, 0, conn)
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # room for an event that should never come
    finally:
        lifecycle.stop()
    assert [(e.instance_uuid, e.transition) for e in got] == [(ours.uuid, Transition.STARTED)]
