"""vmadm create's payload rules: properties and types, defaults, memory rules, nics, disks."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import uuid as uuidlib
from typing import Any

from .state import POOL, SimError

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{1,2}:){5}[0-9a-fA-F]{1,2}$")
NIC_TAG_RE = re.compile(r"^[a-zA-Z0-9_/]+$")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
OS_BRANDS = {"joyent", "joyent-minimal", "builder", "lx"}
HVM_BRANDS = {"kvm", "bhyve"}
BRANDS = OS_BRANDS | HVM_BRANDS
ALL = BRANDS
OS = OS_BRANDS
HVM = HVM_BRANDS
DISK_MODELS = {"kvm": ["virtio", "scsi", "ide"], "bhyve": ["virtio", "ahci", "nvme"]}
NIC_MODELS = {"kvm": ["virtio", "e1000", "rtl8139"], "bhyve": ["virtio", "e1000"]}
OVERHEAD = {"kvm": 1024, "bhyve": 1280}
HVM_LIMIT_PRIV = "default,-file_link_any,-net_access,-proc_fork,-proc_info,-proc_session"
IMAGE_TYPES = {"joyent": {"zone-dataset"}, "joyent-minimal": {"zone-dataset"},
               "builder": {"zone-dataset"}, "lx": {"lx-dataset", "docker"},
               "kvm": {"zone-dataset"}, "bhyve": {"zone-dataset"}}

# name -> (type, brands where allowed on create)
PROPS: dict[str, tuple[str, set[str]]] = {
    "brand": ("string", ALL), "uuid": ("uuid", ALL), "alias": ("string", ALL),
    "hostname": ("string", ALL), "image_uuid": ("uuid", ALL), "ram": ("integer", ALL),
    "max_physical_memory": ("integer", ALL), "max_locked_memory": ("integer", ALL),
    "max_swap": ("integer", ALL), "max_lwps": ("integer", ALL), "tmpfs": ("integer", OS),
    "max_shm_memory": ("integer", ALL), "max_msg_ids": ("integer", ALL),
    "max_sem_ids": ("integer", ALL), "max_shm_ids": ("integer", ALL),
    "cpu_cap": ("integer", ALL), "cpu_shares": ("integer", ALL), "vcpus": ("integer", HVM),
    "quota": ("integer", ALL), "zfs_io_priority": ("integer", ALL), "zpool": ("zpool", ALL),
    "owner_uuid": ("string", ALL), "billing_id": ("string", ALL),
    "autoboot": ("boolean", ALL), "dns_domain": ("string", OS), "resolvers": ("list", ALL),
    "maintain_resolvers": ("boolean", OS), "customer_metadata": ("flat-object", ALL),
    "internal_metadata": ("flat-object", ALL), "internal_metadata_namespaces": ("list", ALL),
    "tags": ("flat-object", ALL), "routes": ("flat-object", ALL),
    "nics": ("object-array", ALL), "disks": ("object-array", HVM),
    "nic_driver": ("string", HVM), "disk_driver": ("string", HVM), "cpu_type": ("string", {"kvm"}),
    "boot": ("string", HVM), "bootrom": ("string", {"bhyve"}), "vnc_port": ("integer", HVM),
    "vnc_password": ("string", HVM), "delegate_dataset": ("boolean", OS),
    "kernel_version": ("string", {"lx"}), "indestructible_zoneroot": ("boolean", ALL),
    "indestructible_delegated": ("boolean", ALL), "do_not_inventory": ("boolean", ALL),
    "firewall_enabled": ("boolean", ALL), "nowait": ("boolean", OS),
    "mdata_exec_timeout": ("integer", OS), "limit_priv": ("list", ALL),
    "flexible_disk_size": ("integer", {"bhyve"}), "zfs_root_compression": ("string", ALL),
    "zfs_data_compression": ("string", OS), "zfs_root_recsize": ("integer", ALL),
    "zfs_data_recsize": ("integer", OS), "zfs_snapshot_limit": ("integer", ALL),
    "zfs_filesystem_limit": ("integer", ALL), "archive_on_delete": ("boolean", ALL),
    "filesystems": ("object-array", OS), "datacenter_name": ("string", ALL),
}
MINIMA = {"max_swap": 256, "vcpus": 1}
DEPRECATED = {"dataset_uuid": "image_uuid", "zone_dataset_uuid": "image_uuid",
              "zfs_storage_pool_name": "zpool"}


def coerce(prop: str, kind: str, value: Any) -> Any:
    """A property value in its type (k=v strings included); ValueError when it is not."""
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        if value in (1, "1"):
            return True
        raise ValueError(prop)
    if kind == "integer":
        if isinstance(value, bool) or value in ("", None):
            raise ValueError(prop)
        number = float(value)
        if not number.is_integer() or number < MINIMA.get(prop, 0):
            raise ValueError(prop)
        return int(number)
    if kind == "string":
        if isinstance(value, bool | dict | list) or value is None:
            raise ValueError(prop)
        return str(value)
    if kind == "uuid":
        if not isinstance(value, str) or not UUID_RE.match(value):
            raise ValueError(prop)
        return value.lower()
    if kind == "zpool":
        if value != POOL:
            raise ValueError(prop)
        return value
    if kind == "list":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str | int) for i in items):
            raise ValueError(prop)
        return [str(i) for i in items if str(i) != ""]
    if kind == "flat-object":
        if not isinstance(value, dict) or not all(
                isinstance(v, str | int | float | bool) for v in value.values()):
            raise ValueError(prop)
        return dict(value)
    if kind == "object-array":
        if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
            raise ValueError(prop)
        return [dict(i) for i in value]
    raise ValueError(prop)


def _invalid(props: list[str]) -> SimError:
    return SimError("Invalid value(s) for: " + ",".join(props))


def _clean(payload: dict[str, Any], brand: str, warn: list[str]) -> dict[str, Any]:
    """Drop (with a warning) what is unknown or not allowed; coerce the rest."""
    out: dict[str, Any] = {}
    bad = []
    for key, value in payload.items():
        key = DEPRECATED.get(key, key)
        spec = PROPS.get(key)
        if spec is None or brand not in spec[1]:
            warn.append(f"Warning, invalid create property: [{key}] removing from payload.")
            continue
        if value is None:
            continue
        try:
            out[key] = coerce(key, spec[0], value)
        except (ValueError, TypeError):
            bad.append(key)
    if bad:
        raise _invalid(bad)
    return out


def _memory(vm: dict[str, Any], brand: str) -> None:
    """The memory rules: OS ram is max_physical_memory; HVM adds the brand's overhead."""
    if brand in HVM:
        ram = vm.setdefault("ram", 256)
        mpm = vm.get("max_physical_memory", ram + OVERHEAD[brand])
        vm["max_physical_memory"] = max(mpm, ram + 256)
    else:
        mpm = vm.pop("max_physical_memory", None) or vm.get("ram") or 256
        vm.pop("ram", None)
        vm["max_physical_memory"] = mpm
        vm["tmpfs"] = min(vm.get("tmpfs", mpm), mpm)
    mpm = vm["max_physical_memory"]
    vm["max_locked_memory"] = min(vm.get("max_locked_memory", mpm), mpm)
    vm["max_swap"] = max(vm.get("max_swap", max(mpm, 256)), mpm, 256)
    vm.setdefault("max_shm_memory", mpm)
    vm["cpu_shares"] = min(vm.get("cpu_shares", 100), 65535)


