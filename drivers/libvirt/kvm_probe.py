"""Does KVM actually run guests here? A bounded boot probe.

`/dev/kvm` can exist and still not run a guest (nested KVM on some clouds: a real-mode boot
sector runs, but a Linux kernel spins forever). So we boot a real kernel under `-accel kvm`
with no initrd and `panic=-1`: it panics at "unable to mount root" and, with `-no-reboot`,
QEMU exits. Exiting within the budget with kernel output means KVM works.

    python -m drivers.libvirt.kvm_probe [--quiet] [--kernel PATH] [--timeout S]

exits 0 when KVM runs guests, 1 otherwise.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_TIMEOUT_S = 15.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


def find_probe_kernel() -> str | None:
    """A Linux kernel to boot: the test image's, else the host's newest /boot/vmlinuz-*."""
    candidates = [
        os.environ.get("VIRTKIT_TEST_KERNEL", ""),
        str(_REPO_ROOT / ".testbed" / "image" / "vmlinuz"),
        "/var/cache/virtkit-test/vmlinuz",
    ]
    candidates += sorted(glob.glob("/boot/vmlinuz-*"), reverse=True)
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def _qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64") or shutil.which("qemu-kvm")


def probe(kernel: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """Run the probe; return (KVM runs guests, reason)."""
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    qemu = _qemu_binary()
    if qemu is None:
        return False, "qemu-system-x86_64 is not installed"
    kernel = kernel or find_probe_kernel()
    if kernel is None:
        return False, ("no kernel to probe with (install a kernel package, or set [libvirt] "
                       "virt_type = kvm or qemu)")
    cmd = [
        qemu, "-accel", "kvm", "-m", "128", "-no-reboot", "-nodefaults", "-display", "none",
        "-serial", "stdio", "-monitor", "none", "-kernel", kernel,
        "-append", "console=ttyS0 panic=-1 loglevel=4",
    ]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False, f"a KVM guest kernel did not get to its first panic within {timeout:g}s"
    except OSError as exc:
        return False, f"cannot run {qemu}: {exc.strerror}"
    console = done.stdout.decode(errors="replace")
    if "Linux version" in console or "Kernel panic" in console:
        return True, "a KVM guest kernel booted and exited"
    tail = (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    return False, f"QEMU exited {done.returncode} without kernel output: {tail}"


def kvm_runs_guests(kernel: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
    """True when a guest kernel runs under KVM on this host (bounded by `timeout` seconds)."""
    return probe(kernel, timeout)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivers.libvirt.kvm_probe", description="Exit 0 when KVM runs guests."
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    parser.add_argument("--kernel", help="kernel image to boot (default: the test image's)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds before the probe gives up (default %(default)s)")
    args = parser.parse_args(argv)
    ok, reason = probe(args.kernel, args.timeout)
    if not args.quiet:
        print(f"kvm: {'works' if ok else 'does not run guests'}: {reason}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
