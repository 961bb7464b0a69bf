"""Guest-side pieces on their own: password setters (real chpasswd), config, files, network."""

from __future__ import annotations

import os
import shutil

import pytest

from guest_agent import protocol as p
from guest_agent.commands import CommandHandler
from guest_agent.config import AgentConfig, ConfigError, load
from guest_agent.files import confined_path
from guest_agent.network import render_interfaces
from guest_agent.passwords import ChpasswdSetter, SetterError, ShadowFileSetter, make_setter
from tests.xenstore.checks import assert_crypt_matches

SHADOW = "root:*:19000:0:99999:7:::\nguest:!:19000:0:99999:7:::\n"


@pytest.fixture
def chroot(tmp_path):
    etc = tmp_path / "root" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000::/home/guest:/bin/sh\n"
    )
    (etc / "group").write_text("root:x:0:\n")
    (etc / "shadow").write_text(SHADOW)
    (etc / "shadow").chmod(0o600)
    return tmp_path / "root"


def _hash(path, user="guest"):
    return next(line.split(":")[1] for line in open(path) if line.startswith(user + ":"))


@pytest.mark.skipif(
    shutil.which("chpasswd") is None or os.geteuid() != 0, reason="needs chpasswd as root"
)
def test_chpasswd_setter_with_the_real_chpasswd(chroot):
    setter = ChpasswdSetter(root=str(chroot), crypt_method="SHA512")
    setter.set_password("guest", "pw with spaces: and colon €")
    assert_crypt_matches(_hash(chroot / "etc" / "shadow"), "pw with spaces: and colon €")
    with pytest.raises(SetterError) as err:
        setter.set_password("nobody-here", "secret-value-123")
    assert "secret-value-123" not in str(err.value)


def test_shadow_setter_is_atomic_and_keeps_mode(tmp_path):
    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    shadow.chmod(0o640)
    ShadowFileSetter(str(shadow)).set_password("guest", "hunter2")
    assert_crypt_matches(_hash(shadow), "hunter2")
    assert oct(shadow.stat().st_mode & 0o777) == "0o640"
    assert _hash(shadow, "root") == "*"
    assert sorted(os.listdir(tmp_path)) == [".pwd.lock", "shadow"]  # no temp file left
    with pytest.raises(SetterError):
        ShadowFileSetter(str(shadow)).set_password("absent", "x")


def test_config_file_and_errors(tmp_path):
    conf = tmp_path / "a.conf"
    conf.write_text(
        "[agent]\nuser = admin\nallow_legacy = false\ninject_allowed_paths = /root/.ssh, /etc/motd.d\n"
    )
    config = load(str(conf))
    assert (config.user, config.allow_legacy, config.inject_allowed_paths) == (
        "admin",
        False,
        ("/root/.ssh", "/etc/motd.d"),
    )
    for text, fragment in [
        ("[agent]\npoll_interval = fast\n", "not a valid value"),
        ("[agent]\ntransport = carrier-pigeon\n", "transport"),
        ("[agent]\nupdate_sha256 = abc\n", "update_sha256"),
        ("[agent]\nuser = a:b\n", "user"),
        ("[agent]\ninject_allowed_paths = relative\n", "absolute"),
    ]:
        conf.write_text(text)
        with pytest.raises(ConfigError) as err:
            load(str(conf))
        assert fragment in str(err.value)
    assert isinstance(make_setter(AgentConfig(password_method="shadow")), ShadowFileSetter)


def test_confined_path(tmp_path):
    allowed = (str(tmp_path / "ok"),)
    (tmp_path / "ok").mkdir()
    assert confined_path(str(tmp_path / "ok" / "a" / "b"), allowed) == str(
        tmp_path / "ok" / "a" / "b"
    )
    for bad in (
        "relative/x",
        str(tmp_path / "ok" / ".." / "x"),
        str(tmp_path / "other"),
        str(tmp_path / "ok"),
        "/x\0y",
    ):
        with pytest.raises(p.ProtocolError) as err:
            confined_path(bad, allowed)
        assert err.value.kind is p.ErrorKind.FORBIDDEN
    os.symlink("/etc", tmp_path / "ok" / "etc")
    with pytest.raises(p.ProtocolError):
        confined_path(str(tmp_path / "ok" / "etc" / "passwd"), allowed)


def test_render_interfaces_uses_real_names_and_dhcp_fallback():
    text = render_interfaces(
        [
            {"mac": "52:54:00:aa:bb:cc", "ips": []},
            {"mac": "525400000001", "ips": [{"ip": "10.0.0.2", "netmask": "24"}]},
        ],
        names=lambda: {"52:54:00:aa:bb:cc": "ens3"},
    )
    assert "auto ens3\niface ens3 inet dhcp" in text
    assert "iface eth0 inet static\n    address 10.0.0.2\n    netmask 24" in text
    with pytest.raises(p.ProtocolError):
        render_interfaces([{"mac": "zz", "ips": []}], names=dict)


class Recorder:
    def __init__(self):
        self.calls = []

    def set_password(self, user, password):
        self.calls.append((user, password))