def new_mac() -> str:
    """A MAC in Joyent's OUI (90:b8:d0), as vmadm generates them."""
    return "90:b8:d0:" + ":".join(f"{random.randrange(256):02x}" for _ in range(3))


def _nic(nic: dict[str, Any], index: int, vm: dict[str, Any], brand: str) -> dict[str, Any]:
    shown = json.dumps(nic, separators=(",", ":"))
    tag = nic.get("nic_tag")
    if not isinstance(tag, str) or not NIC_TAG_RE.match(tag):
        raise SimError(f"invalid or missing .nic_tag option for NIC: {shown}")
    if brand in HVM:
        model = nic.get("model") or vm.get("nic_driver")
        if not model:
            raise SimError(f"missing .model option for NIC: {shown}")
        nic["model"] = model
    if "ip" in nic and "ips" not in nic:
        ip = str(nic.pop("ip"))
        if ip in ("dhcp", "addrconf"):
            nic["ips"] = [ip]
        else:
            netmask = nic.pop("netmask", None)
            if not netmask:
                raise SimError(f"Missing .netmask option for NIC: {shown}")
            try:
                net = ipaddress.IPv4Network(f"0.0.0.0/{netmask}")
            except ValueError:
                raise SimError(f"Specified netmask value is invalid: {netmask}") from None
            nic["ips"] = [f"{ip}/{net.prefixlen}"]
    if "gateway" in nic and "gateways" not in nic:
        nic["gateways"] = [str(nic.pop("gateway"))]
    ips = nic.get("ips", [])
    if isinstance(ips, str):
        ips = ips.split(",")
    if not isinstance(ips, list):
        raise SimError(f"Invalid IP for NIC: {shown}")
    if len(ips) > 20:
        raise SimError(f"nic.{index}.ips contains {len(ips)} addresses, but is limited to 20")
    for ip in ips:
        if ip in ("dhcp", "addrconf"):
            continue
        try:
            ipaddress.ip_interface(str(ip))
        except ValueError:
            raise SimError(f"Invalid IP for NIC: {shown}") from None
    nic["ips"] = [str(i) for i in ips]
    for gw in nic.get("gateways", []):
        try:
            ipaddress.IPv4Address(str(gw))
        except ValueError:
            raise SimError(f"Static gateways must be IPv4 addresses: {gw}") from None
    if "primary" in nic and nic["primary"] not in (True, "true"):
        raise SimError(f"invalid value for NIC's primary flag: {nic['primary']} (must be true)")
    mac = nic.get("mac") or new_mac()
    if not isinstance(mac, str) or not MAC_RE.match(mac):
        raise _invalid([f"nics.{index}.mac"])
    nic["mac"] = ":".join(f"{int(p, 16):02x}" for p in mac.split(":"))
    try:
        vlan = int(nic.get("vlan_id", 0))
    except (TypeError, ValueError):
        raise _invalid([f"nics.{index}.vlan_id"]) from None
    if not 0 <= vlan <= 4095:
        raise _invalid([f"nics.{index}.vlan_id"])
    nic["vlan_id"] = vlan
    nic["interface"] = nic.get("interface") or f"{'eth' if brand == 'lx' else 'net'}{index}"
    v4 = [i for i in nic["ips"] if "/" in i and ":" not in i]
    if v4:
        iface = ipaddress.IPv4Interface(v4[0])
        nic["ip"], nic["netmask"] = str(iface.ip), str(iface.netmask)
    elif nic["ips"]:
        nic["ip"] = nic["ips"][0]
    if nic.get("gateways"):
        nic["gateway"] = nic["gateways"][0]
    return nic


