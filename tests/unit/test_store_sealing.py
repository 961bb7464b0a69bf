"""Secrets at rest: CHAP passwords in the store's connection_info are sealed with the key in
`[DEFAULT] secret_key_file`; plain rows of older virtkit stay readable and are sealed when next
written; another key, or none, is a clear error naming the file."""

from __future__ import annotations

import dataclasses
import json
import stat
import threading

import pytest
import sqlalchemy as sa

from tests.pg import fresh_database, fresh_mysql_database
from tests.testbed import env
from tests.volumes import CHAP_CONNECTION_INFO as CONNECTION_INFO
from tests.volumes import CHAP_SECRET
from virt.config import build_conf
from virt.errors import StoreError
from virt.model import BlockDevice, Flavor, ImageRef, Instance, VolumeConnection, new_uuid
from virt.store import Store
from virt.store.sealing import SEALED_PREFIX, Sealer, read_key_file


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mariadb", marks=pytest.mark.postgres)])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        (tmp_path / "state").mkdir()
        yield f"sqlite:///{tmp_path}/state/virtkit.sqlite"
    elif request.param == "postgres":
        with fresh_database(env("VIRTKIT_TEST_PG_URL")) as url:
            yield url
    else:
        with fresh_mysql_database(env("VIRTKIT_TEST_MYSQL_URL")) as url:
            yield url


@pytest.fixture
def key_file(tmp_path):
    return tmp_path / "secret.key"


@pytest.fixture
def store(store_url, key_file):
    with Store(store_url, secret_key_file=key_file) as opened:
        yield opened


def _instance(name: str = "vm1", host: str = "host-a") -> Instance:
    return Instance(uuid=new_uuid(), name=name, flavor=Flavor("m1.tiny", 1, 512, 1),
                    image=ImageRef("cirros"), host=host)


def _device(info=CONNECTION_INFO, mountpoint: str = "/dev/vdb") -> BlockDevice:
    return BlockDevice(VolumeConnection.from_connection_info(info), mountpoint, volume_id="vol-1")


def _raw(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT connection_info FROM block_devices "
                                         "ORDER BY id")).scalars())


def test_secrets_are_sealed_at_rest_and_opened_by_every_reader(store, key_file):
    record = store.create_instance(_instance())
    bdm = store.add_block_device(record.uuid, _device())
    assert bdm.connection_info == CONNECTION_INFO
    (raw,) = _raw(store)
    assert CHAP_SECRET not in raw
    stored = json.loads(raw)
    assert stored["data"]["auth_password"].startswith(SEALED_PREFIX)
    # What is not secret stays as Nova keeps it.
    assert {k: v for k, v in stored["data"].items() if k != "auth_password"} == {
        k: v for k, v in CONNECTION_INFO["data"].items() if k != "auth_password"}
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert store.list_block_devices(record.uuid)[0].connection_info == CONNECTION_INFO
    assert store.block_devices_of_host("host-a")[record.uuid][0].connection_info == CONNECTION_INFO
    assert store.attachments_of_volume("vol-1")[0].connection_info == CONNECTION_INFO
    assert store.find_block_device(record.uuid, "vdb").to_block_device() == _device()

    refreshed = {**CONNECTION_INFO, "data": {**CONNECTION_INFO["data"], "target_lun": 2}}
    store.update_block_device(bdm.id, connection_info=refreshed)
    assert CHAP_SECRET not in _raw(store)[0]
    assert store.list_block_devices(record.uuid)[0].connection_info == refreshed
    # A second store on the same key file (another host) reads it.
    with Store(store.url, secret_key_file=key_file) as other:
        assert other.list_block_devices(record.uuid)[0].connection_info == refreshed


def test_nested_and_listed_secrets_are_sealed_too(store):
    info = {**CONNECTION_INFO, "data": {**CONNECTION_INFO["data"],
                                        "auth_password_in": "in-Secret-0815",
                                        "extra": {"chap": {"secret": "deep-Secret-1234"}},
                                        "encrypted": False}}
    record = store.create_instance(_instance())
    store.add_block_device(record.uuid, _device(info))
    (raw,) = _raw(store)
    for secret in (CHAP_SECRET, "in-Secret-0815", "deep-Secret-1234"):
        assert secret not in raw
    assert json.loads(raw)["data"]["encrypted"] is False
    assert store.list_block_devices(record.uuid)[0].connection_info == info


def test_plain_rows_of_older_virtkit_stay_readable_and_are_sealed_on_next_write(store_url,
                                                                               key_file):
    with Store(store_url) as old:  # no key: as virtkit wrote rows before sealing
        record = old.create_instance(_instance())
        bdm = old.add_block_device(record.uuid, _device())
        assert json.loads(_raw(old)[0]) == CONNECTION_INFO
    with Store(store_url, secret_key_file=key_file) as new:
        assert new.list_block_devices(record.uuid)[0].connection_info == CONNECTION_INFO
        assert new.attachments_of_volume("vol-1")[0].connection_info == CONNECTION_INFO
        new.update_block_device(bdm.id, connection_info=CONNECTION_INFO)
        assert CHAP_SECRET not in _raw(new)[0]
        assert new.list_block_devices(record.uuid)[0].connection_info == CONNECTION_INFO


def test_another_key_or_none_is_a_clear_error_naming_the_file(store, store_url, tmp_path):
    record = store.create_instance(_instance())
    store.add_block_device(record.uuid, _device())
    other_key = tmp_path / "other.key"
    with Store(store_url, secret_key_file=other_key) as other:
        other.create_instance(dataclasses.replace(_instance("vm2")))  # creates other.key
        other.add_block_device(other.list_instances(name="vm2")[0].uuid, _device())
        with pytest.raises(StoreError, match="sealed with a key other than") as caught:
            other.list_block_devices(record.uuid)
        assert str(other_key) in str(caught.value)
        assert "secret_key_file" in caught.value.hint
        assert CHAP_SECRET not in str(caught.value)
        with pytest.raises(StoreError, match="other than"):
            other.block_devices_of_host("host-a")
        with pytest.raises(StoreError, match="other than"):
            other.attachments_of_volume("vol-1")
    with Store(store_url) as keyless, pytest.raises(StoreError, match="without a key"):
        keyless.list_block_devices(record.uuid)
    missing = tmp_path / "missing.key"
    with Store(store_url, secret_key_file=missing) as lost:
        with pytest.raises(StoreError, match="does not exist") as caught:
            lost.list_block_devices(record.uuid)
        assert str(missing) in str(caught.value)
        assert not missing.exists()  # reading never creates a key


def test_key_file_is_created_once_even_by_racing_writers(tmp_path):
    path = tmp_path / "secret.key"
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(read_key_file(path, create=True)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]  # no temp left


def test_bad_key_files_are_clear_errors(tmp_path):
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    with pytest.raises(StoreError, match="does not hold a Fernet key"):
        read_key_file(garbage, create=False)
    with pytest.raises(StoreError, match="directory .* does not exist"):
        Sealer(tmp_path / "nowhere" / "secret.key").dump(CONNECTION_INFO)


def test_the_option_defaults_to_the_state_path_and_from_conf_uses_it(tmp_path):
    conf = build_conf(overrides={"state_path": str(tmp_path)})
    assert conf.secret_key_file == f"{tmp_path}/secret.key"
    with Store.from_conf(conf) as store:
        record = store.create_instance(_instance())
        store.add_block_device(record.uuid, _device())
        assert CHAP_SECRET not in _raw(store)[0]
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
