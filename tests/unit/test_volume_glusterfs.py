"""Nova's glusterfs connection_info: parsed and validated next to iSCSI, clear errors."""

from __future__ import annotations

import pytest

from virt.errors import InvalidRequest, VolumeUnreachable
from virt.model import VolumeConnection
from virt.volume import GlusterConnector, GlusterServer, connector_for, parse_glusterfs_volume
from virt.volume.glusterfs_mount import GlusterMounts, _unescape


def info(**data: object) -> dict[str, object]:
    return {"driver_volume_type": "glusterfs", "serial": "vol-9", "data": data}


def test_a_cinder_connection_info_parses():
    vol = parse_glusterfs_volume(info(export="192.0.2.10:/cinder-vol", name="volume-1234",
                                      format="qcow2",
                                      options="-o backup-volfile-servers=192.0.2.11:gl3.example"))
    assert vol.volume == "cinder-vol" and vol.name == "volume-1234" and vol.format == "qcow2"
    assert vol.servers == (GlusterServer("192.0.2.10"), GlusterServer("192.0.2.11"),
                           GlusterServer("gl3.example"))
    assert vol.source_name == "cinder-vol/volume-1234"
    assert vol.url == "gluster://192.0.2.10:24007/cinder-vol/volume-1234"
    assert vol.export == "192.0.2.10:/cinder-vol"
    assert vol.volume_id == "vol-9"


def test_defaults_port_subdir_ipv6_and_the_older_backup_option():
    vol = parse_glusterfs_volume(info(export="[2001:db8::1]:24010:/v/sub/dir", name="f.raw",
                                      options="backupvolfile-server=[2001:db8::2],acl"))
    assert vol.format == "raw"
    assert vol.server == GlusterServer("2001:db8::1", 24010)
    assert vol.servers[1] == GlusterServer("2001:db8::2", 24010)  # the export's port
    assert vol.subdir == "sub/dir" and vol.path == "sub/dir/f.raw"
    assert vol.source_name == "v/sub/dir/f.raw"
    assert vol.export == "[2001:db8::1]:24010:/v/sub/dir"
    assert vol.mount_options == ("acl",)


def test_options_as_a_list_of_backup_servers():
    vol = parse_glusterfs_volume(info(export="gl1:/v", name="x", options=["gl2", "gl3:24008"]))
    assert [str(s) for s in vol.servers] == ["gl1:24007", "gl2:24007", "gl3:24008"]


@pytest.mark.parametrize(("data", "words"), [
    ({"name": "x"}, ["'export'", "missing"]),
    ({"export": "gl1/vol", "name": "x"}, ["'export'", "host[:port]:/volume"]),
    ({"export": "gl1:vol", "name": "x"}, ["'export'", "host[:port]:/volume"]),
    ({"export": ":/vol", "name": "x"}, ["'export'"]),
    ({"export": "gl1:/", "name": "x"}, ["invalid volume name"]),
    ({"export": "gl1:/bad vol", "name": "x"}, ["invalid volume name"]),
    ({"export": "gl1:99999:/v", "name": "x"}, ["invalid port"]),
    ({"export": "2001:db8::1:/v", "name": "x"}, ["brackets"]),
    ({"export": "bad_host!:/v", "name": "x"}, ["invalid host"]),
    ({"export": "gl1:/v/../etc", "name": "x"}, ["relative path"]),
    ({"export": "gl1:/v"}, ["'name'", "missing"]),
    ({"export": "gl1:/v", "name": "../x"}, ["'name'", "relative path"]),
    ({"export": "gl1:/v", "name": "x", "format": "vmdk"}, ["'format'", "vmdk"]),
    ({"export": "gl1:/v", "name": "x", "options": "-o backup-volfile-servers="}, ["no server"]),
    ({"export": "gl1:/v", "name": "x", "options": "-o a;b"}, ["invalid mount option"]),
    ({"export": "gl1:/v", "name": "x", "options": 7}, ["'options'"]),
])
def test_malformed_connection_info_names_the_field(data, words):
    with pytest.raises(InvalidRequest) as err:
        parse_glusterfs_volume(info(**data))
    text = str(err.value)
    assert "GlusterFS connection_info" in text
    for word in words:
        assert word in text


def test_another_protocol_is_refused():
    with pytest.raises(InvalidRequest, match="not 'glusterfs'"):
        parse_glusterfs_volume({"driver_volume_type": "iscsi", "data": {}})


def test_the_connector_is_registered_next_to_iscsi():
    conn = VolumeConnection.from_connection_info(info(export="gl1:/v", name="x"))
    assert isinstance(connector_for(conn), GlusterConnector)
    with pytest.raises(InvalidRequest) as err:
        connector_for(VolumeConnection.from_connection_info(
            {"driver_volume_type": "nfs", "data": {}}))
    assert "glusterfs" in str(err.value.hint) and "iscsi" in str(err.value.hint)


def test_probe_of_a_closed_port_is_unreachable_without_waiting():
    conn = VolumeConnection.from_connection_info(info(export="127.0.0.1:1:/v", name="x"))
    with pytest.raises(VolumeUnreachable, match="no Gluster server reachable"):
        GlusterConnector().probe(conn, timeout=2)


def test_one_mountpoint_per_export_under_the_base(tmp_path):
    mounts = GlusterMounts(str(tmp_path))
    a = parse_glusterfs_volume(info(export="gl1:/v", name="a"))
    b = parse_glusterfs_volume(info(export="gl1:/v", name="b", options=["gl2"]))
    c = parse_glusterfs_volume(info(export="gl1:/w", name="a"))
    assert mounts.mountpoint(a) == mounts.mountpoint(b) != mounts.mountpoint(c)
    assert mounts.mountpoint(a).startswith(str(tmp_path) + "/")
    assert mounts.file_path(b) == mounts.mountpoint(a) + "/b"
    assert mounts.mounted() == set()  # nothing of ours in this process's mount table


def test_mountinfo_escapes():
    assert _unescape(r"/a\040b\134c") == "/a b\\c"


def test_the_conformance_suite_takes_a_glusterfs_volume_as_a_second_kind(tmp_path):
    import json

    from virt.conformance.settings import load_settings
    from virt.conformance.test_capabilities import volume_target
    from virt.errors import ConfigError

    def settings_with(connection_info: dict[str, object]):
        path = tmp_path / "driver.conf"
        path.write_text("[DEFAULT]\ncompute_driver = fake\n[conformance]\n"
                        f"gluster_volume_connection_info = {json.dumps(connection_info)}\n")
        return load_settings(path)

    gluster = settings_with(info(export="192.0.2.10:/vols/sub", name="v.raw")).gluster_volume()
    assert gluster is not None and volume_target(gluster) == "vols/sub/v.raw"
    with pytest.raises(ConfigError, match="must be 'glusterfs', not 'iscsi'"):
        settings_with({"driver_volume_type": "iscsi", "data": {}})
    with pytest.raises(ConfigError, match="gluster_volume_connection_info"):
        settings_with(info(export="192.0.2.10/vols", name="v.raw")).gluster_volume()
