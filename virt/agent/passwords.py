"""The two password exchanges: v2 (X25519, HKDF, AES-GCM) and legacy (weak, opt-in)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from guest_agent import protocol as p
from virt.errors import AgentError

if TYPE_CHECKING:
    from virt.agent.client import AgentClient

_BAD_PUBLIC = "the guest agent answered keyinit with an invalid public value"


def set_password_v2(client: AgentClient, password: str) -> None:
    """keyinit in a fresh session, then the password sealed for its own request id."""
    pair = p.V2KeyPair()
    session = str(uuid.uuid4())
    reply = client.call(
        p.KEYINIT,
        p.v2_keyinit_value(pair),
        version=2,
        request_id=session,
        success=(p.RC_KEYINIT_OK,),
    )
    try:
        key = p.v2_host_session_key(pair, reply.message, session_id=session)
    except (ValueError, p.ProtocolError):
        raise AgentError(_BAD_PUBLIC) from None
    request_id = str(uuid.uuid4())
    value = p.v2_password_value(key, session=session, request_id=request_id, password=password)
    client.call(p.PASSWORD, value, version=2, request_id=request_id)


def set_password_legacy(client: AgentClient, password: str) -> None:
    """Nova's exchange: 2^107-1 Diffie-Hellman, then `password + "\\n"` under AES-128-CBC."""
    private = p.legacy_private_key()
    reply = client.call(p.KEYINIT, str(p.legacy_public(private)), success=(p.RC_KEYINIT_OK,))
    try:
        shared = p.legacy_shared(private, p.legacy_parse_public(reply.message))
    except p.ProtocolError:
        raise AgentError(_BAD_PUBLIC) from None
    client.call(p.PASSWORD, p.legacy_encrypt_password(shared, password))
