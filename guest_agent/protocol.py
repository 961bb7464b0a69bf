"""The guest-agent protocol: messages, return codes, commands and the two codecs.

Wire shape (both versions): a request `{"name": <command>, "value": <arg>}` is written at
`data/host/<request-id>`, the reply `{"returncode": "<code>", "message": "<text>"}` at
`data/guest/<request-id>`. Codes are strings. On a virtio-serial port the same objects
travel as JSON lines carrying their `"id"`, and the agent announces each boot with a
`{"event": "hello", "boot_id": ...}` line.

Legacy codec (Nova XenAPI agent, Rackspace/Mirantis guests), bit-exact: Diffie-Hellman over
p = 2^107 - 1, g = 5, public values as decimal strings; key and IV by OpenSSL's
EVP_BytesToKey with MD5 over the shared secret's decimal string; AES-128-CBC with PKCS#7;
single-line base64. The group is broken (p - 1 is smooth): legacy is for old guests only.

v2 codec (negotiated through the `v2` token of `features`): requests and replies carry
`"v": 2`; X25519 key exchange; HKDF-SHA256 bound to both public values and the keyinit
request id (the session); AES-256-GCM with the request id and the command as associated data.
Replies to failures are typed (`"error": <kind>`).

Pure functions and data only: no I/O, no logging. Depends on `cryptography` and the stdlib.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

# -- commands and codes ----------------------------------------------------------------------

VERSION = "version"
FEATURES = "features"
KEYINIT = "keyinit"
PASSWORD = "password"
INJECTFILE = "injectfile"
RESETNETWORK = "resetnetwork"
AGENTUPDATE = "agentupdate"

COMMANDS = (VERSION, FEATURES, KEYINIT, PASSWORD, INJECTFILE, RESETNETWORK, AGENTUPDATE)

#: Token in the `features` reply announcing the v2 codec.
FEATURE_V2 = "v2"

RC_OK = "0"
RC_KEYINIT_OK = "D0"

#: xenstore per-value quota for guests (oxenstored quota-maxsize / C xenstored default).
MAX_VALUE_BYTES = 2048

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class ErrorKind(enum.StrEnum):
    """Typed failure classes of a reply, each with its string return code."""

    BAD_REQUEST = "bad-request"
    FORBIDDEN = "forbidden"
    UNSUPPORTED = "unsupported"
    CONFLICT = "conflict"
    TOO_LARGE = "too-large"
    DECRYPT_FAILED = "decrypt-failed"
    OS_ERROR = "os-error"

    @property
    def returncode(self) -> str:
        return _ERROR_CODES[self]


_ERROR_CODES = {
    ErrorKind.BAD_REQUEST: "400",
    ErrorKind.FORBIDDEN: "403",
    ErrorKind.UNSUPPORTED: "404",  # what the unix agent answers to an unknown command
    ErrorKind.CONFLICT: "409",
    ErrorKind.TOO_LARGE: "413",
    ErrorKind.DECRYPT_FAILED: "422",
    ErrorKind.OS_ERROR: "500",
}


class ProtocolError(Exception):
    """A message or a ciphertext is not acceptable; carries the typed error kind."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class DecryptionError(ProtocolError):
    def __init__(
        self, message: str = "the ciphertext does not decrypt under the session key"
    ) -> None:
        super().__init__(ErrorKind.DECRYPT_FAILED, message)


def is_request_id(text: str) -> bool:
    """True for a canonical 8-4-4-4-12 hex UUID (old Windows agents drop anything else)."""
    return _UUID_RE.fullmatch(text) is not None


def format_features(names: Iterable[str]) -> str:
    """The `features` reply message: the command names (and `v2`), comma-separated."""
    return ",".join(names)


def parse_features(message: str) -> frozenset[str]:
    """The names of a `features` reply message (blanks and spaces ignored)."""
    return frozenset(name.strip() for name in message.split(",") if name.strip())


#: Characters no password setter can take safely.
PASSWORD_FORBIDDEN = "\r\n\0"


def password_acceptable(password: str) -> bool:
    """False when the password holds a line break or a NUL (see `check_password`)."""
    return not any(ch in password for ch in PASSWORD_FORBIDDEN)


# -- layout on each transport ----------------------------------------------------------------

