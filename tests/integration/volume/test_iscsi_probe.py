"""The iSCSI connector against a real tgtd target (CHAP, missing LUN, unreachable portal)."""

from __future__ import annotations

import logging
import socket
import subprocess

import pytest

from tests.iscsi_target import iscsi_targets  # noqa: F401  (fixture)
from virt.errors import VolumeAuthError, VolumeNotFound, VolumeUnreachable
from virt.model import VolumeConnection
from virt.volume import IscsiConnector


def conn(info):
    return VolumeConnection.from_connection_info(info)


def test_probe_reads_size(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(size_mb=32)
    result = IscsiConnector().probe(conn(lun.connection_info()))
    assert result.size_bytes == 32 * 1024 * 1024
    assert result.path == lun.portal


def test_probe_with_chap_starts_no_child_and_logs_no_secret(iscsi_targets, monkeypatch, caplog):  # noqa: F811
    """libiscsi runs in this process: the CHAP secret is in no child's argv or environment
    because there is no child at all."""
    lun = iscsi_targets.create(size_mb=16, chap=True)
    started = []
    real_popen_init = subprocess.Popen.__init__

    def spy(self, cmd, *args, **kwargs):
        started.append(cmd)
        real_popen_init(self, cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    caplog.set_level(logging.DEBUG)
    result = IscsiConnector().probe(conn(lun.connection_info()))
    assert result.size_bytes == 16 * 1024 * 1024
    assert started == []
    assert lun.password not in caplog.text


def test_wrong_chap_secret(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(chap=True)
    with pytest.raises(VolumeAuthError) as err:
        IscsiConnector().probe(conn(lun.connection_info(auth_password="wrong-secret")))
    assert "wrong-secret" not in str(err.value) and lun.password not in str(err.value)


def test_chap_target_without_credentials(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(chap=True)
    info = lun.connection_info()
    for key in ("auth_method", "auth_username", "auth_password"):
        del info["data"][key]
    with pytest.raises(VolumeAuthError, match="requires authentication"):
        IscsiConnector().probe(conn(info))


def test_missing_lun_and_target(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create()
    with pytest.raises(VolumeNotFound, match="no LUN 7"):
        IscsiConnector().probe(conn(lun.connection_info(target_lun=7)))
    with pytest.raises(VolumeNotFound, match="no target"):
        IscsiConnector().probe(conn(lun.connection_info(target_iqn=lun.iqn + "-gone")))


def test_unreachable_portal_is_bounded(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create()
    with socket.socket() as sock:  # a port that is certainly closed
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(VolumeUnreachable, match="no portal reachable"):
        IscsiConnector().probe(conn(lun.connection_info(target_portal=f"127.0.0.1:{closed}")),
                               timeout=3)


def test_multipath_fails_over_to_a_live_portal(iscsi_targets):  # noqa: F811
    lun = iscsi_targets.create(size_mb=8)
    info = lun.connection_info(target_portals=["127.0.0.1:1", lun.portal],
                               target_iqns=[lun.iqn, lun.iqn], target_luns=[1, 1])
    del info["data"]["target_portal"]
    result = IscsiConnector().probe(conn(info), timeout=3)
    assert result.path == lun.portal and result.size_bytes == 8 * 1024 * 1024
