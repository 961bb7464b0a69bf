"""`python -m tests.xapi_sim` as the test bed runs it: password from a file, URL file, check, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.xapi_sim.helpers import XenAPI

ROOT = Path(__file__).resolve().parents[3]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "tests.xapi_sim", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30, **kw)


@pytest.fixture
def service(tmp_path):
    pw = tmp_path / "password"
    pw.write_text("svc-pw-42\n")
    pw.chmod(0o600)
    url_file = tmp_path / "url"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.xapi_sim", "--password-file", str(pw), "--url-file",
         str(url_file)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 20
    while not url_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    yield proc, pw, url_file
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_service_serves_checks_and_stops(service, tmp_path):
    proc, pw, url_file = service
    url = url_file.read_text().strip()
    assert url.startswith("http://127.0.0.1:")
    assert "svc-pw-42" not in " ".join(proc.args)  # the password never reaches argv
    s = XenAPI.Session(url)
    s.login_with_password("root", "svc-pw-42")
    assert s.xenapi.VM.get_all()
    s.xenapi.session.logout()
    assert run("--check", "--url-file", str(url_file), "--password-file", str(pw)).returncode == 0
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    bad = run("--check", "--url-file", str(url_file), "--password-file", str(wrong))
    assert bad.returncode == 1 and "nope" not in bad.stderr
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "svc-pw-42" not in out + err
