"""A fake Clixon controller: the running datastore as far as the Clixon store uses it, validating like Clixon."""

from __future__ import annotations

import contextlib
import re
import threading

from lxml import etree

from pnp_service import model, protocol
from pnp_service.model import NETCONF_NS
from pnp_service.planner import plan
from pnp_service.stores.base import StoreUnavailable
from pnp_service.stores.clixon import RpcError

PNP = model.PNP_NS
SERIAL = re.compile(protocol.SERIAL_PATTERN.pattern)
STATES = {"planned", "onboarding", "provisioned", "error"}
#: The keyed lists of /pnp the listener writes, with their keys.
LISTS = {"stack-member": ("serial",), "reset": ("serial",), "unclaimed": ("serial",),
         "claim": ("serial", "hostname", "template-file")}
REQUEST_LEAVES = ("clear-unclaimed", "clear-claims")


def p(name):
    return f"{{{PNP}}}{name}"


class FakeController:
    """Running datastore of a controller, as far as the store uses it; validates like Clixon does."""

    def __init__(self):
        declaration = model.Declaration(serial="SN1", pid="C9300-24P", hostname="sw1", template="hostname {{ hostname }}\nend\n")
        self.running = etree.fromstring(
            f'<data xmlns="{NETCONF_NS}"><services xmlns="{model.CONTROLLER_NS}">'
            f'<pnp-device xmlns="{PNP}"><serial>SN1</serial><pid>C9300-24P</pid><hostname>sw1</hostname></pnp-device>'
            f'</services><pnp xmlns="{PNP}"/></data>'
        )
        self.running.find(p("pnp")).append(model.work_to_xml("SN1", plan(declaration)))
        self.up = True
        self.candidate_modified = False  # another session's uncommitted edits
        self.gets = 0
        self.commits = 0
        self.controller_commits = 0
        self.transaction_failure = ""  # set: the controller's transactions fail with this reason
        self.refused = 0
        self.get_gate: threading.Event | None = None  # set: get-config waits for it (a slow controller)
        self.full_reads = 0  # get-configs read in pieces: the store's full refreshes
        self.announced = threading.Condition()  # controller-transaction notifications, to subscribed sessions
        self.transactions = 0

    def announce_transaction(self):
        """A controller transaction ends: each subscribed session is told."""
        with self.announced:
            self.transactions += 1
            self.announced.notify_all()

    def session(self, sockpath):
        if not self.up:
            raise StoreUnavailable("controller socket: connection refused")
        return FakeSession(self)

    def device(self, serial, create=False):
        pnp = self.running.find(p("pnp"))
        for device in pnp.iterfind(p("device")):
            if device.findtext(p("serial")) == serial:
                return device
        if create:
            device = etree.SubElement(pnp, p("device"))
            etree.SubElement(device, p("serial")).text = serial
            return device
        return None

    def status(self, serial):
        device = self.device(serial)
        return model.status_from_xml(device.find(p("status"))) if device is not None else None

    def unclaimed(self):
        return [u.findtext(p("serial")) for u in self.running.find(p("pnp")).iterfind(p("unclaimed"))]


