"""Instance + flavor + image manifest -> the `vmadm create` payload. No commands.

The brand comes from the image manifest (`type`, `requirements.brand`) or the flavor's
extra spec `smartos:brand`; when both say something they must agree. Memory follows vmadm's
rules (research/smartos.md §4/§5): an OS zone's `max_physical_memory` is the flavor's
memory; an HVM guest gets `ram` = the flavor's memory and `max_physical_memory` = ram plus
the brand's overhead (kvm 1024 MiB, bhyve 1280 MiB) for the QEMU/bhyve process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from virt.errors import InvalidRequest
from virt.model import Flavor, ImageRef, Instance, Vif, validate_uuid

#: internal_metadata keys that mark a VM as virtkit's, for one compute host.
MARK_MANAGED = "virtkit:managed"
MARK_HOST = "virtkit:host"
MARK_NAME = "virtkit:name"
MARK_FLAVOR = "virtkit:flavor"
#: MARK_MANAGED of a VM that destroy(destroy_disks=False) parked: stopped, its datasets kept,
#: no longer an instance (not listed or counted) until a spawn of its uuid takes it back.
PARKED = "parked"
#: What a spawn onto a parked VM updates from its payload (the rest stays as created).
TAKE_BACK_KEYS = ("alias", "hostname", "autoboot", "max_physical_memory", "max_locked_memory",
                  "max_swap", "tmpfs", "cpu_cap", "quota", "ram", "vcpus")
#: internal_metadata key of a snapshot image's source instance (in the image's tags too).
SNAPSHOT_OF = "virtkit:snapshot_of"

#: Flavor extra spec naming the brand.
BRAND_SPEC = "smartos:brand"
OS_BRANDS = frozenset({"joyent", "joyent-minimal"})
HVM_BRANDS = frozenset({"bhyve", "kvm"})
#: MiB vmadm adds to an HVM guest's ram for its QEMU/bhyve process (max_physical_memory).
HVM_OVERHEAD_MB = {"kvm": 1024, "bhyve": 1280}
#: vmadm's smallest max_swap.
MIN_SWAP_MB = 256
#: Image manifest types per brand family.
ZONE_IMAGE = "zone-dataset"
HVM_IMAGE = "zvol"
DEFAULT_NIC_MODEL = "virtio"
DEFAULT_DISK_MODEL = "virtio"

_NIC_TAG_RE = re.compile(r"^[a-zA-Z0-9_/]+$")


def image_uuid(image: ImageRef) -> str:
    """The image uuid an ImageRef names (SmartOS images are named by uuid)."""
    if image.disk_format not in (None, "zvol", "raw"):
        raise InvalidRequest(
            f"image {image.ref!r} has disk_format {image.disk_format!r}; the smartos driver "
            "boots imgadm images (zone datasets and zvols) named by uuid")
    return validate_uuid(image.ref.strip(), "smartos image uuid")


def brand_for(manifest: Mapping[str, Any], flavor: Flavor) -> str:
    """The brand of a VM of `manifest` and `flavor`; InvalidRequest when they disagree."""
    kind = str(manifest.get("type") or "")
    required = str((manifest.get("requirements") or {}).get("brand") or "")
    wanted = str(flavor.extra_specs.get(BRAND_SPEC) or "")
    uuid = manifest.get("uuid", "?")
    if kind == ZONE_IMAGE:
        family, default = OS_BRANDS, required or "joyent"
    elif kind == HVM_IMAGE:
        family, default = HVM_BRANDS, required or "bhyve"
    else:
        raise InvalidRequest(f"image {uuid} is of type {kind or '(none)'!r}; the smartos "
                             "driver boots zone-dataset (joyent) and zvol (bhyve, kvm) images")
    if wanted and wanted not in OS_BRANDS | HVM_BRANDS:
        raise InvalidRequest(f"flavor {flavor.name!r}: {BRAND_SPEC} {wanted!r} is not one of "
                             + ", ".join(sorted(OS_BRANDS | HVM_BRANDS)))
    for source, brand in (("the image's requirements.brand", required),
                          (f"flavor {flavor.name!r}'s {BRAND_SPEC}", wanted)):
        if brand and brand not in family:
            raise InvalidRequest(
                f"{source} is {brand!r}, but image {uuid} is a {kind} image, which boots "
                f"as {' or '.join(sorted(family))}", hint="use a flavor and image that agree")
    if wanted and required and wanted != required:
        raise InvalidRequest(f"flavor {flavor.name!r} asks for brand {wanted!r}, image {uuid} "
                             f"requires {required!r}", hint="use a flavor and image that agree")
    return wanted or default


def nics(vifs: Sequence[Vif], *, nic_tag: str, hvm: bool) -> list[dict[str, Any]]:
    """One vmadm NIC per vif: its MAC, the configured nic_tag, DHCP; the first is primary."""
    if not _NIC_TAG_RE.match(nic_tag):
        raise InvalidRequest(f"[smartos] nic_tag {nic_tag!r} is not a nic tag name")
    result = []
    for index, vif in enumerate(vifs):
        nic: dict[str, Any] = {"nic_tag": nic_tag, "mac": vif.address, "ips": ["dhcp"]}
        if index == 0:
            nic["primary"] = True
        if hvm:
            nic["model"] = vif.model or DEFAULT_NIC_MODEL
        result.append(nic)
    return result


@dataclass(frozen=True)
class Settings:
    """What the payload takes from `[smartos]` and the compute host."""

    host: str
    nic_tag: str
    resolvers: tuple[str, ...] = ()
    zpool: str = "zones"


def payload(instance: Instance, manifest: Mapping[str, Any], vifs: Sequence[Vif],
            settings: Settings, *, power_on: bool = True) -> dict[str, Any]:
    """The `vmadm create` payload of `instance` from the image `manifest`."""
    flavor = instance.flavor
    brand = brand_for(manifest, flavor)
    image = str(manifest["uuid"])
    body: dict[str, Any] = {
        "uuid": instance.uuid,
        "brand": brand,
        "alias": instance.name,
        "hostname": instance.name,
        "autoboot": bool(power_on),
        "zpool": settings.zpool,
        "cpu_cap": flavor.vcpus * 100,
        "resolvers": list(settings.resolvers),
        "internal_metadata": marks(instance, settings.host),
        "nics": nics(vifs, nic_tag=settings.nic_tag, hvm=brand in HVM_BRANDS),
    }
    if brand in HVM_BRANDS:
        body.update(hvm_sizes(flavor, manifest, brand, image))
    else:
        body.update(zone_sizes(flavor), image_uuid=image)
    return body


def marks(instance: Instance, host: str) -> dict[str, str]:
    """The internal_metadata that marks the VM as this instance, made by virtkit for `host`."""
    return {MARK_MANAGED: "true", MARK_HOST: host, MARK_NAME: instance.name,
            MARK_FLAVOR: instance.flavor.name}


def zone_sizes(flavor: Flavor) -> dict[str, Any]:
    """An OS zone: memory caps from the flavor; the quota (GiB) is root + ephemeral disk
    (0: vmadm's default of 10 GiB)."""
    memory = flavor.memory_mb
    sizes: dict[str, Any] = {
        "max_physical_memory": memory,
        "max_locked_memory": memory,
        "max_swap": max(memory + flavor.swap_mb, MIN_SWAP_MB),
    }
    quota = flavor.root_gb + flavor.ephemeral_gb
    if quota:
        sizes["quota"] = quota
    return sizes


def hvm_sizes(flavor: Flavor, manifest: Mapping[str, Any], brand: str,
              image: str) -> dict[str, Any]:
    """An HVM guest: ram and vcpus, memory caps with the brand's overhead, the boot disk
    cloned from the image and an ephemeral disk if the flavor has one."""
    ram = flavor.memory_mb
    cap = ram + HVM_OVERHEAD_MB[brand]
    image_size = int(manifest.get("image_size") or 0)
    if flavor.root_gb and image_size and flavor.root_gb * 1024 < image_size:
        raise InvalidRequest(
            f"flavor {flavor.name!r} has a {flavor.root_gb} GiB root disk, smaller than image "
            f"{manifest.get('uuid')}'s {image_size} MiB", hint="use a bigger flavor")
    boot: dict[str, Any] = {"image_uuid": image, "boot": True, "model": DEFAULT_DISK_MODEL}
    if image_size:
        boot["image_size"] = image_size
    disks = [boot]
    if flavor.ephemeral_gb:
        disks.append({"size": flavor.ephemeral_gb * 1024, "model": DEFAULT_DISK_MODEL})
    return {
        "ram": ram,
        "vcpus": flavor.vcpus,
        "max_physical_memory": cap,
        "max_locked_memory": cap,
        "max_swap": max(cap + flavor.swap_mb, MIN_SWAP_MB),
        "disks": disks,
    }


def parked_marks() -> dict[str, str]:
    """The internal_metadata update that parks a VM."""
    return {MARK_MANAGED: PARKED}


def is_parked(vm: Mapping[str, Any], host: str) -> bool:
    """Whether `vm` is a VM of virtkit's for `host` that destroy(destroy_disks=False) parked."""
    meta = vm.get("internal_metadata") or {}
    return meta.get(MARK_MANAGED) == PARKED and meta.get(MARK_HOST) == host


def is_ours(vm: Mapping[str, Any], host: str) -> bool:
    """Whether the VM object `vm` carries virtkit's mark for `host`."""
    meta = vm.get("internal_metadata") or {}
    return meta.get(MARK_MANAGED) == "true" and meta.get(MARK_HOST) == host
