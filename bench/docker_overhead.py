"""Overhead of the docker driver: spawn + destroy of N containers, against the raw engine.

Three ways to make and remove the same container (same image, limits, labels, tty, init),
interleaved round by round so that drift in the daemon's speed hits all three alike:

  driver  DockerDriver.spawn + DockerDriver.destroy
  sdk     the raw docker SDK calls: create_container + start, remove_container(force)
  cli     `docker run -d` + `docker rm -f` through the docker CLI

usage: bench/docker_overhead.py [--count 50] [--image IMAGE]
The last line holds the ratios (goals: driver/sdk <= 1.1, driver/cli <= 1.0).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import docker

from drivers.docker import spec
from virt.config import build_conf
from virt.driver import load_driver
from virt.model import Flavor, ImageRef, Instance

HOST = f"bench-docker-{uuid.uuid4().hex[:6]}"
FLAVOR = Flavor("bench", 1, 64, 0)


def make_driver(state: str):
    conf = build_conf(overrides={"state_path": state, "host": HOST})
    driver = load_driver("docker", conf)
    driver.init_host(host=HOST)
    return driver


def new_instance(image: str) -> Instance:
    return Instance(
        uuid=str(uuid.uuid4()), name=f"vk-bench-{uuid.uuid4().hex[:10]}", flavor=FLAVOR,
        image=ImageRef(image),
    )


def driver_cycle(driver, image: str) -> None:
    instance = new_instance(image)
    driver.spawn(instance=instance)
    driver.destroy(instance=instance)


def sdk_cycle(api: docker.APIClient, image: str) -> None:
    instance = new_instance(image)
    limits = spec.flavor_limits(FLAVOR, host_cpus=os.cpu_count() or 1, root_disk_limit=False)
    host_config = api.create_host_config(network_mode="bridge", init=True,
                                         **limits.host_config())
    container = api.create_container(
        image, name=instance.name, labels=spec.labels(instance, HOST), host_config=host_config,
        tty=True, stdin_open=True, detach=True,
    )
    api.start(container["Id"])
    api.remove_container(container["Id"], force=True, v=True)


def cli_cycle(image: str) -> None:
    instance = new_instance(image)
    labels = [arg for key, value in spec.labels(instance, HOST).items()
              for arg in ("--label", f"{key}={value}")]
    subprocess.run(
        ["docker", "run", "-d", "-it", "--init", "--name", instance.name, "--network", "bridge",
         "--cpus", "1", "--memory", "64m", "--memory-swap", "64m", *labels, image],
        check=True, capture_output=True, timeout=60,
    )
    subprocess.run(["docker", "rm", "-f", instance.name], check=True, capture_output=True,
                   timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--image", default=os.environ.get("VIRTKIT_TEST_DOCKER_IMAGE",
                                                          "virtkit-test/busybox:latest"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        driver = make_driver(state)
        api = docker.APIClient(version="auto", timeout=60)
        methods: dict[str, Callable[[], None]] = {
            "driver": lambda: driver_cycle(driver, args.image),
            "sdk": lambda: sdk_cycle(api, args.image),
            "cli": lambda: cli_cycle(args.image),
        }
        for run in methods.values():  # warm-up: connections, page cache
            run()
        totals = dict.fromkeys(methods, 0.0)
        names = list(methods)
        for round_ in range(args.count):
            order = names[round_ % 3:] + names[:round_ % 3]
            for name in order:
                started = time.perf_counter()
                methods[name]()
                totals[name] += time.perf_counter() - started
        driver.cleanup_host(host=HOST)
        api.close()
    for name, total in totals.items():
        print(f"{name:6s} {args.count} x spawn+destroy: {total:7.2f} s "
              f"({1000 * total / args.count:6.1f} ms each)")
    vs_sdk = totals["driver"] / totals["sdk"]
    vs_cli = totals["driver"] / totals["cli"]
    print(f"ratio driver/sdk={vs_sdk:.3f} (goal <= 1.1) driver/cli={vs_cli:.3f} (goal <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
