"""The fake SAN: block devices checked the way a storage target would take them, and their
entries in an instance's record (secrets masked)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from typing import Any

from virt.errors import InvalidRequest, VolumeAuthError
from virt.masking import mask_secrets
from virt.model import BlockDevice


def check_block_device(bdm: BlockDevice) -> None:
    """Refuse what no target would take: not a BlockDevice, an iSCSI volume without portal
    or IQN, CHAP without both credentials."""
    if not isinstance(bdm, BlockDevice):
        raise InvalidRequest(f"block device must be a virt.model.BlockDevice, got "
                             f"{type(bdm).__name__}")
    conn = bdm.connection
    if conn.driver_volume_type != "iscsi":
        return
    missing = [k for k in ("target_portal", "target_iqn") if not conn.data.get(k)]
    if missing:
        raise InvalidRequest(
            f"iscsi connection_info of volume {bdm.volume_id} lacks {', '.join(missing)}")
    if str(conn.data.get("auth_method", "")).upper() == "CHAP" and not (
        conn.data.get("auth_username") and conn.data.get("auth_password")
    ):
        raise VolumeAuthError(
            f"volume {bdm.volume_id}: CHAP needs auth_username and auth_password")


def check_chap(bdm: BlockDevice, chap_credentials: Sequence[str]) -> None:
    """The SAN's login: a target listed in `chap_credentials` (TARGET_IQN=USER:PASSWORD
    items) takes only those credentials; other targets take any."""
    data = bdm.connection.data
    targets = dict(item.partition("=")[::2] for item in chap_credentials)
    wanted = targets.get(str(data.get("target_iqn")))
    if wanted is None:
        return
    given = f"{data.get('auth_username', '')}:{data.get('auth_password', '')}"
    if not hmac.compare_digest(given.encode(), str(wanted).encode()):
        raise VolumeAuthError(f"volume {bdm.volume_id}: the target refused the CHAP login of "
                              f"user {data.get('auth_username')!r}",
                              hint="check the volume's CHAP credentials")


def bdm_record(bdm: BlockDevice) -> dict[str, Any]:
    """A block device's entry in the record; `attached_at` is reset once attached."""
    return {
        "volume_id": bdm.volume_id,
        "mountpoint": bdm.mountpoint,
        "disk_bus": bdm.disk_bus,
        "connection_info": mask_secrets(bdm.connection.to_connection_info()),
        "attached_at": time.time(),
    }
