"""The codecs against the research file's known answers and the real openssl CLI."""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess

import pytest

from guest_agent import protocol as p

V1_S = 27234591073885988013566387861589
V4_A_PRIV = 5373003642731685151011
V4_B_PRIV = 88962710306127702866241727433142015
V4_S = 42212498014643735436438456950707

V4_TABLE = [
    ("hunter2", "4iipDhggLPZX/R9oHwfr3Q=="),
    ("", "53KeoR8ZoSvQ4mhKXvC3fw=="),
    ("0123456789abcde", "lrSThvePuGU67CfZ18mL4aOAJiGnbMRJUOCC/4oxdEw="),
    (
        'Pa$$w0rd with spaces & "quotes"',
        "rQFf+Imt9S1/5c1/V3S140kKbIUcK9BBXNsPVw6UQVsmQnUYZvLQ+2UyO9V2tW3M",
    ),
    ("pässwörd€", "qyYqMIjff5QMp8jta6WVFQ=="),
]


def test_v1_shared_secret_and_kdf():
    guest_private = int(
        "2311212056221575424181384077217018408327386330309836681185200335772446841869122972713534"
        "2175356890641372786089585790901070088755675269543831650785847026033312463420236130767667"
        "21726"
    )
    assert p.legacy_shared(guest_private, 29146890515040234272807524713655) == V1_S
    key, iv = p.evp_bytes_to_key_md5(b"None")
    assert key.hex() == "6adf97f83acf6453d4a6a4b1070f3754"
    assert iv.hex() == "23640dec368fbef3036470fc5465b865"


def test_v2_kdf_and_secret_vector():
    key, iv = p.evp_bytes_to_key_md5(str(V1_S).encode())
    assert key.hex().upper() == "4ADF26AD6C41C4E380B646DA023D775B"
    assert iv.hex().upper() == "09449B4AACBE76FF600F2BEB5FB8788D"
    assert p.legacy_encrypt(V1_S, "secret\n") == "2S0bx+u1vyP41bo10XQ4Mw=="
    assert p.legacy_encrypt(V1_S, "secret\n") != "Y64XOtdnb0hgGLvbtpjoTQ=="  # SHA-256 pitfall


def test_v3_windows_spec_vector_decrypts_with_pkcs7():
    # The spec's passphrase is the word "secret", not a DH secret: the raw-passphrase helpers.
    assert p._decrypt_with_passphrase(b"secret", "OTfAog/nwyzIcYOhvCBL0w==") == "rackspace\n"
    assert p._encrypt_with_passphrase(b"secret", "rackspace\n") == "OTfAog/nwyzIcYOhvCBL0w=="


@pytest.mark.parametrize("secret", [b"secret", "42212498014643735436438456950707", True, 4.2, None])
def test_legacy_codec_takes_only_an_int_secret(secret):
    with pytest.raises(TypeError) as err:
        p.legacy_encrypt(secret, "hunter2\n")
    assert "4221249801" not in str(err.value)  # the error names the type, never the value
    with pytest.raises(TypeError):
        p.legacy_decrypt(secret, "4iipDhggLPZX/R9oHwfr3Q==")
    with pytest.raises(TypeError):
        p.legacy_encrypt_password(secret, "hunter2")


def test_legacy_codec_takes_only_str_text():
    with pytest.raises(TypeError):
        p.legacy_encrypt(V4_S, b"hunter2\n")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        p.legacy_decrypt(V4_S, b"4iipDhggLPZX/R9oHwfr3Q==")  # type: ignore[arg-type]


def test_v4_full_exchange():
    a_pub, b_pub = p.legacy_public(V4_A_PRIV), p.legacy_public(V4_B_PRIV)
    assert a_pub == 128492706489454800633959484585958
    assert b_pub == 10213771857304028832860390748511
    assert p.legacy_shared(V4_A_PRIV, b_pub) == p.legacy_shared(V4_B_PRIV, a_pub) == V4_S
    key, iv = p.evp_bytes_to_key_md5(str(V4_S).encode())
    assert (key.hex(), iv.hex()) == (
        "84d3a6e9e224da5710dab5b26a0f91e8",
        "d6085eacfae73900f1b100805e6eb9ac",
    )


@pytest.mark.parametrize(("password", "ciphertext"), V4_TABLE)
def test_v4_password_table(password, ciphertext):
    assert p.legacy_encrypt_password(V4_S, password) == ciphertext
    assert p.legacy_decrypt_password(V4_S, ciphertext) == password


