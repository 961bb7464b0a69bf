"""The datamodel of research §4: classes, fields, their wire types and who may set them.

Each field line is `name type access [default]`. Types: S string, D dateTime, E enum, I int (sent as a
decimal string over XML-RPC, as XAPI does), F float (double), B bool, M map string->string,
L set of strings, R ref, RS set of refs. Access: `rw` (create and set_), `ctor` (create only),
`ro` (neither: XAPI maintains it). Default `!` means the create record must carry it; without a
default the type's empty value is used.
"""

from __future__ import annotations

import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from .errors import XapiError

NULL_REF = "OpaqueRef:NULL"


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    access: str
    default: Any
    required: bool


EPOCH = "19700101T00:00:00Z"
_EMPTY: dict[str, Any] = {"S": "", "D": xmlrpc.client.DateTime(EPOCH), "E": "", "I": "0", "F": 0.0, "B": False, "R": NULL_REF}

_SPECS = {
    "session": """
        uuid S ro
        this_host R ro
        this_user S ro
        originator S ro
        last_active D ro
        pool B ro
        other_config M rw
    """,
    "pool": """
        uuid S ro
        name_label S rw
        name_description S rw
        master R ro
        default_SR R rw
        suspend_image_SR R rw
        crash_dump_SR R rw
        ha_enabled B ro
        other_config M rw
        tags L rw
    """,
    "host": """
        uuid S ro
        name_label S rw
        name_description S rw
        hostname S ro
        address S ro
        enabled B ro True
        software_version M ro
        API_version_major I ro 2
        API_version_minor I ro 21
        resident_VMs RS ro
        PBDs RS ro
        PIFs RS ro
        host_CPUs RS ro
        cpu_info M ro
        metrics R ro
        memory_overhead I ro
        other_config M rw
        iscsi_iqn S ro
        capabilities L ro
        control_domain R ro
        suspend_image_sr R rw
        crash_dump_sr R rw
        local_cache_sr R ro
        tags L rw
    """,
    "host_metrics": """
        uuid S ro
        memory_total I ro
        memory_free I ro
        live B ro True
        last_updated D ro
        other_config M rw
    """,
    "VM": """
        uuid S ro
        name_label S rw !
        name_description S rw
        user_version I rw 0
        power_state E ro Halted
        is_a_template B rw False
        is_default_template B ro False
        is_control_domain B ro False
        is_a_snapshot B ro False
        snapshot_of R ro
        snapshots RS ro
        snapshot_time D ro
        resident_on R ro
        affinity R rw
        memory_static_min I ctor !
        memory_static_max I ctor !
        memory_dynamic_min I ctor !
        memory_dynamic_max I ctor !
        memory_target I ro
        memory_overhead I ro
        VCPUs_max I ctor !
        VCPUs_at_startup I ctor !
        VCPUs_params M rw
        actions_after_shutdown E rw !
        actions_after_reboot E rw !
        actions_after_crash E rw !
        actions_after_softreboot E rw soft
        VBDs RS ro
        VIFs RS ro
        consoles RS ro
        VTPMs RS ro
        PV_bootloader S rw
        PV_kernel S rw
        PV_ramdisk S rw
        PV_args S rw
        PV_bootloader_args S rw
        PV_legacy_args S rw
        HVM_boot_policy S rw
        HVM_boot_params M rw
        HVM_shadow_multiplier F rw 1.0
        platform M rw
        PCI_bus S rw
        recommendations S rw
        other_config M rw
        xenstore_data M rw
        domid I ro -1
        metrics R ro
        guest_metrics R ro
        allowed_operations L ro
        current_operations M ro
        blocked_operations M rw
        tags L rw
        suspend_VDI R ro
        suspend_SR R rw
        domain_type E rw unspecified
        NVRAM M rw
        bios_strings M ro
        has_vendor_device B rw False
        generation_id S ctor
        ha_always_run B rw False
        ha_restart_priority S rw
        version I ro 0
    """,
    "VM_metrics": """
        uuid S ro
        memory_actual I ro
        VCPUs_number I ro
        start_time D ro
        state L ro
        last_updated D ro
        other_config M rw
    """,
    "VM_guest_metrics": """
        uuid S ro
        os_version M ro
        networks M ro
        PV_drivers_detected B ro False
        live B ro False
        other_config M rw
    """,
    "VBD": """
        uuid S ro
        VM R ctor !
        VDI R ctor !
        device S ro
        userdevice S rw !
        bootable B rw !
        mode E rw !
        type E rw !
        unpluggable B rw True
        empty B ctor !
        currently_attached B ro False
        status_code I ro
        status_detail S ro
        runtime_properties M ro
        other_config M rw
        qos_algorithm_type S rw
        qos_algorithm_params M rw
        qos_supported_algorithms L ro
        allowed_operations L ro
        current_operations M ro
    """,
    "VDI": """
        uuid S ro
        name_label S rw !
        name_description S rw
        SR R ctor !
        VBDs RS ro
        virtual_size I ctor !
        physical_utilisation I ro
        type E ctor !
        sharable B ctor False
        read_only B ctor False
        managed B ro True
        missing B ro False
        location S ro
        other_config M rw
        xenstore_data M rw
        sm_config M rw
        is_a_snapshot B ro False
        snapshot_of R ro
        snapshots RS ro
        snapshot_time D ro
        on_boot E ro persist
        allow_caching B ro False
        tags L rw
        cbt_enabled B ro False
        allowed_operations L ro
        current_operations M ro
    """,
    "SR": """
        uuid S ro
        name_label S rw
        name_description S rw
        type S ro
        content_type S ro
        shared B ro False
        VDIs RS ro
        PBDs RS ro
        physical_size I ro
        physical_utilisation I ro
        virtual_allocation I ro
        other_config M rw
        sm_config M rw
        tags L rw
        clustered B ro False
        allowed_operations L ro
        current_operations M ro
    """,
    "PBD": """
        uuid S ro
        host R ctor !
        SR R ctor !
        device_config M ctor !
        currently_attached B ro False
        other_config M rw
    """,
    "network": """
        uuid S ro
        name_label S rw !
        name_description S rw
        bridge S ctor
        VIFs RS ro
        PIFs RS ro
        MTU I rw 1500
        managed B ctor True
        other_config M rw
        tags L rw
        default_locking_mode E rw unlocked
        purpose L ro
    """,
    "PIF": """
        uuid S ro
        device S ro
        VLAN I ro -1
        network R ro
        host R ro
        MAC S ro
        MTU I ro 1500
        physical B ro True
        currently_attached B ro True
        other_config M rw
    """,
    "VIF": """
        uuid S ro
        device S ctor !
        network R ctor !
        VM R ctor !
        MAC S ctor !
        MAC_autogenerated B ro False
        MTU I ctor !
        other_config M rw
        currently_attached B ro False
        status_code I ro
        status_detail S ro
        runtime_properties M ro
        qos_algorithm_type S rw
        qos_algorithm_params M rw
        qos_supported_algorithms L ro
        locking_mode E rw network_default
        ipv4_allowed L rw
        ipv6_allowed L rw
        allowed_operations L ro
        current_operations M ro
    """,
    "secret": """
        uuid S ro
        value S rw !
        other_config M rw
    """,
    "task": """
        uuid S ro
        name_label S ro
        name_description S ro
        status E ro pending
        progress F ro
        created D ro
        finished D ro
        result S ro
        error_info L ro
        type S ro
        resident_on R ro
        subtask_of R ro
        subtasks RS ro
        allowed_operations L ro
        current_operations M ro
        other_config M rw
        backtrace S ro
    """,
    "message": """
        uuid S ro
        name S ro
        priority I ro
        cls E ro
        obj_uuid S ro
        timestamp D ro
        body S ro
    """,
}