RID = "11111111-2222-4333-8444-555555555555"


def _handler(**overrides):
    setter = Recorder()
    return CommandHandler(AgentConfig(user="admin", **overrides), setter), setter


def test_legacy_key_is_single_use_and_can_be_disabled():
    handler, setter = _handler()
    host = p.legacy_private_key()
    reply = p.Reply.parse(
        handler.handle(RID, p.Request(RID, "keyinit", str(p.legacy_public(host))).to_json())
    )
    shared = p.legacy_shared(host, int(reply.message))
    rid2 = "11111111-2222-4333-8444-555555555556"
    ok = p.Reply.parse(
        handler.handle(
            rid2, p.Request(rid2, "password", p.legacy_encrypt_password(shared, "pw1")).to_json()
        )
    )
    assert ok.ok and setter.calls == [("admin", "pw1")]
    rid3 = "11111111-2222-4333-8444-555555555557"
    again = p.Reply.parse(
        handler.handle(
            rid3, p.Request(rid3, "password", p.legacy_encrypt_password(shared, "pw2")).to_json()
        )
    )
    assert again.error is p.ErrorKind.BAD_REQUEST and "keyinit" in again.message
    handler, _ = _handler(allow_legacy=False)
    off = p.Reply.parse(handler.handle(RID, p.Request(RID, "keyinit", "12345").to_json()))
    assert off.error is p.ErrorKind.UNSUPPORTED


def test_legacy_wrong_key_is_decrypt_failed_not_garbage():
    handler, setter = _handler()
    handler.handle(RID, p.Request(RID, "keyinit", str(p.legacy_public(5))).to_json())
    rid2 = "11111111-2222-4333-8444-555555555556"
    reply = p.Reply.parse(
        handler.handle(
            rid2, p.Request(rid2, "password", p.legacy_encrypt_password(12345, "x")).to_json()
        )
    )
    assert reply.error is p.ErrorKind.DECRYPT_FAILED and setter.calls == []


def test_password_with_newline_refused():
    handler, setter = _handler()
    host = p.legacy_private_key()
    reply = p.Reply.parse(
        handler.handle(RID, p.Request(RID, "keyinit", str(p.legacy_public(host))).to_json())
    )
    shared = p.legacy_shared(host, int(reply.message))
    rid2 = "11111111-2222-4333-8444-555555555556"
    bad = p.Reply.parse(
        handler.handle(
            rid2, p.Request(rid2, "password", p.legacy_encrypt(shared, "a\nroot:b\n")).to_json()
        )
    )
    assert bad.error is p.ErrorKind.BAD_REQUEST and setter.calls == []


class _NoSetter:
    def set_password(self, user: str, password: str) -> None:
        raise AssertionError("not called")


def _inject(tmp_path, monkeypatch, relative: str, swap) -> dict:
    """injectfile through the real handler, with `swap` run between the path check and the
    write (what a guest user racing the agent could do)."""
    import base64
    import json
    import uuid

    import guest_agent.commands as commands

    allowed = tmp_path / "root" / ".ssh"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    real_check = commands.confined_path

    def check_then_swap(path, roots):
        result = real_check(path, roots)
        swap(allowed, tmp_path / "outside")
        return result

    monkeypatch.setattr(commands, "confined_path", check_then_swap)
    handler = CommandHandler(AgentConfig(inject_allowed_paths=(str(allowed),)), _NoSetter())
    value = {"path": str(allowed / relative), "b64": base64.b64encode(b"ssh-ed25519 X").decode()}
    request = json.dumps({"name": "injectfile", "value": value, "v": 2})
    return json.loads(handler.handle(str(uuid.uuid4()), request))


def test_injectfile_directory_swapped_for_a_symlink_after_the_check(tmp_path, monkeypatch):
    def swap(allowed, outside):
        os.rmdir(allowed / "sub")
        os.symlink(outside, allowed / "sub")

    reply = _inject(tmp_path, monkeypatch, "sub/authorized_keys", swap)
    assert reply["error"] == "forbidden"
    assert os.listdir(tmp_path / "outside") == []


def test_injectfile_new_directory_swapped_for_a_symlink(tmp_path, monkeypatch):
    def swap(allowed, outside):  # a directory the write would create appears as a link
        os.symlink(outside, allowed / "new")

    reply = _inject(tmp_path, monkeypatch, "new/deeper/authorized_keys", swap)
    assert reply["error"] == "forbidden"
    assert os.listdir(tmp_path / "outside") == []


def test_injectfile_file_swapped_for_a_symlink(tmp_path, monkeypatch):
    def swap(allowed, outside):
        (outside / "shadow").write_text("untouched")
        os.symlink(outside / "shadow", allowed / "sub" / "authorized_keys")

    reply = _inject(tmp_path, monkeypatch, "sub/authorized_keys", swap)
    assert reply["error"] == "forbidden"
    assert (tmp_path / "outside" / "shadow").read_text() == "untouched"