def test_wrapped_base64_is_accepted():
    ct = p.legacy_encrypt(V4_S, "x" * 100)
    wrapped = "\n".join(ct[i : i + 64] for i in range(0, len(ct), 64)) + "\n"
    assert p.legacy_decrypt(V4_S, wrapped) == "x" * 100
    assert "\n" not in ct


@pytest.mark.parametrize("value", [0, 1, p.LEGACY_P - 1, p.LEGACY_P, -5])
def test_degenerate_public_values_rejected(value):
    with pytest.raises(p.ProtocolError) as err:
        p.legacy_check_public(value)
    assert err.value.kind is p.ErrorKind.BAD_REQUEST
    with pytest.raises(p.ProtocolError):
        p.legacy_parse_public(str(value))


@pytest.mark.parametrize("text", ["12a", " ", "", "1e5", "٣٣", None, True, 1.5])
def test_public_value_must_be_decimal(text):
    with pytest.raises(p.ProtocolError):
        p.legacy_parse_public(text)


def test_wrong_key_or_tamper_is_a_decryption_error():
    ct = p.legacy_encrypt_password(V4_S, "hunter2")
    with pytest.raises(p.DecryptionError):
        p.legacy_decrypt(V4_S + 1, ct)
    with pytest.raises(p.ProtocolError) as err:
        p.legacy_decrypt(V4_S, "not base64!!")
    assert err.value.kind is p.ErrorKind.BAD_REQUEST


# -- v2 --------------------------------------------------------------------------------------

RID = "6f1c1b1e-1c47-4e7b-9d8a-0d1f1b6f0a11"
SID = "0b8e6f1a-7d64-4a43-a7f5-5a2e5d0e8c22"


def _session():
    host, guest = p.V2KeyPair(), p.V2KeyPair()
    kh = host.session_key(
        guest.public_b64, session_id=SID, host_public=host.public, guest_public=guest.public
    )
    kg = guest.session_key(
        host.public_b64, session_id=SID, host_public=host.public, guest_public=guest.public
    )
    return kh, kg


def test_v2_round_trip_and_binding():
    kh, kg = _session()
    assert kh == kg and len(kh) == 32
    sealed = p.v2_seal(kh, request_id=RID, command="password", plaintext="pässwörd".encode())
    assert p.v2_open(kg, request_id=RID, command="password", sealed=sealed) == "pässwörd".encode()
    # Associated data: another request id or command does not open it.
    with pytest.raises(p.DecryptionError):
        p.v2_open(kg, request_id=SID, command="password", sealed=sealed)
    with pytest.raises(p.DecryptionError):
        p.v2_open(kg, request_id=RID, command="injectfile", sealed=sealed)


def test_v2_tampered_ciphertext_fails():
    kh, kg = _session()
    sealed = p.v2_seal(kh, request_id=RID, command="password", plaintext=b"hunter2")
    raw = bytearray(base64.b64decode(sealed["ct"]))
    raw[0] ^= 1
    with pytest.raises(p.DecryptionError):
        p.v2_open(
            kg,
            request_id=RID,
            command="password",
            sealed={**sealed, "ct": base64.b64encode(raw).decode()},
        )


def test_v2_low_order_point_rejected():
    guest = p.V2KeyPair()
    with pytest.raises(p.ProtocolError):
        guest.session_key(
            base64.b64encode(bytes(32)).decode(),
            session_id=SID,
            host_public=bytes(32),
            guest_public=guest.public,
        )


def test_v2_keyinit_value_checked():
    with pytest.raises(p.ProtocolError) as err:
        p.v2_parse_keyinit({"kex": "ffdhe1024", "pub": "AA=="})
    assert err.value.kind is p.ErrorKind.UNSUPPORTED
    with pytest.raises(p.ProtocolError):
        p.v2_parse_keyinit("123")


# -- messages --------------------------------------------------------------------------------


def test_request_parse_and_errors():
    req = p.Request.parse(RID, '{"value": "agent", "name": "version"}')
    assert (req.name, req.value, req.version) == ("version", "agent", 1)
    assert p.Request.parse(RID, p.Request(RID, "keyinit", {"a": 1}, 2).to_json()).version == 2
    cases = [
        ("not-a-uuid", "{}", p.ErrorKind.BAD_REQUEST),
        (RID, "{not json", p.ErrorKind.BAD_REQUEST),
        (RID, "[1,2]", p.ErrorKind.BAD_REQUEST),
        (RID, '{"name": "x", "v": 7}', p.ErrorKind.BAD_REQUEST),
        (RID, '{"name": "x", "value": "' + "a" * 3000 + '"}', p.ErrorKind.TOO_LARGE),
        (RID, b"\xff\xfe", p.ErrorKind.BAD_REQUEST),
    ]
    for rid, raw, kind in cases:
        with pytest.raises(p.ProtocolError) as err:
            p.Request.parse(rid, raw)
        assert err.value.kind is kind