ENUMS = {
    ("VM", "power_state"): ("Halted", "Paused", "Running", "Suspended"),
    ("VM", "actions_after_shutdown"): ("destroy", "restart"),
    ("VM", "actions_after_reboot"): ("destroy", "restart"),
    ("VM", "actions_after_softreboot"): ("soft", "destroy", "restart", "shutdown"),
    ("VM", "actions_after_crash"): ("destroy", "coredump_and_destroy", "restart",
                                    "coredump_and_restart", "preserve", "rename_restart"),
    ("VM", "domain_type"): ("hvm", "pv", "pv_in_pvh", "pvh", "unspecified"),
    ("VBD", "mode"): ("RO", "RW"),
    ("VBD", "type"): ("CD", "Disk", "Floppy"),
    ("VDI", "type"): ("system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile",
                      "metadata", "redo_log", "rrd", "pvs_cache", "cbt_metadata"),
    ("VDI", "on_boot"): ("reset", "persist"),
    ("VIF", "locking_mode"): ("network_default", "locked", "unlocked", "disabled"),
    ("network", "default_locking_mode"): ("unlocked", "disabled"),
    ("task", "status"): ("pending", "success", "failure", "cancelling", "cancelled"),
}


def _parse(spec: str) -> dict[str, Field]:
    fields: dict[str, Field] = {}
    for line in spec.strip().splitlines():
        parts = line.split()
        name, kind, access = parts[:3]
        raw = parts[3] if len(parts) > 3 else None
        required = raw == "!"
        if raw is None or required:
            default = _EMPTY.get(kind) if kind in _EMPTY else ({} if kind == "M" else [])
        elif kind == "B":
            default = raw == "True"
        elif kind == "F":
            default = float(raw)
        else:
            default = raw
        fields[name] = Field(name, kind, access, default, required)
    return fields


