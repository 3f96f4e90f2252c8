"""The hand-off to the Clixon controller: a provisioned device becomes a managed one.

Owns the controller's side of day 1, as the controller's own rules require
(docs/controller.md): the device entry is created under ``/ctrl:devices`` with a
plain NETCONF edit-config and commit (``operation="create"``: an existing entry
of that name is never overwritten), its host key, read over PnP, is pinned in
the controller's ``known_hosts`` (or, when the operator said so, host key
checking is turned off for it), the connection is opened with the RPC
``connection-change``, and ``conn-state`` is watched until OPEN, or CLOSED
with the controller's ``logmsg``.  An entry that does not open is withdrawn
again: the controller (1.8) holds every later ``commit`` in INIT, with the
candidate locked, while an enabled device is CLOSED, so one unreachable switch
would stall the whole roll-out.  Nothing is lost by that: opening a
connection pulls the device's configuration anew.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ...handoff import Result
from ...model import CONTROLLER_NS, NETCONF_NS, DeviceRecord, Handoff
from ...xmlsafe import escape_text
from ..base import StoreUnavailable
from .netconf import DEFAULT_SOCKET, RpcError, Session, commit_edit

#: What an entry made by pnp-service says, so a second listener recognises it as its own.
MARK = "pnp-service day 0: {serial}"


def _device_xpath(name: str) -> str:
    """The controller's entry of that name.  A name is the operator's free text: quoted as an XPath literal,
    never pasted between quotes it could close."""
    if "'" not in name:
        literal = f"'{name}'"
    elif '"' not in name:
        literal = f'"{name}"'
    else:  # XPath 1.0 has no escape: concatenate the pieces between the apostrophes
        literal = "concat(" + ", \"'\", ".join(f"'{part}'" for part in name.split("'")) + ")"
    return f"/ctrl:devices/ctrl:device[ctrl:name={literal}]"


def known_hosts_line(address: str, port: int, key: str) -> str:
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {key}"


def pin_host_key(path: str, address: str, port: int, key: str) -> str:
    """Add the host key to ``known_hosts`` (empty result), or say why not: another key is pinned for that host."""
    host = known_hosts_line(address, port, key).split(" ", 1)[0]
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and host in fields[0].split(","):
            if " ".join(fields[1:3]) == key:
                return ""
            return (f"{path} already pins another host key for {host}: not replaced (remove that line if the "
                    "device was replaced)")
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
        handle.write(known_hosts_line(address, port, key) + "\n")
    return ""


class ControllerAction:
    """Hand a provisioned device to the controller that declared it."""

    def __init__(self, sockpath: str = DEFAULT_SOCKET, known_hosts: str = "~/.ssh/known_hosts",
                 session_factory: Callable[[str], Session] | None = None, open_timeout: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.sockpath = sockpath
        self.known_hosts = os.path.expanduser(known_hosts)
        self.session_factory = session_factory or Session
        self.open_timeout, self.sleep = open_timeout, sleep

    def hand_off(self, record: DeviceRecord) -> Result:
        declaration, status = record.declaration, record.status
        if declaration is None or declaration.handoff is None or status is None:
            return Result(Handoff.MANAGED, "no controller declared for it", retry=False)
        spec = declaration.handoff
        name = spec.name or declaration.hostname or record.serial
        address = spec.address or status.address
        if spec.check_host_key:
            if not status.facts.host_key:
                return Result(Handoff.FAILED, "no SSH host key was read over PnP: nothing to pin", name, retry=False)
            refused = pin_host_key(self.known_hosts, address, spec.port, status.facts.host_key)
            if refused:
                return Result(Handoff.FAILED, refused, name, retry=False)
        try:
            session = self.session_factory(self.sockpath)
        except StoreUnavailable as exc:
            return Result(Handoff.FAILED, f"controller unreachable: {exc}", name)
        try:
            try:
                conflict = self._add(session, record.serial, name, address, spec)
            except (RpcError, StoreUnavailable) as exc:
                return Result(Handoff.FAILED, f"the controller refused the device entry: {exc}", name)
            if conflict:
                return Result(Handoff.FAILED, conflict, name, retry=False)
            try:  # from here on the entry is ours: it opens, or it is withdrawn
                self._connection_change(session, name, "OPEN")
                state, message = self._wait_open(session, name)
                if state == "OPEN":
                    return Result(Handoff.MANAGED, f"managed by the controller as {name} ({address}:{spec.port})", name)
                failure = f"connection {state or 'not opened'}: {message or 'no logmsg'}"
            except (RpcError, StoreUnavailable) as exc:
                failure = f"the controller refused: {exc}"
            return Result(Handoff.FAILED, failure + self._withdraw(session, name), name)
        finally:
            session.close()

    def _add(self, session: Session, serial: str, name: str, address: str, spec) -> str:
        """Create the device entry; an entry of that name that is not ours is a conflict, never overwritten."""
        optional = ""
        if spec.profile:
            optional += f"<device-profile>{escape_text(spec.profile)}</device-profile>"
        if not spec.check_host_key:
            optional += "<ssh-stricthostkey>false</ssh-stricthostkey>"
        edit = (
            f'<devices xmlns="{CONTROLLER_NS}" xmlns:nc="{NETCONF_NS}"><device nc:operation="create">'
            f"<name>{escape_text(name)}</name><enabled>true</enabled>"
            f"<description>{escape_text(MARK.format(serial=serial))}</description>{optional}"
            f"<conn-type>NETCONF_SSH</conn-type><user>{escape_text(spec.user)}</user>"
            f"<addr>{escape_text(address)}</addr><port>{spec.port}</port></device></devices>"
        )
        if self._commit(session, edit):
            return ""
        existing = session.get_config("running", _device_xpath(name))
        if existing.findtext(f".//{{{CONTROLLER_NS}}}description") != MARK.format(serial=serial):
            return (f"a device named {name} already exists under /ctrl:devices and was not made for {serial}: "
                    "not overwritten (set controller name to another one, or remove that entry)")
        return ""  # ours, from an earlier try or another listener

    def _withdraw(self, session: Session, name: str) -> str:
        """Close and delete our entry that did not open; what to add to the failure when that failed too."""
        quoted = escape_text(name)
        try:
            self._connection_change(session, name, "CLOSE")
            self._commit(session, f'<devices xmlns="{CONTROLLER_NS}" xmlns:nc="{NETCONF_NS}">'
                                  f'<device nc:operation="delete"><name>{quoted}</name></device></devices>')
        except (RpcError, StoreUnavailable) as exc:
            if getattr(exc, "tag", "") == "data-missing":
                return ""
            return (f"; {name} is left enabled under /ctrl:devices and the controller's commits wait while it is "
                    f"closed ({exc}): delete it or set enabled false")
        return f"; {name} withdrawn from /ctrl:devices until the next try"

    def _connection_change(self, session: Session, name: str, operation: str, tries: int = 40) -> None:
        """OPEN or CLOSE a device.  It starts a controller transaction, which the controller refuses while another
        session holds the candidate (a listener's status commit, for milliseconds): that is waited for."""
        for attempt in range(tries):
            try:
                session.rpc(f'<connection-change xmlns="{CONTROLLER_NS}"><device>{escape_text(name)}</device>'
                            f"<operation>{operation}</operation></connection-change>")
                return
            except RpcError as exc:
                if not exc.busy or attempt == tries - 1:
                    raise
                self.sleep(0.25)

    def _commit(self, session: Session, edit: str, tries: int = 20) -> bool:
        """Commit an edit; False when it creates an entry that exists.  A busy candidate (a status commit) is
        waited for."""
        for attempt in range(tries):
            try:
                commit_edit(session, edit)
                return True
            except RpcError as exc:
                if exc.tag == "data-exists":
                    return False
                if not exc.busy or attempt == tries - 1:
                    raise
                self.sleep(0.25)
        return True  # not reached

    def _wait_open(self, session: Session, name: str) -> tuple[str, str]:
        deadline = time.monotonic() + self.open_timeout
        state = message = ""
        while time.monotonic() < deadline:
            data = session.get(_device_xpath(name))
            device = data.find(f".//{{{CONTROLLER_NS}}}device")
            if device is not None:
                state = (device.findtext(f"{{{CONTROLLER_NS}}}conn-state") or "").strip()
                message = (device.findtext(f"{{{CONTROLLER_NS}}}logmsg") or "").strip()
            if state == "OPEN" or (state == "CLOSED" and message):
                return state, message
            self.sleep(0.2)
        return state, message


__all__ = ["ControllerAction", "MARK", "known_hosts_line", "pin_host_key"]
