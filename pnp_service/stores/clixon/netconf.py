"""A NETCONF client for the Clixon controller's UNIX socket, shared by the Clixon store and the service module.

Owns the conversation with the controller: framing (clixon-pyapi's, imported
lazily: this package is the only place besides the service module that imports
it), RPCs, replies parsed with the hardened lxml parser (pyapi's own parser
drops newlines inside text), and what a failure means: the controller is
unreachable or busy (retry later), or it refused the data (the edit is wrong).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from typing import Iterable, Iterator, Sequence

from lxml import etree

from ... import model
from ...model import CONTROLLER_NS, NETCONF_NS, PNP_NS
from ...xmlsafe import escape_attribute, escape_text, parser
from ..base import StoreError, StoreUnavailable

DEFAULT_SOCKET = "/usr/local/var/run/controller/controller.sock"
# Clixon's namespace for create-subscription (pyapi uses the same; the RFC 5277 one is refused).
NOTIFICATION_NS = "urn:ietf:params:xml:ns:netmod:notification"
NAMESPACES = {"ctrl": CONTROLLER_NS, "pnp": PNP_NS}

#: rpc-error tags that mean "not now": a lock held, a transaction under way.
BUSY_TAGS = frozenset({"lock-denied", "in-use", "resource-denied"})
#: What clixon-controller says, as an operation-failed, when a controller transaction (connection-change, a commit
#: that pushes to devices) cannot start because another session holds the candidate or a transaction runs
#: (controller_transaction.c, 1.8.0).
BUSY_MESSAGES = ("Candidate db is locked", "is ongoing")
#: How long a controller transaction (services run, then commit) may take: 7 s measured at 10,000 declarations.
TRANSACTION_SECONDS = 60.0
#: rpc-error tags that mean "not this data": the edit itself is wrong and will never be accepted.
DATA_TAGS = frozenset({
    "invalid-value", "bad-element", "unknown-element", "unknown-namespace", "bad-attribute", "unknown-attribute",
    "missing-attribute", "missing-element", "data-exists", "data-missing", "too-big",
})


class ControllerUnavailable(StoreUnavailable):
    """The controller cannot be reached, or the connection broke."""


class RpcError(StoreError):
    """The controller answered an RPC with an ``rpc-error``."""

    def __init__(self, message: str, tag: str = "", error_type: str = "", path: str = ""):
        super().__init__(message)
        self.tag, self.error_type, self.path = tag, error_type, path

    @property
    def busy(self) -> bool:
        """Another session holds what this needs (a lock, a controller transaction): the same request will do later."""
        return self.tag in BUSY_TAGS or any(words in str(self) for words in BUSY_MESSAGES)

    @property
    def rejects_data(self) -> bool:
        """The controller refuses the content of the edit (a pattern, an enumeration, an unknown node)."""
        if self.busy:
            return False
        return self.tag in DATA_TAGS or (self.tag == "operation-failed" and self.error_type == "application")


def _current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return "pnp-service"


def _pyapi_socket():
    """clixon-pyapi's ``create_socket`` (it knows the controller socket's handshake), imported without letting it parse our command line, and without leaving
    anything in our environment for the processes we start (a restarted controller would inherit it, and its
    clixon_server.py would then ignore its own arguments)."""
    added = "clixon.sock" not in sys.modules and "NO_CLIXON_ARGS" not in os.environ
    if added:
        os.environ["NO_CLIXON_ARGS"] = "1"
    try:
        from clixon.sock import create_socket
    except ImportError as exc:
        raise StoreError(
            "clixon-pyapi is not installed in this Python; install it (pip install <clixon-pyapi source dir>, "
            f"see docs/controller.md) or serve an embedded datastore with --datastore ({exc})"
        ) from None
    finally:
        if added:
            os.environ.pop("NO_CLIXON_ARGS", None)
    return create_socket


_CLOSING = b"</rpc>"
#: How much of a large RPC is written per send.
_SEND_BUFFER = 256 * 1024


class Session:
    """One NETCONF session on the controller socket."""

    def __init__(self, sockpath: str = DEFAULT_SOCKET, user: str | None = None):
        create_socket = _pyapi_socket()
        self.user = user or _current_user()
        try:
            self.sock = create_socket(sockpath)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControllerUnavailable(f"controller socket {sockpath}: {exc} (is clixon_backend running?)") from None
        except PermissionError:
            raise StoreError(f"no permission on controller socket {sockpath}: run as root or in group clicon") from None
        self.sock.setblocking(True)  # pyapi connects non-blocking; replies are read here (_read_message), blocking
        self._received = bytearray()  # bytes read past the last message
        self._message_id = 0
        self._patience: float | None = None

    @contextlib.contextmanager
    def answer_within(self, seconds: float) -> Iterator[Session]:
        """Round trips in the block wait at most ``seconds`` for each read: past it :class:`ControllerUnavailable`
        says the controller did not answer, and the session is out of step (close it).  A Clixon backend answers one
        request at a time: a commit of 10,000 declarations keeps every other session waiting for seconds."""
        self._patience = seconds
        self.sock.settimeout(seconds)
        try:
            yield self
        finally:
            self._patience = None
            with contextlib.suppress(OSError):
                self.sock.settimeout(None)

    def _lost(self, exc: OSError) -> ControllerUnavailable:
        if isinstance(exc, TimeoutError) and self._patience is not None:
            return ControllerUnavailable(f"the controller did not answer within {self._patience:g} s (busy with a "
                                         "commit, or another session's request)")
        return ControllerUnavailable(f"controller connection lost: {exc}")

    def rpc(self, body: str | Sequence[bytes]) -> etree._Element:
        """Send one RPC and return the parsed ``rpc-reply``; an ``rpc-error`` raises :class:`RpcError`."""
        return self._parse(self.rpc_raw(body))

    def rpc_raw(self, body: str | Sequence[bytes]) -> bytes | bytearray:
        """Send one RPC and return the reply's bytes unparsed (big replies are read incrementally)."""
        data = self._exchange(body)
        if b"rpc-error" in data[:512]:  # an error reply starts with it; parsing raises RpcError
            self._parse(data)
        return data

    def _exchange(self, body: str | Sequence[bytes]) -> bytes | bytearray:
        self._send_rpc(body)
        return self._read_message()

    def _send_rpc(self, body: str | Sequence[bytes]) -> None:
        """One RFC 6242 chunk; a body given in pieces (a status commit of thousands of devices is megabytes) is written
        as it is, a send buffer at a time, never joined: clixon-pyapi's send joined the frame, sliced it again at
        every partial send and formatted it for a debug line, which held it three times over."""
        self._message_id += 1
        opening = (f'<rpc xmlns="{NETCONF_NS}" xmlns:nc="{NETCONF_NS}" username="{escape_attribute(self.user)}" '
                   f'message-id="{self._message_id}">').encode()
        pieces = [body.encode()] if isinstance(body, str) else body
        length = len(opening) + sum(map(len, pieces)) + len(_CLOSING)
        buffer = bytearray(b"\n#%d\n%s" % (length, opening))
        try:
            for piece in pieces:
                if len(buffer) + len(piece) > _SEND_BUFFER:
                    self.sock.sendall(buffer)
                    buffer.clear()
                buffer += piece
            buffer += _CLOSING + b"\n##\n"
            self.sock.sendall(buffer)
        except OSError as exc:  # the controller went away
            raise ControllerUnavailable(f"controller connection lost: {exc}") from None

    def get_config_pieces(self, source: str, xpath: str, namespaces: dict[str, str] = NAMESPACES) -> Iterator[bytes]:
        """The reply in pieces as they arrive, for a reply too large to hold whole (a full refresh at 10,000 devices
        is 10 MB).  Read it to its end before this session's next RPC; an ``rpc-error`` raises before any piece."""
        self._send_rpc(self._get_config_body(source, xpath, namespaces))
        pieces = self._message_pieces()
        head = b""
        for piece in pieces:
            head += piece
            if len(head) >= 512:
                break
        if b"rpc-error" in head[:512]:
            self._parse(head + b"".join(pieces))
        yield head
        yield from pieces

    def _message_pieces(self) -> Iterator[bytes]:
        while True:
            left = self._chunk_size()
            if not left:
                return
            if self._received:
                piece = bytes(self._received[:left])
                del self._received[:len(piece)]
                left -= len(piece)
                yield piece
            while left:
                try:
                    piece = self.sock.recv(min(left, 1 << 20))
                except OSError as exc:
                    raise ControllerUnavailable(f"controller connection lost: {exc}") from None
                if not piece:
                    raise ControllerUnavailable("controller connection lost: the controller closed it mid-reply")
                left -= len(piece)
                yield piece

    def _read_message(self) -> bytes | bytearray:
        """One message in RFC 6242 chunked framing (how Clixon frames its socket), each chunk read straight into a
        buffer of its size.  clixon-pyapi's reader copies the growing reply at every receive and then decodes and
        re-encodes it: at 10,000 devices that was half a second and four copies of a 10 MB reply at once."""
        chunks: list[bytearray] = []
        while True:
            size = self._chunk_size()
            if not size:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.append(self._chunk(size))

    def _receive(self) -> None:
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise self._lost(exc) from None
        if not data:
            raise ControllerUnavailable("controller connection lost: the controller closed it")
        self._received += data

    def _chunk_size(self) -> int:
        """The next chunk's size (LF # SIZE LF), or 0 at the end of the message (LF ## LF)."""
        while True:
            start = self._received.find(b"\n#")
            end = self._received.find(b"\n", start + 2) if start >= 0 else -1
            if end >= 0:
                token = bytes(self._received[start + 2:end])
                del self._received[:end + 1]
                if token == b"#":
                    return 0
                if token.isdigit() and not token.startswith(b"0") and len(token) <= 12:
                    return int(token)
                raise ControllerUnavailable(f"unreadable framing from the controller: {token[:16]!r}")
            if start >= 0 and len(self._received) - start > 16:
                raise ControllerUnavailable("unreadable framing from the controller: a chunk header without its end")
            self._receive()

    def _chunk(self, size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        have = min(size, len(self._received))
        view[:have] = self._received[:have]
        del self._received[:have]
        try:
            while have < size:
                got = self.sock.recv_into(view[have:], min(size - have, 1 << 20))
                if not got:
                    raise ControllerUnavailable("controller connection lost: the controller closed it mid-reply")
                have += got
        except OSError as exc:
            raise self._lost(exc) from None
        finally:
            view.release()
        return data  # a bytearray: bytes-like for every reader here, and never copied again

    @staticmethod
    def _parse(data: bytes | bytearray) -> etree._Element:
        try:
            reply = etree.fromstring(data, parser(large=True))
        except etree.XMLSyntaxError as exc:
            raise ControllerUnavailable(f"unreadable controller reply: {exc}") from None
        error = reply.find(f"{{{NETCONF_NS}}}rpc-error")
        if error is not None:
            def field(name: str) -> str:
                return (error.findtext(f"{{{NETCONF_NS}}}{name}") or "").strip()

            message = field("error-message") or field("error-tag") or "rpc-error"
            raise RpcError(message, field("error-tag"), field("error-type"), field("error-path"))
        return reply

    @staticmethod
    def _get_config_body(source: str, xpath: str, namespaces: dict[str, str]) -> str:
        declarations = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items())
        source_attr = f' xmlns="{CONTROLLER_NS}"' if source == "actions" else ""
        return (
            f"<get-config><source><{source}{source_attr}/></source>"
            f'<nc:filter nc:type="xpath" nc:select="{escape_attribute(xpath)}" {declarations}/></get-config>'
        )

    def get_config(self, source: str, xpath: str, namespaces: dict[str, str] = NAMESPACES) -> etree._Element:
        reply = self.rpc(self._get_config_body(source, xpath, namespaces))
        data = reply.find(f"{{{NETCONF_NS}}}data")
        return data if data is not None else etree.Element(f"{{{NETCONF_NS}}}data")

    def get_config_raw(self, source: str, xpath: str, namespaces: dict[str, str] = NAMESPACES) -> bytes | bytearray:
        """The same reply, as bytes: for large reads, parsed element by element by the caller."""
        return self.rpc_raw(self._get_config_body(source, xpath, namespaces))

    def get(self, xpath: str, namespaces: dict[str, str] = NAMESPACES) -> etree._Element:
        """``<get>``: configuration and state data (for example a device's ``conn-state``)."""
        declarations = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items())
        reply = self.rpc(f'<get><nc:filter nc:type="xpath" nc:select="{escape_attribute(xpath)}" {declarations}/></get>')
        data = reply.find(f"{{{NETCONF_NS}}}data")
        return data if data is not None else etree.Element(f"{{{NETCONF_NS}}}data")

    def lock(self) -> None:
        self.rpc("<lock><target><candidate/></target></lock>")

    def unlock(self) -> None:
        self.rpc("<unlock><target><candidate/></target></unlock>")

    def edit_config(self, config: str | Sequence[bytes], default_operation: str = "merge") -> None:
        """Edit the candidate with ``config``: text, or pieces written one after the other (see :meth:`_send_rpc`)."""
        opening = (f"<edit-config><target><candidate/></target><default-operation>{default_operation}"
                   "</default-operation><config>").encode()
        pieces = [config.encode()] if isinstance(config, str) else config
        self.rpc([opening, *pieces, b"</config></edit-config>"])

    def commit(self) -> None:
        self.rpc("<commit/>")

    def discard_changes(self) -> None:
        self.rpc("<discard-changes/>")

    def controller_commit(self, timeout: float = TRANSACTION_SECONDS) -> None:
        """Commit the candidate the way the controller CLI's ``commit`` does: the controller runs the services whose
        declarations changed (so they are planned) and commits the result.  A plain ``<commit>`` stores declarations
        unplanned.  Waits for the controller's transaction; its failure raises :class:`RpcError` with the reason."""
        reply = self.rpc(f'<controller-commit xmlns="{CONTROLLER_NS}"><source>ds:candidate</source>'
                         "<actions>CHANGE</actions><push>COMMIT</push></controller-commit>")
        tid = (reply.findtext(f"{{{CONTROLLER_NS}}}tid") or "").strip()
        if not tid.isdigit():
            raise ControllerUnavailable("the controller answered controller-commit without a transaction id")
        deadline = time.monotonic() + timeout
        while True:
            data = self.get(f"/ctrl:transactions/ctrl:transaction[ctrl:tid='{tid}']")
            result = (data.findtext(f".//{{{CONTROLLER_NS}}}result") or "").strip()
            if result == "SUCCESS":
                return
            if result in ("FAILED", "ERROR"):
                reason = " ".join((data.findtext(f".//{{{CONTROLLER_NS}}}reason") or result).split())
                raise RpcError(f"transaction {tid}: {reason}", "operation-failed", "application")
            if time.monotonic() > deadline:
                raise ControllerUnavailable(f"the controller's transaction {tid} did not end within {timeout:g} s")
            time.sleep(0.05)

    def subscribe(self, stream: str) -> None:
        self.rpc(f'<create-subscription xmlns="{NOTIFICATION_NS}"><stream>{escape_text(stream)}</stream></create-subscription>')

    def next_notification(self) -> str:
        """Block until the controller sends something on this session; its raw text."""
        return bytes(self._read_message()).decode("utf-8", "replace")

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked reading this socket.
        with contextlib.suppress(Exception):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.sock.close()