#: Xen store: requests and replies, relative to the guest's `/local/domain/<domid>`.
XS_REQUESTS = "data/host"
XS_REPLIES = "data/guest"

#: virtio-serial: the longest line either end accepts, and the agent's boot announcement.
MAX_LINE = 64 * 1024
EVENT_HELLO = "hello"


def encode_line(body: Mapping[str, Any]) -> bytes:
    """One compact JSON line of the virtio-serial port."""
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


def hello_line(boot_id: str, version: str) -> bytes:
    """The line the agent sends when it (re)opens its port."""
    return encode_line({"event": EVENT_HELLO, "boot_id": boot_id, "version": version})


def request_line(request_id: str, request: str) -> bytes:
    """A request (the JSON of `Request.to_json`) as a virtio-serial line with its id."""
    return encode_line({"id": request_id, **json.loads(request)})


# -- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One command from the host. `version` is 1 (legacy, no "v" on the wire) or 2."""

    request_id: str
    name: str
    value: Any = ""
    version: int = 1

    def to_json(self) -> str:
        body: dict[str, Any] = {"name": self.name, "value": self.value}
        if self.version >= 2:
            body["v"] = self.version
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def parse(
        cls, request_id: str, raw: str | bytes, *, max_bytes: int = MAX_VALUE_BYTES
    ) -> Request:
        """Decode and validate a request; raises ProtocolError with the kind to reply with."""
        if not is_request_id(request_id):
            raise ProtocolError(ErrorKind.BAD_REQUEST, "the request id must be a UUID")
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
        if len(data) > max_bytes:
            raise ProtocolError(
                ErrorKind.TOO_LARGE, f"the request is {len(data)} bytes; the limit is {max_bytes}"
            )
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(ErrorKind.BAD_REQUEST, "the request is not JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise ProtocolError(
                ErrorKind.BAD_REQUEST, 'the request must be an object {"name": ..., "value": ...}'
            )
        version = body.get("v", 1)
        if version not in (1, 2) or isinstance(version, bool):
            raise ProtocolError(ErrorKind.BAD_REQUEST, "unsupported protocol version")
        return cls(
            request_id=request_id, name=body["name"], value=body.get("value", ""), version=version
        )


