"""scripts/install-deps names what a fresh Debian 12 needs to build libvirt-python."""

from __future__ import annotations

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-deps"


def test_packages_include_the_libvirt_python_build_dependencies():
    text = SCRIPT.read_text()
    array = text[text.index("PACKAGES=("):text.index(")\n", text.index("PACKAGES=("))+2]
    out = subprocess.run(["bash", "-c", f'{array}\nprintf "%s\\n" "${{PACKAGES[@]}}"'],
                         capture_output=True, text=True, check=True).stdout.split()
    assert {"gcc", "libc6-dev", "python3-dev", "pkg-config", "libvirt-dev"} <= set(out)
