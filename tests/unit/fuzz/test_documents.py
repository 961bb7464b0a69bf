"""connection_info documents and flavor specs, generated: given to `virtkit volume attach`,
`virtkit boot --volume` and `[DEFAULT] flavors`. A wrong one exits with its code, an error
line naming what is wrong, no traceback, and the store as it was (no block device row, no
instance record)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.fuzz.helpers import (
    FAILURE_CODES,
    assert_clean_failure,
    assert_nothing_half_written,
    bounded,
    dump,
    run_main,
)
from tests.unit.fuzz.test_cli_args import Bed
from virt.cli.main import main
from virt.config import parse_flavor
from virt.errors import EXIT_USAGE, ConfigError
from virt.model import Flavor

json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=8)
ISCSI_KEYS = ["target_portal", "target_portals", "target_iqn", "target_iqns", "target_lun",
              "target_luns", "auth_method", "auth_username", "auth_password", "volume_id"]
good_iscsi = {"target_portal": "192.0.2.1:3260", "target_iqn": "iqn.2024-01.org.test:v1",
              "target_lun": 1}
#: Structured but wrong: Nova's shape with wrong types or values in it.
wrong_documents = st.one_of(
    st.fixed_dictionaries({"driver_volume_type": st.sampled_from(["iscsi", "ISCSI", "rbd",
                                                                  "glusterfs", "zz", ""])
                           | json_value, "data": json_value}),
    st.dictionaries(st.sampled_from(ISCSI_KEYS), json_value, min_size=1).map(
        lambda data: {"driver_volume_type": "iscsi", "data": {**good_iscsi, **data}}),
    st.dictionaries(st.sampled_from(ISCSI_KEYS), json_value).map(
        lambda data: {"driver_volume_type": "iscsi", "data": data}),
    st.fixed_dictionaries({"data": st.just(good_iscsi)}),
    json_value.filter(lambda v: not isinstance(v, dict)),
)
random_documents = st.one_of(json_value.map(json.dumps), st.text(max_size=40),
                             st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
as_text = st.one_of(wrong_documents.map(json.dumps), random_documents)


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def _attach_or_boot(bed: Bed, text: str, how: str) -> list[str]:
    path = bed.tmp / "conninfo.json"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    if how == "attach":
        return ["volume", "attach", "web", str(path), "/dev/vdb"]
    return ["boot", "fresh", "--image", "cirros", "--flavor", "m1.tiny",
            "--volume", f"{path}:/dev/vdb"]


@bounded(150)
@given(text=as_text, how=st.sampled_from(["attach", "boot"]))
def test_connection_info_documents(bed, tally, text, how):
    # A failed attach records its fault on the instance (test_compute): that is no half-write.
    ignore = {"instances": {"fault", "updated_at"}} if how == "attach" else None
    with tally.check("connection_info"):
        before = dump(bed.database, ignore)
        ran = bed.run(*_attach_or_boot(bed, text, how))
        if ran.code == 0:  # a document that is usable after all: undo it for the next one
            undo = (["volume", "detach", "web", "/dev/vdb"] if how == "attach"
                    else ["delete", "fresh"])
            assert bed.run(*undo).code == 0
            return
        assert_clean_failure(ran, "virtkit", FAILURE_CODES)
        assert any(word in ran.err for word in ("connection_info", "volume", "iscsi", "iSCSI",
                                                "target", "portal", "lun", "auth")), ran.err
        assert_nothing_half_written(before, dump(bed.database, ignore))


spec_part = st.one_of(st.integers(min_value=-5, max_value=10**9).map(str),
                      st.sampled_from(["", "x", "1.5", " ", "0x10", "-0", "1e3"]),
                      st.text(max_size=5))
spec = st.one_of(st.lists(spec_part, min_size=0, max_size=8).map(":".join),
                 st.text(max_size=30))


@bounded(150)
@given(spec=spec)
def test_flavor_specs_parse_or_say_why(tally, spec):
    with tally.check("flavor"):
        try:
            flavor = parse_flavor(spec)
        except ConfigError as exc:
            assert exc.exit_code == EXIT_USAGE
            assert "flavor" in str(exc)
        else:
            assert isinstance(flavor, Flavor) and flavor.vcpus >= 1 and flavor.memory_mb >= 1


bad_flavor_spec = st.one_of(
    st.tuples(st.sampled_from(["vcpus", "memory"]), st.integers(max_value=0)).map(
        lambda t: f"fz:{t[1]}:64:1" if t[0] == "vcpus" else f"fz:1:{t[1]}:1"),
    st.integers(min_value=4097, max_value=10**20).map(lambda n: f"fz:{n}:64:1"),
    st.integers(max_value=-1).map(lambda n: f"fz:1:64:{n}"),
    st.sampled_from(["fz", "fz:1", "fz:1:64", "fz:1:64:1:0:0:9", "fz:a:64:1", "fz:1:b:1",
                     "fz:1:64:1.5", ":1:64:1"]),
)


@bounded(40)
@given(spec=bad_flavor_spec)
def test_bad_configured_flavor_refused_by_boot(bed, tally, spec):
    with tally.check("flavor"):
        config = bed.tmp / "flavors.conf"
        config.write_text(bed.config.read_text() + f"flavors = {spec}\n")
        before = dump(bed.database)
        ran = run_main(main, ["boot", "fresh", "--image", "cirros", "--flavor", "fz",
                              "--config", str(config)])
        assert_clean_failure(ran, "virtkit", frozenset({EXIT_USAGE}))
        assert "flavor" in ran.err, ran.err
        assert dump(bed.database) == before
