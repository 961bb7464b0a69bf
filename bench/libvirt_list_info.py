"""list_instances + get_info of 1,000 domains on test:///default: driver vs raw libvirt.

The domains carry virtkit's <metadata> element, as the driver's spawn writes it, and
FOREIGN more domains without it (someone else's) share the connection: the driver lists only
virtkit's. Raw is a minimal client given the instances' UUIDs: one listAllDomains, then per
domain lookupByUUIDString + info(). The driver keeps the domain handles it looked up (libvirt
resolves a handle by UUID on every call) and which domains are virtkit's (read once per
domain), so after its first pass (printed apart) it makes one info() round trip per domain.
Both sides get one warm-up pass. Goal: <= 1.2x.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt

from drivers.libvirt.driver import LibvirtDriver
from drivers.libvirt.xml import VIRTKIT_NS
from virt.config import build_conf
from virt.model import Flavor, Instance

N = 1000
FOREIGN = 100
XML = ("<domain type='test'><name>{name}</name><uuid>{uuid}</uuid><memory>65536</memory>"
       "{metadata}<os><type>hvm</type></os></domain>")
METADATA = f"<metadata><vk:instance xmlns:vk='{VIRTKIT_NS}'/></metadata>"


def main() -> None:
    conf = build_conf(overrides={"state_path": tempfile.mkdtemp(prefix="virtkit-bench-")})
    LibvirtDriver.register_opts(conf)
    conf.set_override("connection_uri", "test:///default", group="libvirt")
    driver = LibvirtDriver(conf)
    driver.init_host(host="bench")
    conn = libvirt.open("test:///default")
    flavor = Flavor("b", 1, 64)
    instances = []
    for i in range(N):
        uid = str(uuid.uuid4())
        conn.defineXML(XML.format(name=f"li-{i}", uuid=uid, metadata=METADATA)).create()
        instances.append(Instance(uuid=uid, name=f"li-{i}", flavor=flavor))
    foreign = [conn.defineXML(XML.format(name=f"other-{i}", uuid=uuid.uuid4(), metadata=""))
               for i in range(FOREIGN)]

    def raw() -> float:
        began = time.perf_counter()
        names = [d.name() for d in conn.listAllDomains(0)]
        for inst in instances:
            conn.lookupByUUIDString(inst.uuid).info()
        assert len(names) >= N + FOREIGN
        return time.perf_counter() - began

    def drv() -> float:
        began = time.perf_counter()
        names = driver.list_instances()
        for inst in instances:
            driver.get_info(instance=inst)
        assert len(names) == N  # virtkit's only
        return time.perf_counter() - began

    raw()
    cold = drv()
    r = min(raw() for _ in range(5))
    d = min(drv() for _ in range(5))
    for inst in instances:
        dom = conn.lookupByUUIDString(inst.uuid)
        dom.destroy()
        dom.undefine()
    for dom in foreign:
        dom.undefine()
    print(f"raw libvirt: list + {N} get_info in {r * 1e3:.1f} ms ({FOREIGN} foreign domains)")
    print(f"driver:      list + {N} get_info in {d * 1e3:.1f} ms "
          f"(first pass, looking every domain up: {cold * 1e3:.1f} ms)")
    print(f"ratio driver/raw: {d / r:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