class FakeSession:
    def __init__(self, controller: FakeController):
        self.controller = controller
        self.edit = None
        self.services_edit = []
        self.closed = False
        self.told = 0

    @contextlib.contextmanager
    def answer_within(self, seconds):
        yield self

    def _alive(self):
        if not self.controller.up:
            raise StoreUnavailable("controller connection lost")

    def get_config_raw(self, source, xpath, namespaces=None):
        self._alive()
        if self.controller.get_gate is not None:
            self.controller.get_gate.wait(10)
        self.controller.gets += 1
        return f'<rpc-reply xmlns="{NETCONF_NS}">'.encode() + etree.tostring(self.controller.running) + b"</rpc-reply>"

    def subscribe(self, stream):
        self._alive()
        self.told = self.controller.transactions

    def next_notification(self):
        with self.controller.announced:
            while self.told == self.controller.transactions:
                self.controller.announced.wait(0.05)
                if self.closed:
                    raise StoreUnavailable("controller connection lost: closed")
                self._alive()
            self.told += 1
        return "<notification><controller-transaction/></notification>"

    def get_config_pieces(self, source, xpath, namespaces=None):
        self.controller.full_reads += 1
        data = self.get_config_raw(source, xpath)
        yield from (data[i:i + 1000] for i in range(0, len(data), 1000))  # in pieces, as a socket gives them

    def lock(self):
        self._alive()
        if self.controller.candidate_modified:
            raise RpcError("Operation failed, candidate has already been modified", "lock-denied", "protocol")

    def edit_config(self, config, default_operation="merge"):
        self._alive()
        if not isinstance(config, str):  # the store's status commits come in pieces
            config = b"".join(config).decode()
        root = etree.fromstring(f"<config>{config}</config>")
        self.edit = root.find(p("pnp"))
        if self.edit is None:
            self.edit = etree.Element(p("pnp"))
        self.services_edit = root.findall(f"{{{model.CONTROLLER_NS}}}services/{p('pnp-device')}")

    def commit(self):
        """Validate the whole edit first (Clixon rejects the batch whole), then apply it."""
        self._alive()
        for element in self.edit.iter(p("serial")):
            if not SERIAL.fullmatch(element.text or ""):
                self.controller.refused += 1
                raise RpcError(f"regexp match fail: pattern does not match {element.text}", "bad-element", "application")
        for element in self.edit.iter(p("state")):
            if element.text not in STATES:
                self.controller.refused += 1
                raise RpcError(f"'{element.text}' does not match enumeration", "bad-element", "application")
        services = self.controller.running.find(f"{{{model.CONTROLLER_NS}}}services")
        declared = {d.findtext(p("serial")) for d in services.iterfind(p("pnp-device"))}
        removed = {d.findtext(p("serial")) for d in self.services_edit if d.get(f"{{{NETCONF_NS}}}operation") == "remove"}
        if any(d.findtext(p("serial")) in declared - removed for d in self.services_edit):
            raise RpcError("Data already exists; cannot create new resource", "data-exists", "application")
        pnp = self.controller.running.find(p("pnp"))
        for device in self.edit.iterfind(p("device")):
            if device.get(f"{{{NETCONF_NS}}}operation") == "remove":
                found = self.controller.device(device.findtext(p("serial")))
                if found is not None:
                    pnp.remove(found)
                continue
            target = self.controller.device(device.findtext(p("serial")), create=True)
            for old in target.findall(p("status")):
                target.remove(old)
            status = device.find(p("status"))
            if status.get(f"{{{NETCONF_NS}}}operation") != "remove":
                target.append(status)
        for tag, keys in LISTS.items():  # keyed lists: an entry replaced, or removed
            for entry in self.edit.iterfind(p(tag)):
                key = [entry.findtext(p(name)) for name in keys]
                for old in [e for e in pnp.iterfind(p(tag)) if [e.findtext(p(name)) for name in keys] == key]:
                    pnp.remove(old)
                if entry.get(f"{{{NETCONF_NS}}}operation") != "remove":
                    pnp.append(entry)
        for tag in REQUEST_LEAVES:
            for entry in self.edit.iterfind(p(tag)):
                for old in pnp.findall(p(tag)):
                    pnp.remove(old)
                if entry.get(f"{{{NETCONF_NS}}}operation") != "remove":
                    pnp.append(entry)
        for declaration in list(services.iterfind(p("pnp-device"))):
            if declaration.findtext(p("serial")) in removed:
                services.remove(declaration)
        for declaration in self.services_edit:
            if declaration.findtext(p("serial")) in removed:
                continue
            declaration.attrib.pop(f"{{{NETCONF_NS}}}operation", None)
            services.append(declaration)  # stored as it is: a plain commit runs no services
        self.controller.commits += 1

    def controller_commit(self, timeout=60.0):
        """The controller's own commit: the declarations it brings are planned, as the service module would."""
        self._alive()
        if self.controller.transaction_failure:
            raise RpcError(self.controller.transaction_failure, "operation-failed", "application")
        added = [d.findtext(p("serial")) for d in self.services_edit if d.get(f"{{{NETCONF_NS}}}operation") != "remove"]
        removed = [d.findtext(p("serial")) for d in self.services_edit if d.get(f"{{{NETCONF_NS}}}operation") == "remove"]
        self.commit()
        for serial in removed:  # the controller removes what the service made for a deleted declaration
            device = self.controller.device(serial)
            for work in device.findall(p("work")) if device is not None else ():
                device.remove(work)
        services = self.controller.running.find(f"{{{model.CONTROLLER_NS}}}services")
        for element in services.iterfind(p("pnp-device")):
            if element.findtext(p("serial")) in added:
                declaration = model.declaration_from_xml(element)
                work = plan(declaration, lambda name: "hostname {{ hostname }}\nend\n")
                self.controller.running.find(p("pnp")).append(model.work_to_xml(declaration.serial, work))
        self.controller.controller_commits += 1

    def discard_changes(self):
        pass

    def unlock(self):
        pass

    def close(self):
        self.closed = True


def declare(controller: FakeController, serial: str, hostname: str) -> None:
    """Declare ``serial`` in the controller's running datastore, planned as the service module would."""
    declaration = model.Declaration(serial=serial, pid="C9300-24P", hostname=hostname,
                                    template="hostname {{ hostname }}\nend\n")
    services = controller.running.find(f"{{{model.CONTROLLER_NS}}}services")
    device = etree.SubElement(services, p("pnp-device"))
    for name, value in (("serial", serial), ("pid", "C9300-24P"), ("hostname", hostname)):
        etree.SubElement(device, p(name)).text = value
    controller.running.find(p("pnp")).append(model.work_to_xml(serial, plan(declaration)))