@contextlib.contextmanager
def session(sockpath: str = DEFAULT_SOCKET) -> Iterator[Session]:
    opened = Session(sockpath)
    try:
        yield opened
    finally:
        opened.close()


@contextlib.contextmanager
def candidate_locked(session: Session) -> Iterator[Session]:
    """lock(candidate) ... unlock, leaving nothing of ours in the candidate when the block fails."""
    session.lock()
    try:
        yield session
    except (RpcError, StoreUnavailable):
        with contextlib.suppress(RpcError, StoreUnavailable):
            session.discard_changes()  # never leave our half edit in the shared candidate
        raise
    finally:
        with contextlib.suppress(RpcError, StoreUnavailable):
            session.unlock()


def commit_edit(session: Session, config: str | Sequence[bytes], default_operation: str = "merge") -> None:
    """lock(candidate) -> edit-config -> commit -> unlock, leaving nothing of ours in the candidate on failure."""
    with candidate_locked(session):
        session.edit_config(config, default_operation)
        session.commit()


def controller_commit_edit(session: Session, config: str) -> RpcError | None:
    """Edit the candidate (already locked by the caller) and commit it as the controller does, running the services;
    the controller's refusal is returned, its edit discarded.  A busy controller raises (the caller tries later)."""
    try:
        session.edit_config(config)
        session.controller_commit()
    except RpcError as exc:
        if exc.busy:
            raise
        session.discard_changes()
        return exc
    return None


