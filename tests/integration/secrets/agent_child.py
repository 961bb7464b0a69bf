"""Child process of the whole-run proof: set an admin password through the guest agent,
legacy then v2, host AgentClient against the test xenstore and the real guest AgentService
in this process. The two passwords come on stdin (one a line), never argv; logs at DEBUG go
to stderr. Prints `<protocol> ok` per password set."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

from guest_agent.config import AgentConfig
from guest_agent.service import AgentService
from guest_agent.wire import XenstoreClient
from tests.xenstore import TEST_DOMID
from tests.xenstore.checks import assert_crypt_matches
from tests.xenstore.server import XenstoreServer
from virt.agent import AgentClient, XenstoreChannel

SHADOW = "root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n"


def set_password(root: Path, password: str, *, legacy: bool) -> str:
    """One guest (offering v2 or not), one password set through it; the protocol used."""
    server = XenstoreServer().start()
    try:
        server.introduce_domain(TEST_DOMID, "guest-7")
        shadow = root / "shadow"
        shadow.write_text(SHADOW)
        shadow.chmod(0o640)
        config = AgentConfig(transport="xenstore", xenstore_path=server.domain_socket(TEST_DOMID),
                             poll_interval=0.2, user="admin", password_method="shadow",
                             shadow_path=str(shadow), offer_v2=not legacy)
        service = AgentService(config)
        thread = service.start()
        try:
            with XenstoreClient(server.path, timeout=5) as dom0:
                client = AgentClient(XenstoreChannel(dom0, TEST_DOMID, poll_interval=0.2),
                                     timeout=10, version_timeout=10, allow_legacy=legacy)
                used = client.set_admin_password(password)
        finally:
            service.stop()
            thread.join(5)
        admin = next(line for line in shadow.read_text().splitlines()
                     if line.startswith("admin:"))
        assert_crypt_matches(admin.split(":")[1], password)
        return used
    finally:
        server.stop()


def main() -> int:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    legacy_password, v2_password = sys.stdin.read().splitlines()[:2]
    with tempfile.TemporaryDirectory(prefix="vk-agent-") as tmp:
        for password, legacy in ((legacy_password, True), (v2_password, False)):
            used = set_password(Path(tmp), password, legacy=legacy)
            print(f"{used} ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