def nics(vm: dict[str, Any], brand: str, host_tags: list[str]) -> None:
    """Validate and normalise the nics (tags, models, IPs, MACs, the primary)."""
    out = [_nic(dict(n), i, vm, brand) for i, n in enumerate(vm.get("nics", []))]
    seen_ip: set[str] = set()
    seen_mac: set[str] = set()
    for nic in out:
        for ip in nic["ips"]:
            if ip in ("dhcp", "addrconf"):
                continue
            addr = str(ipaddress.ip_interface(ip).ip)
            if addr in seen_ip:
                raise SimError(f"Cannot add multiple NICs with the same IP: {addr}")
            seen_ip.add(addr)
        if nic["mac"] in seen_mac:
            raise SimError(f"Cannot add multiple NICs with the same MAC: {nic['mac']}")
        seen_mac.add(nic["mac"])
    unknown = sorted({n["nic_tag"] for n in out} - set(host_tags))
    if unknown:
        raise SimError("\n".join(f"Invalid nic tag \"{t}\"" for t in unknown))
    if out and not any(n.get("primary") for n in out):
        out[0]["primary"] = True
    for nic in out:
        if nic.get("primary") in (True, "true"):
            nic["primary"] = True
    vm["nics"] = out


def disks(vm: dict[str, Any], brand: str, images: dict[str, dict[str, Any]]) -> None:
    """Validate and fill the HVM disks: model, image (a zvol), sizes, the dataset names."""
    out = []
    uuid = vm["uuid"]
    missing: list[str] = []
    for index, disk in enumerate(vm.get("disks", [])):
        shown = json.dumps(disk, separators=(",", ":"))
        model = disk.get("model") or vm.get("disk_driver")
        if not model:
            raise SimError(f"missing .model option for disk: {shown}")
        if model not in DISK_MODELS[brand]:
            raise SimError(f"\"{model}\" is not a valid disk model for {brand} brand. Valid are: "
                           + ",".join(DISK_MODELS[brand]))
        if "path" in disk and not disk.get("nocreate") and disk.get("media") != "cdrom":
            raise SimError("you cannot specify a path for a disk unless you set nocreate=true")
        image = disk.get("image_uuid")
        if image is not None and "block_size" in disk:
            raise SimError("setting both .block_size and .image_uuid on a volume is invalid")
        block = int(disk.get("block_size", 8192))
        if not 512 <= block <= 131072 or block & (block - 1):
            raise SimError(f"invalid .block_size({block}), must be 512-131072 and a power of 2.")
        item = dict(disk, model=model, media=disk.get("media", "disk"),
                    boot=bool(disk.get("boot", False)), zpool=disk.get("zpool", POOL),
                    compression=disk.get("compression", "off"), block_size=block)
        if image is not None:
            manifest = images.get(str(image))
            if manifest is None or manifest.get("type") != "zvol":
                raise _invalid([f"disks.{index}.image_uuid"])
            if "size" in disk and not vm.get("flexible_disk_size"):
                raise _invalid([f"disks.{index}.size"])
            want = manifest.get("image_size")
            given = disk.get("image_size", want)
            if given is None:
                missing.append(f"disks.{index}.image_size")
                continue
            if want is not None and int(given) != int(want):
                raise _invalid([f"disks.{index}.image_size"])
            item["image_size"] = int(given)
            item["size"] = int(disk.get("size", given))
        elif "size" not in disk:
            missing.append(f"disks.{index}.size")
            continue
        else:
            item["size"] = int(disk["size"])
        name = f"{POOL}/{uuid}-disk{index}" if brand == "kvm" else f"{POOL}/{uuid}/disk{index}"
        item.update(zfs_filesystem=name, path=f"/dev/zvol/rdsk/{name}",
                    refreservation=int(disk.get("refreservation", item["size"])))
        if brand == "bhyve":
            item.setdefault("uuid", str(uuidlib.uuid4()))
            item.setdefault("pci_slot", f"0:4:{index}")
        out.append(item)
    if missing:
        raise SimError("Missing required properties: " + ",".join(missing))
    vm["disks"] = out


