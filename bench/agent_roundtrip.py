"""keyinit + password round trip through the test xenstore: legacy vs v2.

The real guest service (watch-driven) answers a host AgentClient over the test xenstore's
Unix sockets: one guest per codec, the legacy one configured `offer_v2 = false` like an old
agent, and each client negotiates through `features`. The guests' password setter records
instead of touching a shadow file, so the numbers are the protocol's: two xenstore
request/reply exchanges plus the codec. Runs are interleaved; medians over RUNS each. The
last line is the ratio v2 / legacy.

    .venv/bin/python bench/agent_roundtrip.py [RUNS]
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guest_agent.config import AgentConfig
from guest_agent.service import AgentService
from guest_agent.wire import XenstoreClient
from tests.xenstore.server import XenstoreServer
from virt.agent import AgentClient, XenstoreChannel

V2_DOMID, LEGACY_DOMID = 7, 8


class CountingSetter:
    def __init__(self) -> None:
        self.count = 0

    def set_password(self, user: str, password: str) -> None:
        self.count += 1


def main() -> int:
    logging.basicConfig(level=logging.ERROR)  # the per-call legacy warning is expected here
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    server = XenstoreServer().start()
    setter = CountingSetter()
    services = []
    for domid, offer_v2 in ((V2_DOMID, True), (LEGACY_DOMID, False)):
        server.introduce_domain(domid)
        config = AgentConfig(
            xenstore_path=server.domain_socket(domid),
            poll_interval=1.0,
            user="bench",
            offer_v2=offer_v2,
        )
        service = AgentService(config, setter=setter)
        services.append((service, service.start()))
    dom0 = XenstoreClient(server.path, timeout=10)
    try:
        v2 = AgentClient(XenstoreChannel(dom0, V2_DOMID, poll_interval=1.0), timeout=10)
        legacy = AgentClient(
            XenstoreChannel(dom0, LEGACY_DOMID, poll_interval=1.0), timeout=10, allow_legacy=True
        )
        for client in (v2, legacy):
            client.wait_ready(budget=10)
        assert v2.supports_v2() and not legacy.supports_v2()
        timings: dict[str, list[float]] = {"legacy": [], "v2": []}
        for client, codec in ((legacy, "legacy"), (v2, "v2")):  # warm up
            assert client.set_admin_password("warm-up") == codec
        for i in range(runs):
            for client, codec in (
                ((legacy, "legacy"), (v2, "v2")) if i % 2 else ((v2, "v2"), (legacy, "legacy"))
            ):
                start = time.perf_counter()
                client.set_admin_password(f"password-{i}")
                timings[codec].append(time.perf_counter() - start)
        # The raw engine for scale: one xenstore write + read round trip from dom0.
        raw = []
        for i in range(runs):
            start = time.perf_counter()
            dom0.write("/tool/bench", str(i))
            dom0.read("/tool/bench")
            raw.append(time.perf_counter() - start)
        assert setter.count == 2 * runs + 2
    finally:
        for service, thread in services:
            service.stop()
            thread.join(5)
        dom0.close()
        server.stop()
    legacy_ms = statistics.median(timings["legacy"]) * 1000
    v2_ms = statistics.median(timings["v2"]) * 1000
    print(f"runs per codec: {runs}")
    print(f"raw xenstore write+read (dom0): median {statistics.median(raw) * 1000:.3f} ms")
    print(f"legacy keyinit+password: median {legacy_ms:.3f} ms")
    print(f"v2 keyinit+password:     median {v2_ms:.3f} ms")
    print(f"ratio v2/legacy: {v2_ms / legacy_ms:.2f}x (goal <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
