"""Root disks: where they live, made from an image file, reused when already there."""

from __future__ import annotations

import shutil
from pathlib import Path

from virt.errors import ImageNotFound
from virt.model import ImageRef


def root_disk_path(instances_path: str, uuid: str) -> Path:
    """Where the root disk of instance `uuid` lives (the driver's `instance_disk_path`)."""
    return Path(instances_path) / "example" / uuid / "disk"


def prepare_root_disk(path: Path, image: ImageRef) -> bool:
    """Make the root disk at `path` from `image`; False if a valid one is there already (it
    is reused, as recovery on shared storage needs). ImageNotFound if the image is missing."""
    if path.is_file() and path.stat().st_size > 0:
        return False
    source = Path(image.ref)
    if not source.is_file():
        raise ImageNotFound(f"image file {image.ref} does not exist",
                            hint="give the path of an image file")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return True


def remove_root_disk(path: Path) -> None:
    """Remove the root disk and its directory; nothing there is no error."""
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()
