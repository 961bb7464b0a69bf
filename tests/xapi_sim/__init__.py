"""A XAPI (XCP-ng / XenServer) simulator for tests, never shipped as a backend.

It speaks XML-RPC over HTTP(S) so the real XenAPI SDK talks to it on the real wire, and holds
the datamodel of shared/research/xenapi.md §4 with its rules enforced. Entry point:
`XapiSimulator` (tests/xapi_sim/server.py); `python -m tests.xapi_sim` runs it as a service.
"""

from .errors import XapiError
from .server import XapiSimulator, make_cert

__all__ = ["XapiError", "XapiSimulator", "make_cert"]
