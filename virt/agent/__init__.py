"""Host side of the guest-agent protocol: `AgentClient` over a `Channel`.

The client negotiates the v2 codec through `features` and falls back to the legacy
(Nova/Rackspace) exchange only when `[agent] allow_legacy` says so. Every request has a
fresh UUID, a bounded wait, and both its request and reply removed when done. Nothing secret
(password, ciphertext, public values) is logged or put in an error message.

Channels: `XenstoreChannel` (Xen: data/host/<id> → data/guest/<id> of a domain) and
`VirtioSerialChannel` (libvirt/KVM: JSON lines on the host end of a virtio-serial port). A
driver can plug its own by subclassing `Channel`. The messages and codecs themselves are the
guest agent's (`guest_agent.protocol`, `guest_agent.wire`): both ends import one copy.
"""

from __future__ import annotations

from virt.agent.channel import Channel
from virt.agent.client import AgentClient
from virt.agent.options import AGENT_OPTS, GROUP, register_opts
from virt.agent.virtio_serial import VirtioSerialChannel
from virt.agent.xenstore import ABANDONED_MAX, ABANDONED_TTL, XenstoreChannel

__all__ = [
    "ABANDONED_MAX",
    "ABANDONED_TTL",
    "AGENT_OPTS",
    "GROUP",
    "AgentClient",
    "Channel",
    "VirtioSerialChannel",
    "XenstoreChannel",
    "register_opts",
]
