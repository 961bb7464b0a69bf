"""A Nova-style iSCSI connection_info with CHAP, for tests that never reach a real target."""

CHAP_SECRET = "chap-Secret-4711"
CHAP_CONNECTION_INFO = {
    "driver_volume_type": "iscsi",
    "serial": "vol-1",
    "data": {
        "target_portal": "127.0.0.1:3260",
        "target_iqn": "iqn.2010-10.org.openstack:volume-1",
        "target_lun": 1,
        "auth_method": "CHAP",
        "auth_username": "user",
        "auth_password": CHAP_SECRET,
    },
}