CLASSES: dict[str, dict[str, Field]] = {cls: _parse(spec) for cls, spec in _SPECS.items()}


def class_name(name: str) -> str | None:
    """The canonical class for a name as a caller spelt it (event classes are lower-case)."""
    for cls in CLASSES:
        if cls.lower() == name.lower():
            return cls
    return None


def defaults(cls: str) -> dict[str, Any]:
    """A record of `cls` with every field at its default (fresh containers)."""
    out: dict[str, Any] = {}
    for f in CLASSES[cls].values():
        if f.type == "D":
            out[f.name] = xmlrpc.client.DateTime(EPOCH)
            continue
        out[f.name] = dict(f.default) if isinstance(f.default, dict) else (
            list(f.default) if isinstance(f.default, list) else f.default)
    return out


def normalize(cls: str, field: Field, value: Any) -> Any:
    """`value` as XAPI stores it, or FIELD_TYPE_ERROR [field] if it does not fit the type."""
    kind = field.type
    try:
        if kind == "I":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError
            return str(int(value))
        if kind == "F":
            return float(value)
        if kind == "D":
            return xmlrpc.client.DateTime(value)
        if kind == "B":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind in ("S", "R"):
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind == "E":
            return _enum(cls, field.name, value)
        if kind == "M":
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): _scalar(v) for k, v in value.items()}
        if kind in ("L", "RS"):
            if not isinstance(value, list | tuple):
                raise ValueError
            return [_scalar(v) for v in value]
    except (TypeError, ValueError):
        pass
    raise XapiError("FIELD_TYPE_ERROR", field.name)


def _scalar(value: Any) -> str:
    if not isinstance(value, str | int | float | bool) or isinstance(value, bool):
        raise ValueError
    return str(value)


def _enum(cls: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    allowed = ENUMS.get((cls, name))
    if allowed is None:
        return value
    for item in allowed:  # XAPI matches enum input case-insensitively, answers canonically
        if item.lower() == value.lower():
            return item
    raise XapiError("FIELD_TYPE_ERROR", name)
