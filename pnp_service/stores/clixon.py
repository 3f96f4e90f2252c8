"""The Clixon store: declarations, work and status in a Clixon controller, over its UNIX socket.

Owns the NETCONF conversation with the controller (transport from clixon-pyapi,
imported lazily: this module and the service module are the only ones that
touch it) and the write path: lock(candidate) -> edit-config -> commit -> unlock.

Reads come from an in-memory copy of ``running`` (``/pnp`` and the
``pnp-device`` declarations): an agent poll never waits for a NETCONF round
trip.  The copy is refreshed in the background when the controller announces a
transaction (a subscription to its ``controller-transaction`` stream: an
operator's commit), every ``refresh_seconds`` as a safety net (other
listeners' plain commits announce nothing), and for one serial on demand
(:meth:`ClixonStore.reload`) when a device answers a request this listener
does not know about, as happens with several listeners behind a balancer.

Writes (status, unclaimed devices) are appended to a local journal and fsynced
before the agent gets its answer, then applied to the in-memory copy and
committed by a background flusher.  A denied lock (a controller transaction in
progress, or another session's uncommitted edits, which our commit would
otherwise publish) or a controller that is down leaves them in the journal to be
retried with a growing delay; a listener restart replays the journal.  So
nothing acknowledged to a device is lost.

Replies are parsed with lxml, not pyapi's parser: the latter drops the newlines
of multi-line text such as rendered configurations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
import socket
import sys
import threading
from typing import Callable, Iterator
from xml.sax.saxutils import escape as xml_escape

from lxml import etree

from .. import model
from ..model import DeviceRecord, Status, Unclaimed, q
from .base import D, Snapshot, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

NETCONF_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
DEFAULT_SOCKET = "/usr/local/var/run/controller/controller.sock"
# Clixon's namespace for create-subscription (pyapi uses the same).
NOTIFICATION_NS = "urn:ietf:params:xml:ns:netmod:notification"
_SAFE_SERIAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_REPLY_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)


class ClixonRpcError(StoreUnavailable):
    """The controller answered an RPC with an error."""


def _escape(text: str) -> str:
    return xml_escape(text, {'"': "&quot;"})


class ClixonSession:
    """One NETCONF session on the controller socket (framing by clixon-pyapi)."""

    def __init__(self, sockpath: str, user: str | None = None):
        if "clixon" not in sys.modules:
            # Importing pyapi in our own process must not parse our argv.  Inside
            # clixon_server.py it is already imported, and this would hide its arguments.
            os.environ.setdefault("NO_CLIXON_ARGS", "1")
        try:
            from clixon.sock import create_socket, read, send
        except ImportError as exc:
            raise StoreError(
                "clixon-pyapi is not installed in this Python; install it (pip install <clixon-pyapi source dir>) "
                f"or serve an embedded datastore with --datastore ({exc})"
            ) from None
        self._send, self._read = send, read
        self.user = user or _current_user()
        try:
            self.sock = create_socket(sockpath)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise StoreUnavailable(f"controller socket {sockpath}: {exc} (is clixon_backend running?)") from None
        except PermissionError:
            raise StoreError(f"no permission on controller socket {sockpath}: run as root or in group clicon") from None
        self._message_id = 0

    def rpc(self, body: str) -> etree._Element:
        """Send one RPC and return the parsed ``rpc-reply``; an ``rpc-error`` raises ClixonRpcError."""
        self._message_id += 1
        message = (
            f'<rpc xmlns="{NETCONF_NS}" xmlns:nc="{NETCONF_NS}" username="{_escape(self.user)}" '
            f'message-id="{self._message_id}">{body}</rpc>'
        )
        try:
            self._send(self.sock, message)
            data = self._read(self.sock)
        except Exception as exc:  # SocketClosedError, OSError: the controller went away
            raise StoreUnavailable(f"controller connection lost: {exc}") from None
        try:
            reply = etree.fromstring(data.encode() if isinstance(data, str) else data, _REPLY_PARSER)
        except etree.XMLSyntaxError as exc:
            raise StoreUnavailable(f"unreadable controller reply: {exc}") from None
        error = reply.find(f"{{{NETCONF_NS}}}rpc-error")
        if error is not None:
            message = error.findtext(f"{{{NETCONF_NS}}}error-message") or error.findtext(f"{{{NETCONF_NS}}}error-tag")
            raise ClixonRpcError((message or "rpc-error").strip())
        return reply

    def get_config(self, source: str, xpath: str, namespaces: dict[str, str]) -> etree._Element:
        declarations = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items())
        source_attr = f' xmlns="{model.CONTROLLER_NS}"' if source == "actions" else ""
        reply = self.rpc(
            f"<get-config><source><{source}{source_attr}/></source>"
            f'<nc:filter nc:type="xpath" nc:select="{_escape(xpath)}" {declarations}/></get-config>'
        )
        data = reply.find(f"{{{NETCONF_NS}}}data")
        return data if data is not None else etree.Element(f"{{{NETCONF_NS}}}data")

    def lock(self) -> None:
        self.rpc("<lock><target><candidate/></target></lock>")

    def unlock(self) -> None:
        self.rpc("<unlock><target><candidate/></target></unlock>")

    def edit_config(self, config: str) -> None:
        self.rpc(
            "<edit-config><target><candidate/></target><default-operation>merge</default-operation>"
            f"<config>{config}</config></edit-config>"
        )

    def commit(self) -> None:
        self.rpc("<commit/>")

    def subscribe(self, stream: str) -> None:
        self.rpc(f'<create-subscription xmlns="{NOTIFICATION_NS}"><stream>{_escape(stream)}</stream></create-subscription>')

    def next_notification(self) -> str:
        """Block until the controller sends something on this session; its raw text."""
        try:
            data = self._read(self.sock)
        except Exception as exc:
            raise StoreUnavailable(f"controller connection lost: {exc}") from None
        return data if isinstance(data, str) else data.decode()

    def discard_changes(self) -> None:
        self.rpc("<discard-changes/>")

    def close(self) -> None:
        # shutdown() first: it wakes a thread blocked reading this socket.
        with contextlib.suppress(Exception):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.sock.close()


def _current_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return "pnp-service"


NAMESPACES = {"ctrl": model.CONTROLLER_NS, "pnp": model.PNP_NS}


def fetch_declarations(session: ClixonSession, source: str, serial: str | None = None) -> dict[str, model.Declaration]:
    """Declarations from a datastore, all or one serial's."""
    xpath = "/ctrl:services/pnp:pnp-device"
    if serial is not None:
        if not _SAFE_SERIAL.fullmatch(serial):
            raise StoreError(f"serial {serial!r} is not a valid serial number")
        xpath += f"[pnp:serial='{serial}']"
    data = session.get_config(source, xpath, NAMESPACES)
    return model.declarations_from_services(data.find(q("services", model.CONTROLLER_NS)))


