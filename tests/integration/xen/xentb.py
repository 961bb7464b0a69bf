"""The nested Xen test bed from the host (scripts/testbed.d/xen.sh): dom0, the store, the guest.

- `dom0(script)` runs a shell script in dom0 (VIRTKIT_TEST_XEN_DOM0).
- `store()` is a xenstore client on dom0's real xenstored (VIRTKIT_TEST_XENSTORED_PATH).
- `GuestProbe` runs a command inside a PV guest through the test image's probe
  (scripts/xen/virtkit-testbed-probe), over the real store: how the tests look inside.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import uuid

from guest_agent.wire import XenstoreClient, XenstoreError

AGENT_GUEST = "agent-guest"  # scripts/xen/agent-guest.cfg
PROBE = "data/virtkit-probe"

# Inside the guest: does the password on stdin authenticate against USER's shadow entry?
CHECK_PASSWORD = """
import crypt, sys
user, password = sys.argv[1], sys.stdin.read()
for line in open("/etc/shadow"):
    fields = line.rstrip("\\n").split(":")
    if fields[0] == user:
        hashed = fields[1]
        ok = hashed.startswith("$") and crypt.crypt(password, hashed) == hashed
        print("match" if ok else "no-match", hashed[:3])
        break
else:
    print("no-user")
"""


def dom0(script: str, *, timeout: float = 120.0) -> tuple[int, str]:
    """Run `script` in dom0; (exit code, output with stderr)."""
    result = subprocess.run(
        [os.environ["VIRTKIT_TEST_XEN_DOM0"], script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def store(timeout: float = 10.0) -> XenstoreClient:
    return XenstoreClient(os.environ["VIRTKIT_TEST_XENSTORED_PATH"], timeout=timeout)


def domid_of(client: XenstoreClient, name: str) -> int | None:
    """The id of the running domain called `name`, from the store."""
    for entry in client.directory("/local/domain"):
        if client.read_text(f"/local/domain/{entry}/name") == name:
            return int(entry)
    return None


def wait_domid(client: XenstoreClient, name: str, budget: float) -> int:
    deadline = time.monotonic() + budget
    while True:
        domid = domid_of(client, name)
        if domid is not None:
            return domid
        if time.monotonic() > deadline:
            raise TimeoutError(f"no domain {name!r} in the store within {budget:g}s")
        time.sleep(0.5)


class GuestProbe:
    """Runs commands in one PV guest through its probe (request/reply keys in its data/)."""

    def __init__(self, client: XenstoreClient, domid: int) -> None:
        self.client = client
        self.base = f"/local/domain/{domid}/{PROBE}"

    def ready(self) -> bool:
        return self.client.exists(f"{self.base}/request")

    def run(
        self, argv: list[str], *, stdin: bytes = b"", timeout: float = 60.0
    ) -> tuple[int, bytes]:
        """(exit code, output) of `argv` in the guest (no shell); output ends truncated."""
        name = uuid.uuid4().hex
        request = {"argv": argv, "stdin": base64.b64encode(stdin).decode(), "timeout": timeout}
        reply_path = f"{self.base}/reply/{name}"
        self.client.write(f"{self.base}/request/{name}", json.dumps(request))
        deadline = time.monotonic() + timeout + 10
        try:
            while time.monotonic() < deadline:
                text = self.client.read_text(reply_path)
                if text is not None:
                    reply = json.loads(text)
                    return int(reply["rc"]), base64.b64decode(reply["out"])
                time.sleep(0.1)
        finally:
            for path in (f"{self.base}/request/{name}", reply_path):
                try:
                    self.client.rm(path)
                except XenstoreError:
                    pass
        raise TimeoutError(f"the guest's probe did not answer {argv[0]!r}")

    def check_password(self, password: str, user: str = "root") -> str:
        """ "match" when `password` authenticates as `user` in the guest, else "no-match"."""
        rc, out = self.run(
            ["python3", "-W", "ignore", "-c", CHECK_PASSWORD, user], stdin=password.encode("utf-8")
        )
        assert rc == 0, out
        return out.decode().split()[0]

    def read_file(self, path: str) -> bytes:
        rc, out = self.run(["cat", path])
        assert rc == 0, out
        return out
