"""Secrets masked by what their keys are, and scrubbed from free text once seen."""

from __future__ import annotations

import logging

import pytest

from virt.lifecycle import fault_text
from virt.masking import MASK, ScrubFilter, is_secret_key, mask_secrets, remember, scrub
from virt.model import VolumeConnection


@pytest.mark.parametrize("key", [
    "password", "auth_password", "AUTH_PASSWORD", "discovery_auth_password", "passwd",
    "root_pw", "admin_pw", "adminPass", "AdminPass", "secret", "client_secret", "token",
    "X-Auth-Token", "keyring", "chap_credentials", "CHAPSecret", "auth_username_in",
    "private_key", "chappassword_secret", "vnc_password", "passphrase"])
def test_secret_keys_are_recognised_by_what_they_name(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["auth_method", "auth_username", "target_iqn", "name",
                                 "pw_policy", "keyrings_path", "uuid", "power_state"])
def test_ordinary_keys_are_not_secrets(key):
    assert not is_secret_key(key)


def test_nested_values_are_masked_at_any_depth():
    doc = {"data": {"Auth_Password": "s3cret-one", "hosts": [{"token": "tok-value-1"}],
                    "target_iqn": "iqn.x", "flag_password_set": True},
           "list": [{"root_pw": "pw-value-2"}]}
    masked = mask_secrets(doc)
    assert masked["data"]["Auth_Password"] == MASK
    assert masked["data"]["hosts"][0]["token"] == MASK
    assert masked["list"][0]["root_pw"] == MASK
    assert masked["data"]["target_iqn"] == "iqn.x"
    assert masked["data"]["flag_password_set"] is True  # a flag about a secret is not one
    assert doc["data"]["Auth_Password"] == "s3cret-one"  # a copy; the input is untouched


def test_a_seen_secret_is_scrubbed_from_free_text():
    mask_secrets({"nested": {"chap_secret": "echoed-back-77"}})
    assert scrub("target said: login failed for echoed-back-77 (x)") == (
        f"target said: login failed for {MASK} (x)")
    assert scrub("no secret here") == "no secret here"


def test_connection_info_secrets_are_remembered_on_parsing():
    VolumeConnection.from_connection_info(
        {"driver_volume_type": "iscsi", "data": {"auth_password": "volume-pass-31"}})
    assert "volume-pass-31" not in scrub("error: CHAP volume-pass-31 rejected")


def test_extra_secrets_and_short_values():
    assert scrub("abc xyz-extra-9", "xyz-extra-9") == f"abc {MASK}"
    remember("ab")  # too short to scrub from free text (keys still mask it)
    assert scrub("tab ab") == "tab ab"


def test_fault_texts_are_scrubbed():
    remember("fault-pass-44")
    assert "fault-pass-44" not in fault_text("spawn failed", RuntimeError("bad fault-pass-44"))


def test_log_filter_scrubs_messages_arguments_and_tracebacks(caplog):
    remember("logged-pass-55")
    logger = logging.getLogger("virt.test-masking")
    handler = caplog.handler
    handler.addFilter(ScrubFilter())
    try:
        logger.warning("driver said %s", "wrong logged-pass-55")
        try:
            raise RuntimeError("boom logged-pass-55")
        except RuntimeError:
            logger.exception("failed")
    finally:
        handler.filters.clear()
    assert "logged-pass-55" not in caplog.text
    assert "driver said wrong ***" in caplog.text