def build(payload: Any, *, existing: set[str], images: dict[str, dict[str, Any]],
          host: dict[str, Any], now: str) -> tuple[dict[str, Any], list[str]]:
    """The VM object a create payload makes (validated, defaults filled) and the warnings."""
    if not isinstance(payload, dict):
        raise SimError("Invalid payload: must be a JSON object")
    warnings: list[str] = []
    raw = dict(payload)
    brand = raw.get("brand", "joyent")
    if brand not in BRANDS:
        raise _invalid(["brand"])
    vm = _clean(raw, brand, warnings)
    vm["brand"] = brand
    vm.setdefault("uuid", str(uuidlib.uuid4()))
    if vm["uuid"] in existing:
        raise SimError(f"VM with UUID {vm['uuid']} already exists")
    missing = []
    if brand in OS and "image_uuid" not in vm:
        missing.append("image_uuid")
    if brand == "lx" and "kernel_version" not in vm:
        missing.append("kernel_version")
    if missing:
        raise SimError("Missing required properties: " + ",".join(missing))
    if "image_uuid" in vm:
        manifest = images.get(vm["image_uuid"])
        if manifest is None or manifest.get("type") not in IMAGE_TYPES[brand]:
            raise _invalid(["image_uuid"])
    _memory(vm, brand)
    nics(vm, brand, list(host.get("nic_tags", [])))
    if brand in HVM:
        disks(vm, brand, images)
    _defaults(vm, brand, host, now)
    return vm, warnings


def _defaults(vm: dict[str, Any], brand: str, host: dict[str, Any], now: str) -> None:
    uuid = vm["uuid"]
    hvm = brand in HVM
    defaults: dict[str, Any] = {
        "autoboot": True, "billing_id": ZERO_UUID, "owner_uuid": ZERO_UUID,
        "customer_metadata": {}, "internal_metadata": {}, "tags": {}, "routes": {},
        "resolvers": [], "nics": [], "firewall_enabled": False, "hvm": hvm,
        "init_restarts": 0, "max_lwps": 2000, "max_msg_ids": 4096, "max_sem_ids": 4096,
        "max_shm_ids": 4096, "quota": 1 if brand == "bhyve" else 10, "zfs_io_priority": 100,
        "zfs_root_recsize": 131072, "zpool": POOL, "v": 1,
        "limit_priv": HVM_LIMIT_PRIV if hvm else "default",
        "platform_buildstamp": host.get("live_image", ""), "server_uuid": host.get("uuid", ""),
        "datacenter_name": host.get("datacenter", ""),
    }
    if hvm:
        defaults.update(vcpus=1, disks=[])
        if brand == "kvm":
            defaults["cpu_type"] = "qemu64"
        else:
            defaults["bootrom"] = "bios"
    else:
        defaults["dns_domain"] = "local"
    for key, value in defaults.items():
        vm.setdefault(key, value)
    if isinstance(vm["limit_priv"], list):
        vm["limit_priv"] = ",".join(vm["limit_priv"])
    vm.update(zonename=uuid, zonepath=f"/{POOL}/{uuid}", zfs_filesystem=f"{POOL}/{uuid}",
              create_timestamp=now, last_modified=now, zonedid=0)
