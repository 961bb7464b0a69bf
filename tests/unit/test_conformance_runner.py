"""scripts/run-conformance: ${VAR} expansion, private expanded configs, exit codes, merging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "run-conformance"

TEMPLATE = """# a comment may mention ${NOT_EXPANDED}
[DEFAULT]
compute_driver = fake
state_path = ${VK_TEST_STATE}

[fake]
chap_credentials = iqn.2010-10.org.x:v2=u:not-a-real-secret-5678

[conformance]
label = ${VK_TEST_LABEL}
image_ref = cirros
# every declared capability exercised (exit 0 says so): volumes and the unreachable engine
volume_connection_info = {"driver_volume_type": "iscsi", "data": {"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.org.x:v1", "target_lun": 1}}
chap_volume_connection_info = {"driver_volume_type": "iscsi", "data": {"target_portal": "127.0.0.1:3260", "target_iqn": "iqn.2010-10.org.x:v2", "target_lun": 1, "auth_method": "CHAP", "auth_username": "u", "auth_password": "not-a-real-secret-5678"}}
unreachable_overrides = DEFAULT.instances_path=/dev/null/unreachable
"""


def run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env}, cwd=REPO)


def test_runs_each_template_and_merges_the_matrix(tmp_path):
    template = tmp_path / "fake.conf.in"
    template.write_text(TEMPLATE)
    matrix = tmp_path / "out" / "matrix"
    first = run([str(template), "--matrix", str(matrix)], VK_TEST_STATE=str(tmp_path / "s1"),
                VK_TEST_LABEL="fake-a")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    second = run([str(template), "--matrix", str(matrix)], VK_TEST_STATE=str(tmp_path / "s2"),
                 VK_TEST_LABEL="fake-b")
    assert second.returncode == 0, second.stderr
    data = json.loads((tmp_path / "out" / "matrix.json").read_text())
    assert set(data["drivers"]) == {"fake-a", "fake-b"}
    assert "fake-a: " in second.stdout and "0 failed" in second.stdout
    assert (tmp_path / "s2" / "instances").is_dir()  # ${VK_TEST_STATE} was expanded


def test_unset_variable_fails_the_run_by_name(tmp_path):
    template = tmp_path / "needs.conf.in"
    template.write_text(TEMPLATE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VK_TEST_")}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(template), "--matrix",
                           str(tmp_path / "m")], capture_output=True, text=True, timeout=120,
                          env=env, cwd=REPO)
    assert proc.returncode == 1
    assert "${VK_TEST_LABEL}, ${VK_TEST_STATE}" in proc.stderr
    assert "NOT_EXPANDED" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failing_driver_run_exits_non_zero(tmp_path):
    template = tmp_path / "bad.conf.in"
    template.write_text("[DEFAULT]\ncompute_driver = no_such_driver\n")
    proc = run([str(template), "--matrix", str(tmp_path / "m")])
    assert proc.returncode == 1
    assert "bad.conf.in (pytest exit" in proc.stderr