# --------------------------------------------------------------------------- the journal


@dataclasses.dataclass
class _Pending:
    """Writes not yet committed, coalesced by serial (the newest wins)."""

    status: dict[str, Status] = dataclasses.field(default_factory=dict)
    unclaimed: dict[str, Unclaimed] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.status or self.unclaimed)


def _to_json(record: Status | Unclaimed) -> dict:
    return {
        name: model.format_time(value) if isinstance(value, dt.datetime) else value
        for name, value in dataclasses.asdict(record).items()
    }


def _from_json(cls: type, data: dict):
    times = {field.name for field in dataclasses.fields(cls) if "datetime" in str(field.type)}
    return cls(**{name: model.parse_time(value or "") if name in times else value for name, value in data.items()})


def _journal_line(kind: str, serial: str, record: Status | Unclaimed) -> str:
    return json.dumps({"kind": kind, "serial": serial, "value": _to_json(record)}, separators=(",", ":")) + "\n"


class Journal:
    """Append-only JSON lines, fsynced: what was acknowledged to devices but not yet committed."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)

    def replay(self) -> _Pending:
        pending = _Pending()
        try:
            with open(self.path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        entry = json.loads(line)
                        if entry["kind"] == "status":
                            pending.status[entry["serial"]] = _from_json(Status, entry["value"])
                            pending.unclaimed.pop(entry["serial"], None)
                        else:
                            pending.unclaimed[entry["serial"]] = _from_json(Unclaimed, entry["value"])
                    except (ValueError, KeyError, TypeError) as exc:
                        # A torn last line from a crash mid-append: it was never acknowledged.
                        log.warning("journal %s line %d unreadable, skipped: %s", self.path, number, exc)
        except FileNotFoundError:
            pass
        return pending

    def append(self, serial: str, status: Status | None, unclaimed: Unclaimed | None) -> None:
        data = (
            (_journal_line("unclaimed", serial, unclaimed) if unclaimed is not None else "")
            + (_journal_line("status", serial, status) if status is not None else "")
        ).encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def rewrite(self, pending: _Pending) -> None:
        """Keep only what is still pending (after a commit), atomically."""
        temporary = self.path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            for serial, entry in pending.unclaimed.items():
                handle.write(_journal_line("unclaimed", serial, entry))
            for serial, status in pending.status.items():
                handle.write(_journal_line("status", serial, status))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)


# --------------------------------------------------------------------------- the store


@dataclasses.dataclass
class _View:
    declarations: dict[str, model.Declaration]
    work: dict[str, model.Work]
    status: dict[str, Status]
    unclaimed: dict[str, Unclaimed]


def _view_from(data: etree._Element) -> _View:
    pnp = data.find(q("pnp"))
    view = _View(model.declarations_from_services(data.find(q("services", model.CONTROLLER_NS))), {}, {}, {})
    if pnp is not None:
        for device in pnp.iterfind(q("device")):
            serial = model.child_text(device, "serial")
            work = model.work_from_xml(device.find(q("work")))
            status = model.status_from_xml(device.find(q("status")))
            if work is not None:
                view.work[serial] = work
            if status is not None:
                view.status[serial] = status
        for entry in pnp.iterfind(q("unclaimed")):
            unclaimed = model.unclaimed_from_xml(entry)
            view.unclaimed[unclaimed.serial] = unclaimed
    return view


def status_edit(pending: _Pending) -> str:
    """The edit-config body that records pending status and unclaimed entries."""
    parts = []
    for serial, status in pending.status.items():
        element = model.status_to_xml(status)
        element.set(f"{{{NETCONF_NS}}}operation", "replace")
        parts.append(
            f"<device><serial>{_escape(serial)}</serial>{etree.tostring(element, encoding='unicode')}</device>"
        )
        if serial not in pending.unclaimed:
            # A declared device is no longer unclaimed ("remove" is quiet when there is none).
            parts.append(f'<unclaimed nc:operation="remove"><serial>{_escape(serial)}</serial></unclaimed>')
    for entry in pending.unclaimed.values():
        element = model.unclaimed_to_xml(entry)
        element.set(f"{{{NETCONF_NS}}}operation", "replace")
        parts.append(etree.tostring(element, encoding="unicode"))
    body = "".join(parts)
    # Children carry xmlns from lxml; strip the per-element default declarations to keep it compact.
    body = body.replace(f' xmlns="{model.PNP_NS}"', "").replace(f' xmlns:nc="{NETCONF_NS}"', "")
    return f'<pnp xmlns="{model.PNP_NS}" xmlns:nc="{NETCONF_NS}">{body}</pnp>'


class ClixonStore:
    """Store backed by a Clixon controller; see the module docstring."""

    def __init__(
        self,
        sockpath: str = DEFAULT_SOCKET,
        journal_path: str | None = "pnp-service.journal",
        read_only: bool = False,
        refresh_seconds: float = 30.0,
        retry_max_seconds: float = 30.0,
        session_factory: Callable[[str], ClixonSession] | None = None,
        start_threads: bool = True,
    ):
        self.sockpath = sockpath
        self.refresh_seconds = refresh_seconds
        self.retry_max_seconds = retry_max_seconds
        self._session_factory = session_factory or ClixonSession
        # A read-only store (pnp-service status) has no journal: it must never commit a listener's writes.
        self.read_only = read_only
        self._journal = Journal(journal_path or "pnp-service.journal")
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._pending = _Pending() if read_only else self._journal.replay()
        if self._pending:
            log.info("journal %s: %d writes from before a restart wait to be committed", self._journal.path,
                     len(self._pending.status) + len(self._pending.unclaimed))
        self._reader: ClixonSession | None = None
        self._view: _View | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refresh_due = threading.Event()
        self._watcher: ClixonSession | None = None
        self.last_error = ""
        self.refresh()  # fails here, with the reason, when the controller cannot be reached at start
        self._threads: list[threading.Thread] = []
        if start_threads and not read_only:
            loops = (("pnp-clixon-refresh", self._refresh_loop), ("pnp-clixon-flush", self._flush_loop),
                     ("pnp-clixon-watch", self._watch_loop))
            for name, target in loops:
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    # ------------------------------------------------------------------ reading

    def _session(self) -> ClixonSession:
        if self._reader is None:
            self._reader = self._session_factory(self.sockpath)
        return self._reader

    def refresh(self) -> None:
        """Fetch declarations and ``/pnp`` from running (one round trip)."""
        try:
            with self._lock:
                session = self._session()
                data = session.get_config("running", "/pnp:pnp | /ctrl:services/pnp:pnp-device", NAMESPACES)
                self._view = _view_from(data)
        except StoreUnavailable:
            self._drop_reader()
            raise

    def _drop_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def reload(self, serial: str) -> None:
        """Bring one serial's record up to date now (one round trip); quiet when it cannot."""
        if not _SAFE_SERIAL.fullmatch(serial):
            return
        xpath = f"/pnp:pnp/pnp:device[pnp:serial='{serial}'] | /ctrl:services/pnp:pnp-device[pnp:serial='{serial}']"
        try:
            with self._lock:
                fresh = _view_from(self._session().get_config("running", xpath, NAMESPACES))
                for table in ("declarations", "work", "status"):
                    current = getattr(self._view, table)
                    current.pop(serial, None)
                    current.update(getattr(fresh, table))
        except StoreUnavailable as exc:
            self._drop_reader()
            log.warning("cannot reload %s from the controller: %s", serial, exc)

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._refresh_due.wait(self.refresh_seconds)
            self._refresh_due.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
                if self.last_error:
                    log.info("controller reachable again")
                    self.last_error = ""
            except StoreUnavailable as exc:
                if str(exc) != self.last_error:
                    log.warning("cannot refresh from the controller, serving the last copy: %s", exc)
                self.last_error = str(exc)

    def _watch_loop(self) -> None:
        """Refresh when the controller announces a transaction; reconnect when it restarts."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                watcher = self._watcher = self._session_factory(self.sockpath)
            except StoreUnavailable:
                self._stop.wait(delay)
                delay = min(self.retry_max_seconds, delay * 2)
                continue
            try:
                watcher.subscribe("controller-transaction")
                self._refresh_due.set()  # (re)connected: whatever happened meanwhile is read now
                delay = 1.0
                while not self._stop.is_set():
                    if "controller-transaction" in watcher.next_notification():
                        self._refresh_due.set()
            except StoreUnavailable as exc:
                log.info("controller notifications interrupted (%s); reconnecting", exc)
                self._stop.wait(delay)
            finally:
                watcher.close()

    def _record(self, serial: str) -> DeviceRecord:
        view = self._view
        assert view is not None
        status = self._pending.status.get(serial, view.status.get(serial))
        unclaimed = self._pending.unclaimed.get(serial, view.unclaimed.get(serial))
        if serial in self._pending.status:
            unclaimed = self._pending.unclaimed.get(serial)
        return DeviceRecord(serial, view.declarations.get(serial), view.work.get(serial), status, unclaimed)

    def load(self, serial: str) -> DeviceRecord:
        with self._lock:
            return self._record(serial)

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:
        if self.read_only:
            raise StoreError("this Clixon store was opened read-only")
        with self._lock:
            decision = decide(self._record(serial))
            if decision.status is None and decision.unclaimed is None:
                return decision
            self._journal.append(serial, decision.status, decision.unclaimed)
            if decision.status is not None:
                self._pending.status[serial] = decision.status
                self._pending.unclaimed.pop(serial, None)
            if decision.unclaimed is not None:
                self._pending.unclaimed[serial] = decision.unclaimed
        self._wake.set()
        return decision

    def snapshot(self) -> Snapshot:
        with self._lock:
            view = self._view
            serials = sorted(set(view.declarations) | set(view.work) | set(view.status) | set(self._pending.status))
            records = tuple(self._record(s) for s in serials)
            claimed = set(self._pending.status)
            unclaimed = {**{k: v for k, v in view.unclaimed.items() if k not in claimed}, **self._pending.unclaimed}
            problems = (self.last_error,) if self.last_error else ()
            return Snapshot(records, tuple(unclaimed[k] for k in sorted(unclaimed)), problems)

    # ------------------------------------------------------------------ writing

    def flush(self) -> bool:
        """Commit what is pending; True when nothing is left.  Raises nothing: failures are retried."""
        with self._write_lock:
            with self._lock:
                if not self._pending:
                    return True
                batch = _Pending(dict(self._pending.status), dict(self._pending.unclaimed))
            try:
                self._commit(status_edit(batch))
            except StoreUnavailable as exc:
                if str(exc) != self.last_error:
                    log.warning("status not committed yet (%d waiting in the journal), will retry: %s",
                                len(batch.status) + len(batch.unclaimed), exc)
                self.last_error = str(exc)
                return False
            with self._lock:
                for serial, status in batch.status.items():
                    if self._pending.status.get(serial) is status:
                        del self._pending.status[serial]
                        self._view.status[serial] = status
                        self._view.unclaimed.pop(serial, None)
                for serial, entry in batch.unclaimed.items():
                    if self._pending.unclaimed.get(serial) is entry:
                        del self._pending.unclaimed[serial]
                        self._view.unclaimed[serial] = entry
                self._journal.rewrite(self._pending)
                left = bool(self._pending)
            if self.last_error:
                log.info("controller writes resumed")
                self.last_error = ""
            return not left

    def _commit(self, edit: str) -> None:
        session = self._session_factory(self.sockpath)
        try:
            session.lock()
            try:
                session.edit_config(edit)
                session.commit()
            except StoreUnavailable:
                with contextlib.suppress(StoreUnavailable):
                    session.discard_changes()  # never leave our half edit in the shared candidate
                raise
            finally:
                with contextlib.suppress(StoreUnavailable):
                    session.unlock()
        finally:
            session.close()

    def _flush_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            self._wake.wait(delay if self._pending else 5.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            delay = 0.5 if self.flush() else min(self.retry_max_seconds, delay * 2)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._refresh_due.set()
        if self._watcher is not None:
            self._watcher.close()
        for thread in self._threads:
            thread.join(timeout=5)
        self.flush()
        with self._lock:
            self._drop_reader()


@contextlib.contextmanager
def session(sockpath: str = DEFAULT_SOCKET) -> Iterator[ClixonSession]:
    opened = ClixonSession(sockpath)
    try:
        yield opened
    finally:
        opened.close()