@dataclass(frozen=True)
class Reply:
    """A guest's answer. `error` is set on failures of our agent (v2 and legacy alike)."""

    returncode: str
    message: str = ""
    version: int = 1
    error: ErrorKind | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and self.returncode in (RC_OK, RC_KEYINIT_OK)

    @classmethod
    def failure(cls, kind: ErrorKind, message: str, *, version: int = 1) -> Reply:
        return cls(returncode=kind.returncode, message=message, version=version, error=kind)

    def to_json(self) -> str:
        body: dict[str, Any] = {"returncode": self.returncode, "message": self.message}
        if self.version >= 2:
            body["v"] = self.version
        if self.error is not None:
            body["error"] = self.error.value
        body.update(self.data)
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | bytes) -> Reply:
        """Decode a reply from any agent: codes as strings, message stripped of escaped CRLF."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # nesting too deep is no ValueError
            raise ProtocolError(ErrorKind.BAD_REQUEST, "the agent's reply is not JSON") from None
        if not isinstance(body, dict) or "returncode" not in body:
            raise ProtocolError(ErrorKind.BAD_REQUEST, "the agent's reply has no returncode")
        message = body.get("message")
        # Old Windows agents leave a literal backslash-r backslash-n in messages (Nova strips it).
        message = "" if message is None else str(message).replace("\\r\\n", "").strip()
        error = body.get("error")
        try:
            kind = ErrorKind(error) if error is not None else None
        except ValueError:
            kind = ErrorKind.OS_ERROR
        extra = {k: v for k, v in body.items() if k not in ("returncode", "message", "v", "error")}
        version = body.get("v", 1)
        return cls(
            returncode=str(body["returncode"]).strip(),
            message=message,
            version=version if isinstance(version, int) else 1,
            error=kind,
            data=extra,
        )


# -- legacy codec ----------------------------------------------------------------------------

LEGACY_P = 2**107 - 1
LEGACY_G = 5


def legacy_private_key() -> int:
    """A fresh private exponent in [2, p-2]."""
    return secrets.randbelow(LEGACY_P - 3) + 2


def legacy_public(private: int) -> int:
    return pow(LEGACY_G, private, LEGACY_P)


def legacy_check_public(value: int) -> int:
    """Reject a peer public value outside [2, p-2] (0, 1 and p-1 force a known secret)."""
    if not 2 <= value <= LEGACY_P - 2:
        raise ProtocolError(ErrorKind.BAD_REQUEST, "the public value is outside [2, p-2]")
    return value


def legacy_parse_public(text: Any) -> int:
    """A peer public value from its decimal string (or int), range-checked."""
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ProtocolError(ErrorKind.BAD_REQUEST, "the public value must be a decimal string")
    digits = str(text).strip()
    if not digits.isdigit() or not digits.isascii() or len(digits) > 40:
        raise ProtocolError(ErrorKind.BAD_REQUEST, "the public value must be a decimal string")
    return legacy_check_public(int(digits))


def legacy_shared(private: int, peer_public: int) -> int:
    return pow(legacy_check_public(peer_public), private, LEGACY_P)


def evp_bytes_to_key_md5(passphrase: bytes) -> tuple[bytes, bytes]:
    """OpenSSL EVP_BytesToKey(aes-128-cbc, md5, no salt, 1 round): (key, iv)."""
    key = hashlib.md5(passphrase, usedforsecurity=False).digest()
    iv = hashlib.md5(key + passphrase, usedforsecurity=False).digest()
    return key, iv


def _legacy_cipher(passphrase: bytes) -> Cipher[modes.CBC]:
    key, iv = evp_bytes_to_key_md5(passphrase)
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def _secret_passphrase(shared_secret: int) -> bytes:
    """The OpenSSL passphrase of a shared secret: its decimal string."""
    if isinstance(shared_secret, bool) or not isinstance(shared_secret, int):
        raise TypeError(f"shared_secret must be an int, not {type(shared_secret).__name__}")
    return str(shared_secret).encode("ascii")


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def _encrypt_with_passphrase(passphrase: bytes, plaintext: str) -> str:
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = _legacy_cipher(passphrase).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode("ascii")


def _decrypt_with_passphrase(passphrase: bytes, ciphertext_b64: str) -> str:
    compact = "".join(ciphertext_b64.split())
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorKind.BAD_REQUEST, "the ciphertext is not base64") from None
    if not data or len(data) % 16:
        raise DecryptionError("the ciphertext is not a whole number of AES blocks")
    decryptor = _legacy_cipher(passphrase).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise DecryptionError() from None


def legacy_encrypt(shared_secret: int, plaintext: str) -> str:
    """AES-128-CBC/PKCS#7 under the MD5-derived key; single-line base64.

    The plaintext is encrypted as given: the password exchange sends `password + "\\n"`
    (see `legacy_encrypt_password`). TypeError unless the secret is an int (not a bool).
    """
    passphrase = _secret_passphrase(shared_secret)
    return _encrypt_with_passphrase(passphrase, _require_str(plaintext, "plaintext"))


def legacy_decrypt(shared_secret: int, ciphertext_b64: str) -> str:
    """Inverse of legacy_encrypt; accepts wrapped base64; strict padding and UTF-8."""
    passphrase = _secret_passphrase(shared_secret)
    return _decrypt_with_passphrase(passphrase, _require_str(ciphertext_b64, "ciphertext_b64"))


def legacy_encrypt_password(shared_secret: int, password: str) -> str:
    """The legacy `password` command's value: `password + "\\n"`, as every old guest expects."""
    return legacy_encrypt(shared_secret, password + "\n")


def legacy_decrypt_password(shared_secret: int, ciphertext_b64: str) -> str:
    plain = legacy_decrypt(shared_secret, ciphertext_b64)
    return plain[:-1] if plain.endswith("\n") else plain


# -- v2 codec --------------------------------------------------------------------------------