def test_injectfile_writes_under_the_allowed_directory(tmp_path, monkeypatch):
    reply = _inject(tmp_path, monkeypatch, "sub/a/b/authorized_keys", lambda *_: None)
    assert reply["returncode"] == "0"
    target = tmp_path / "root" / ".ssh" / "sub" / "a" / "b" / "authorized_keys"
    assert target.read_bytes() == b"ssh-ed25519 X"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert oct((target.parent).stat().st_mode & 0o777) == "0o700"
    assert [n for n in os.listdir(target.parent) if n.startswith(".virtkit")] == []


# -- offer_v2 = false: an agent that negotiates like an old one ------------------------------


def test_offer_v2_false_neither_announces_nor_accepts_v2(tmp_path):
    conf = tmp_path / "old.conf"
    conf.write_text("[agent]\noffer_v2 = false\n")
    assert load(str(conf)).offer_v2 is False
    assert AgentConfig().offer_v2 is True
    handler, setter = _handler(offer_v2=False)
    features = p.Reply.parse(handler.handle(RID, p.Request(RID, "features").to_json()))
    assert features.ok and "v2" not in features.message.split(",")
    assert "keyinit" in features.message.split(",")
    rid2 = "11111111-2222-4333-8444-555555555556"
    v2 = p.Reply.parse(
        handler.handle(
            rid2, p.Request(rid2, "keyinit", p.v2_keyinit_value(p.V2KeyPair()), 2).to_json()
        )
    )
    assert v2.error is p.ErrorKind.UNSUPPORTED and "offer_v2" in v2.message
    host = p.legacy_private_key()
    rid3 = "11111111-2222-4333-8444-555555555557"
    legacy = p.Reply.parse(
        handler.handle(rid3, p.Request(rid3, "keyinit", str(p.legacy_public(host))).to_json())
    )
    assert legacy.returncode == "D0"


# -- Windows: the password setter (no Windows guest here: a fake win32net) --------------------


class FakeWin32Net:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple] = []
        self.error = error

    def NetUserSetInfo(self, server, user, level, info):
        self.calls.append((server, user, level, info))
        if self.error is not None:
            raise self.error


@pytest.fixture
def no_subprocess(monkeypatch):
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError("a subprocess was started")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)


def test_windows_setter_calls_netusersetinfo_1003(monkeypatch, no_subprocess):
    import sys

    from guest_agent.passwords import WindowsSetter

    fake = FakeWin32Net()
    monkeypatch.setitem(sys.modules, "win32net", fake)
    WindowsSetter().set_password("Administrator", 'pässwörd with "quotes"')
    assert fake.calls == [(None, "Administrator", 1003, {"password": 'pässwörd with "quotes"'})]


def test_windows_setter_errors_hold_no_secret(monkeypatch, no_subprocess):
    import sys

    from guest_agent.passwords import WindowsSetter

    class WinError(Exception):
        winerror = 2245  # NERR_PasswordTooShort

    monkeypatch.setitem(sys.modules, "win32net", FakeWin32Net(WinError(2245, "x", "too short")))
    with pytest.raises(SetterError) as err:
        WindowsSetter().set_password("Administrator", "secret-value-123")
    assert "2245" in str(err.value) and "secret-value-123" not in str(err.value)
    monkeypatch.setitem(sys.modules, "win32net", None)  # pywin32 not installed
    with pytest.raises(SetterError, match="pywin32"):
        WindowsSetter().set_password("Administrator", "secret-value-123")


def test_make_setter_picks_windows_on_win32(monkeypatch, no_subprocess):
    import sys

    from guest_agent.passwords import WindowsSetter

    monkeypatch.setattr(sys, "platform", "win32")
    config = AgentConfig()
    assert config.user == "Administrator"
    assert isinstance(make_setter(config), WindowsSetter)
    assert isinstance(make_setter(AgentConfig(password_method="chpasswd")), ChpasswdSetter)
    monkeypatch.setattr(sys, "platform", "linux")
    assert isinstance(make_setter(AgentConfig()), ChpasswdSetter)


def test_service_on_windows_says_no_transport(monkeypatch, capsys):
    import sys

    from guest_agent import service

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(
        service, "AgentService", lambda *a, **k: pytest.fail("a transport was started")
    )
    assert service.main(["--once"]) == 1
    assert "no transport for Windows guests yet" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_crypt_check_falls_back_to_openssl_without_the_crypt_module(tmp_path, monkeypatch):
    import subprocess
    import sys

    shadow = tmp_path / "shadow"
    shadow.write_text(SHADOW)
    ShadowFileSetter(str(shadow)).set_password("guest", "pw with spaces €")
    hashed = _hash(shadow)
    monkeypatch.setitem(sys.modules, "crypt", None)  # as on Python 3.13
    argvs = []
    real_run = subprocess.run

    def recording_run(argv, **kwargs):
        argvs.append(list(argv))
        return real_run(argv, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    assert_crypt_matches(hashed, "pw with spaces €")
    with pytest.raises(AssertionError):
        assert_crypt_matches(hashed, "wrong password")
    assert len(argvs) >= 3 and all(argv[:3] == ["openssl", "passwd", "-6"] for argv in argvs)
    assert not any("pw with spaces €" in arg for argv in argvs for arg in argv)  # stdin only
