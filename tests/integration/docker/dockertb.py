"""Helpers of the docker integration tests: the docker CLI as an independent witness."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from virt.config import build_conf
from virt.driver import load_driver, load_driver_class


def docker_cli(*args: str, check: bool = True, timeout: float = 60) -> str:
    """Run the docker CLI (the independent witness of what the driver did)."""
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def dockerd_up() -> bool:
    try:
        return subprocess.run(
            ["docker", "info"], capture_output=True, timeout=20, check=False
        ).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def container_inspect(name: str) -> dict:
    return json.loads(docker_cli("inspect", "--type", "container", name))[0]


def containers_with_label(label: str) -> list[str]:
    out = docker_cli("ps", "-a", "--filter", f"label={label}", "--format", "{{.Names}}")
    return [line for line in out.splitlines() if line]


def exec_actions(name: str, *, since: float) -> list[str]:
    """The exec events dockerd recorded for container `name` (their action holds the argv)."""
    out = docker_cli(
        # Fractional seconds: a rounded --until can fall before the events just made.
        "events", "--since", f"{since:.3f}", "--until", f"{time.time() + 1:.3f}",
        "--filter", f"container={name}", "--filter", "event=exec_create",
        "--format", "{{.Action}}",
    )
    return [line for line in out.splitlines() if line]


def make_driver(tmp_path_factory: pytest.TempPathFactory, host: str, *, state=None,
                **docker_opts: object):
    """A docker driver on the test bed's dockerd, with `[docker]` options overridden
    (`state`: its state_path, default a new temporary directory)."""
    state = state or tmp_path_factory.mktemp("docker-state")
    conf = build_conf(overrides={"state_path": str(state), "host": host})
    load_driver_class("docker").register_opts(conf)
    for name, value in docker_opts.items():
        conf.set_override(name, value, group="docker")
    driver = load_driver("docker", conf)
    driver.init_host(host=host)
    return driver