V2_KEX = "x25519"
V2_AEAD = "aes-256-gcm"
_V2_LABEL = b"virtkit-agent/2"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str, *, size: int | None = None) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(ErrorKind.BAD_REQUEST, f"{what} must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(ErrorKind.BAD_REQUEST, f"{what} is not base64") from None
    if size is not None and len(data) != size:
        raise ProtocolError(ErrorKind.BAD_REQUEST, f"{what} must be {size} bytes")
    return data


class V2KeyPair:
    """An ephemeral X25519 key pair for one exchange."""

    def __init__(self) -> None:
        self._private = X25519PrivateKey.generate()
        # public_bytes(Raw, Raw), not public_bytes_raw(): that one needs cryptography >= 40,
        # and guests run their distribution's (Debian 12 ships 38).
        self.public = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return _b64(self.public)

    def session_key(
        self, peer_public_b64: Any, *, session_id: str, host_public: bytes, guest_public: bytes
    ) -> bytes:
        """HKDF-SHA256 over the X25519 secret, salted with both publics, bound to the session."""
        peer = _unb64(peer_public_b64, "the public value", size=32)
        try:
            secret = self._private.exchange(X25519PublicKey.from_public_bytes(peer))
        except ValueError:  # low-order point: the shared secret would be all zeros
            raise ProtocolError(
                ErrorKind.BAD_REQUEST, "the public value is a low-order point"
            ) from None
        hkdf = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=host_public + guest_public,
            info=_V2_LABEL + b" session " + session_id.encode("ascii"),
        )
        return hkdf.derive(secret)


def v2_keyinit_value(host: V2KeyPair) -> dict[str, str]:
    return {"kex": V2_KEX, "aead": V2_AEAD, "pub": host.public_b64}


def v2_parse_keyinit(value: Any) -> bytes:
    """The host's public value from a v2 keyinit request value."""
    if not isinstance(value, Mapping):
        raise ProtocolError(ErrorKind.BAD_REQUEST, "a v2 keyinit value must be an object")
    if value.get("kex") != V2_KEX or value.get("aead", V2_AEAD) != V2_AEAD:
        raise ProtocolError(ErrorKind.UNSUPPORTED, f"only {V2_KEX} with {V2_AEAD} is supported")
    return _unb64(value.get("pub"), "the public value", size=32)


def v2_host_session_key(host: V2KeyPair, guest_public_b64: Any, *, session_id: str) -> bytes:
    """The host's session key from the guest's keyinit reply (its base64 public value)."""
    guest_public = _unb64(guest_public_b64, "the public value", size=32)
    return host.session_key(
        guest_public_b64, session_id=session_id, host_public=host.public, guest_public=guest_public
    )


def v2_guest_session_key(guest: V2KeyPair, host_public: bytes, *, session_id: str) -> bytes:
    """The guest's session key from the host's public value (see `v2_parse_keyinit`)."""
    return guest.session_key(
        _b64(host_public), session_id=session_id, host_public=host_public, guest_public=guest.public
    )


def v2_password_value(
    key: bytes, *, session: str, request_id: str, password: str
) -> dict[str, str]:
    """The v2 `password` request value: the session id and the password sealed for this request."""
    sealed = v2_seal(
        key, request_id=request_id, command=PASSWORD, plaintext=password.encode("utf-8")
    )
    return {"session": session, **sealed}


def injectfile_value(path: str, contents: bytes, *, version: int) -> Any:
    """The `injectfile` request value: v2 `{"path", "b64"}`, legacy base64 of `<path>,<contents>`."""
    if version >= 2:
        return {"path": path, "b64": _b64(contents)}
    return _b64(path.encode() + b"," + contents)


def v2_aad(request_id: str, command: str) -> bytes:
    """Associated data: a ciphertext is valid only for this request id and command."""
    return b"\0".join((_V2_LABEL, request_id.encode("ascii"), command.encode("ascii")))


def v2_seal(key: bytes, *, request_id: str, command: str, plaintext: bytes) -> dict[str, str]:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext, v2_aad(request_id, command))
    return {"nonce": _b64(nonce), "ct": _b64(sealed)}


def v2_open(key: bytes, *, request_id: str, command: str, sealed: Mapping[str, Any]) -> bytes:
    nonce = _unb64(sealed.get("nonce"), "the nonce", size=12)
    data = _unb64(sealed.get("ct"), "the ciphertext")
    try:
        return AESGCM(key).decrypt(nonce, data, v2_aad(request_id, command))
    except InvalidTag:
        raise DecryptionError() from None


def check_password(password: str) -> str:
    """Refuse what no password setter can take safely (line breaks, NUL)."""
    if not password_acceptable(password):
        raise ProtocolError(ErrorKind.BAD_REQUEST, "the password must not contain CR, LF or NUL")
    return password
