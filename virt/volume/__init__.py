"""Volume connections: Nova's connection_info per protocol, and the connectors behind them."""

from virt.volume.base import ProbeResult, VolumeConnector, connector_for, register_connector
from virt.volume.glusterfs import (
    GlusterConnector,
    GlusterServer,
    GlusterVolume,
    parse_glusterfs_volume,
)
from virt.volume.iscsi import (
    IscsiConnector,
    IscsiPath,
    IscsiTarget,
    Portal,
    default_initiator_name,
    parse_iscsi_target,
)

__all__ = [
    "GlusterConnector",
    "GlusterServer",
    "GlusterVolume",
    "IscsiConnector",
    "IscsiPath",
    "IscsiTarget",
    "Portal",
    "ProbeResult",
    "VolumeConnector",
    "connector_for",
    "default_initiator_name",
    "parse_glusterfs_volume",
    "parse_iscsi_target",
    "register_connector",
]
