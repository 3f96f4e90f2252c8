"""The Clixon controller as a store: the NETCONF client (``netconf``), the write journal (``journal``), the store (``store``).

Only this package and the service module import clixon-pyapi, and only when a
session is opened.
"""

from .netconf import DEFAULT_SOCKET, ControllerUnavailable, RpcError, Session
from .store import ClixonStore, status_edit

__all__ = ["DEFAULT_SOCKET", "ClixonStore", "ControllerUnavailable", "RpcError", "Session", "status_edit"]
