"""The whole-run proof's harness finds a secret wherever it is put: in a traced command's
argv or environment, in a process only the /proc sampler sees, in what a command prints, and in
store rows (a keyless store keeps CHAP in plain text; a sealed one does not)."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

from tests.secrets_watch import SecretsWatch
from tests.volumes import CHAP_CONNECTION_INFO, CHAP_SECRET
from virt.model import BlockDevice, Flavor, ImageRef, Instance, VolumeConnection, new_uuid
from virt.store import Store


def _store_with_chap(url: str, key_file=None) -> None:
    with Store(url, secret_key_file=key_file) as store:
        record = store.create_instance(Instance(uuid=new_uuid(), name="vm", host="h",
                                                flavor=Flavor("f", 1, 64), image=ImageRef("i")))
        store.add_block_device(record.uuid, BlockDevice(
            VolumeConnection.from_connection_info(CHAP_CONNECTION_INFO), "/dev/vdb"))


def test_every_channel_is_seen(tmp_path):
    in_argv, in_env, printed, sampled = (f"S{n}-{secrets.token_hex(6)}" for n in range(4))
    with SecretsWatch(tmp_path) as watch:
        watch.run(["sh", "-c", f"true {in_argv}; env >/dev/null"],
                  env={**os.environ, "SOME_VAR": in_env})
        watch.run(["sh", "-c", f"echo {printed[:3]}''{printed[3:]}"])
        hidden = subprocess.Popen(["sh", "-c", "sleep 1", sampled])  # not traced: only /proc sees it
        time.sleep(0.3)
        hidden.wait()
        _store_with_chap(f"sqlite:///{tmp_path / 'plain.sqlite'}")
        _store_with_chap(f"sqlite:///{tmp_path / 'sealed.sqlite'}", tmp_path / "secret.key")
        assert watch.add_database("plain store", f"sqlite:///{tmp_path / 'plain.sqlite'}") > 0
        assert watch.add_database("sealed store", f"sqlite:///{tmp_path / 'sealed.sqlite'}") > 0
    leaks = watch.leaks({"argv": in_argv, "env": in_env, "printed": printed,
                         "sampled": sampled, "chap": CHAP_SECRET})
    assert "argv in execve of command 1 (sh)" in leaks
    assert "env in execve of command 1 (sh)" in leaks
    assert "printed in stdout of command 2 (sh)" in leaks
    assert not any(leak.startswith("printed in execve") for leak in leaks)  # split on argv
    assert any(leak.startswith("sampled in /proc of pid") for leak in leaks)
    assert "chap in plain store table block_devices" in leaks
    assert not any(leak.startswith("chap in sealed store") for leak in leaks)
    assert watch.execs >= 2 and watch.commands == 2