#: The paths of a serial's entries: its status and work, and its declaration.
DEVICE_PATH = "/pnp:pnp/pnp:device"
DECLARATION_PATH = "/ctrl:services/pnp:pnp-device"


def by_serials(paths: Sequence[str], serials: Iterable[str]) -> str:
    """One XPath selecting each serial's entry under each of ``paths`` (lists keyed by serial).

    The terms go in the controller's key order: Clixon's union of key lookups drops entries when a term's key sorts
    before an earlier term's (seen on the lab's controller: serials B, A, C selected A and C only)."""
    return " | ".join(f"{path}[pnp:serial='{serial}']" for serial in sorted(set(serials)) for path in paths)


def fetch_declarations(session: Session, source: str, serials: list[str] | None = None) -> dict[str, model.Declaration]:
    """Declarations from a datastore: all of them, or those of ``serials`` (one round trip either way)."""
    xpath = DECLARATION_PATH
    if serials is not None:
        bad = [s for s in serials if not model.is_serial(s)]
        if bad:
            raise StoreError(f"not valid serial numbers: {', '.join(map(repr, bad))}")
        if not serials:
            return {}
        xpath = by_serials([DECLARATION_PATH], serials)
    data = session.get_config(source, xpath)
    return model.declarations_from_services(data.find(f"{{{CONTROLLER_NS}}}services"))