def test_reply_parse_tolerates_old_agents():
    assert p.Reply.parse('{"returncode": 0, "message": "1.2\\\\r\\\\n"}').message == "1.2"
    assert p.Reply.parse('{"returncode": "D0", "message": " 123 "}').message == "123"
    failure = p.Reply.failure(p.ErrorKind.DECRYPT_FAILED, "nope", version=2)
    back = p.Reply.parse(failure.to_json())
    assert (back.returncode, back.error, back.version, back.ok) == (
        "422",
        p.ErrorKind.DECRYPT_FAILED,
        2,
        False,
    )
    assert p.Reply.parse('{"returncode": "0", "message": null}').ok


# -- interop with the real openssl CLI --------------------------------------------------------

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def _openssl(args: list[str], secret: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """Run openssl enc with the passphrase on a pipe (-pass fd:N), never on argv."""
    read_fd, write_fd = os.pipe()
    os.write(write_fd, secret.encode() + b"\n")
    os.close(write_fd)
    try:
        return subprocess.run(
            [
                OPENSSL,
                "enc",
                *args,
                "-aes-128-cbc",
                "-A",
                "-a",
                "-nosalt",
                "-md",
                "md5",
                "-pass",
                f"fd:{read_fd}",
            ],
            input=data,
            capture_output=True,
            pass_fds=(read_fd,),
            timeout=30,
            check=False,
        )
    finally:
        os.close(read_fd)


def _passwords(rng: random.Random) -> list[str]:
    fixed = ["", "0123456789abcdef", "0123456789abcde", "pässwörd€ ✓", 'a "quoted" $pw']
    alphabet = "abcXYZ019 !$%&'\"\\äé€漢"
    return fixed + [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 70))) for _ in range(6)
    ]


@needs_openssl
def test_legacy_encrypt_decrypts_with_openssl():
    rng = random.Random(os.urandom(8))
    for password in _passwords(rng):
        secret = rng.randrange(2, p.LEGACY_P - 1)
        result = _openssl(["-d"], str(secret), p.legacy_encrypt_password(secret, password).encode())
        assert result.returncode == 0, result.stderr
        assert result.stdout == (password + "\n").encode()


@needs_openssl
def test_openssl_output_decrypts_with_legacy_decrypt():
    rng = random.Random(os.urandom(8))
    for password in _passwords(rng):
        secret = rng.randrange(2, p.LEGACY_P - 1)
        result = _openssl([], str(secret), (password + "\n").encode())
        assert result.returncode == 0, result.stderr
        assert p.legacy_decrypt_password(secret, result.stdout.decode()) == password


@needs_openssl
def test_openssl_wrapped_output_accepted():
    secret = 98765432109876543210
    read_fd, write_fd = os.pipe()
    os.write(write_fd, f"{secret}\n".encode())
    os.close(write_fd)
    result = subprocess.run(  # no -A: base64 wrapped at 64 columns, as agent-client.py did
        [OPENSSL, "enc", "-aes-128-cbc", "-a", "-nosalt", "-md", "md5", "-pass", f"fd:{read_fd}"],
        input=b"y" * 120 + b"\n",
        capture_output=True,
        pass_fds=(read_fd,),
        timeout=30,
        check=False,
    )
    os.close(read_fd)
    assert result.stdout.count(b"\n") > 1
    assert p.legacy_decrypt_password(secret, result.stdout.decode()) == "y" * 120


@pytest.mark.parametrize(
    "text",
    [
        "12345678-1234-1234-1234-123456789abc\n",  # `$` matched before a trailing newline
        "12345678-1234-1234-1234-123456789abc ",
        " 12345678-1234-1234-1234-123456789abc",
        "12345678-1234-1234-1234-123456789abcd",
        "",
    ],
)
def test_request_id_must_be_exactly_a_uuid(text):
    assert not p.is_request_id(text)
    with pytest.raises(p.ProtocolError) as err:
        p.Request.parse(text, '{"name": "version", "value": ""}')
    assert err.value.kind is p.ErrorKind.BAD_REQUEST
    assert p.is_request_id("12345678-1234-1234-1234-123456789ABC")
