"""The embedded datastore: one XML file in the YANG's shape, no controller needed.

Owns reading and writing that file.  The root is ``<config>``; the operator's
declarations sit under ``<services xmlns="http://clicon.org/controller">`` and
are never rewritten; what the software writes sits under
``<pnp xmlns="urn:pnp-service:pnp">``.  Here the listener plans the work
itself (the service module's job under a controller) whenever a declaration
changes.

Every write replaces the file atomically (temporary file, fsync, rename) under
an exclusive lock on ``FILE.lock``, so several listener processes can share one
file.  A file the operator left malformed is never overwritten: the last good
copy keeps serving reads and writes are refused until it is fixed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
import time
from typing import Callable, Iterator

from lxml import etree

from .. import model
from ..model import DeviceRecord, Status, Work, q
from ..planner import PlanningError, TemplateLoader, file_template_loader, plan
from .base import D, Snapshot, StoreError, StoreUnavailable

log = logging.getLogger(__name__)

EMPTY_DATASTORE = f"""<?xml version='1.0' encoding='UTF-8'?>
<config>
  <services xmlns="{model.CONTROLLER_NS}"/>
  <pnp xmlns="{model.PNP_NS}"/>
</config>
"""

# The file is the operator's own, but still parsed without entities or network.
_FILE_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
)


#: How long a poll that changes nothing trusts the parsed file without a stat.
STAT_INTERVAL = 0.2


class _Index:
    """A parsed datastore file and lookups into it."""

    def __init__(self, tree: etree._ElementTree):
        self.tree = tree
        root = tree.getroot()
        if root.tag != "config" and etree.QName(root).localname != "config":
            raise StoreError(f"root element is <{etree.QName(root).localname}>, expected <config>")
        self.pnp = root.find(q("pnp"))
        if self.pnp is None:
            self.pnp = etree.SubElement(root, q("pnp"), nsmap={None: model.PNP_NS})
        self.declarations = model.declarations_from_services(root.find(q("services", model.CONTROLLER_NS)))
        self.devices = {model.child_text(d, "serial"): d for d in self.pnp.iterfind(q("device"))}
        self.unclaimed = {model.child_text(u, "serial"): u for u in self.pnp.iterfind(q("unclaimed"))}
        # Parsed records, so a poll does not re-read XML; dropped whenever their elements change.
        self._records: dict[str, DeviceRecord] = {}
        # Children of <pnp> changed since the last save: only they are re-indented.
        self.touched: list[etree._Element] = []

    def forget(self, serial: str) -> None:
        self._records.pop(serial, None)

    def cached(self, serial: str) -> DeviceRecord | None:
        return self._records.get(serial)

    def record(self, serial: str) -> DeviceRecord:
        cached = self._records.get(serial)
        if cached is None:
            cached = self._records[serial] = self._parse_record(serial)
        return cached

    def _parse_record(self, serial: str) -> DeviceRecord:
        device = self.devices.get(serial)
        unclaimed = self.unclaimed.get(serial)
        return DeviceRecord(
            serial=serial,
            declaration=self.declarations.get(serial),
            work=model.work_from_xml(device.find(q("work"))) if device is not None else None,
            status=model.status_from_xml(device.find(q("status"))) if device is not None else None,
            unclaimed=model.unclaimed_from_xml(unclaimed) if unclaimed is not None else None,
        )

    def device(self, serial: str) -> etree._Element:
        device = self.devices.get(serial)
        if device is None:
            device = etree.SubElement(self.pnp, q("device"))
            etree.SubElement(device, q("serial")).text = serial
            # Keep devices before unclaimed entries, as the YANG lists them.
            first_unclaimed = self.pnp.find(q("unclaimed"))
            if first_unclaimed is not None:
                first_unclaimed.addprevious(device)
            self.devices[serial] = device
        self.touched.append(device)
        return device

    def tidy(self) -> None:
        """Indent what changed like the rest of the file, without walking all of it."""
        inner, outer = "\n    ", "\n  "
        for element in self.touched:
            if element.getparent() is not self.pnp:
                continue
            etree.indent(element, space="  ", level=2)
            previous = element.getprevious()
            if previous is None:
                self.pnp.text = inner
            else:
                previous.tail = inner
            element.tail = inner
        if len(self.pnp):
            self.pnp[-1].tail = outer
        self.touched.clear()

    def set_child(self, parent: etree._Element, element: etree._Element | None, name: str) -> None:
        self.touched.append(parent)
        self.forget(model.child_text(parent, "serial"))
        old = parent.find(q(name))
        if old is not None:
            parent.remove(old)
        if element is not None:
            parent.append(element)


def check_datastore(path: str) -> None:
    """Fail early, with what to fix, when ``path`` cannot be a datastore; streams, so it costs little memory."""
    if not os.path.exists(path):
        return  # created empty on first use
    try:
        for _, element in etree.iterparse(path, events=("end",), resolve_entities=False, no_network=True, huge_tree=True):
            if element.getparent() is not None and element.getparent().getparent() is not None:
                element.clear()
    except (etree.XMLSyntaxError, OSError) as exc:
        raise StoreError(f"datastore {path} is not usable, fix it: {exc}") from None


class _Job:
    """One thread's change waiting for the next group commit."""

    def __init__(self, serial: str, decide: Callable):
        self.serial, self.decide = serial, decide
        self.decision = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class EmbeddedStore:
    """Store backed by one XML file; see the module docstring."""

    def __init__(self, path: str, load_template: TemplateLoader | None = None, create: bool = True):
        self.path = os.path.abspath(path)
        self._load_template = load_template or file_template_loader(
            (os.path.join(os.path.dirname(self.path), "templates"),)
        )
        self._thread_lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Job] = []
        self._index: _Index | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._stat_time = 0.0
        self._broken: str = ""
        self._plans: dict[model.Declaration, Work | PlanningError] = {}
        if not os.path.exists(self.path):
            if not create:
                raise StoreError(f"datastore {self.path} does not exist")
            log.info("creating empty datastore %s", self.path)
            with self._locked():
                if not os.path.exists(self.path):
                    self._atomic_write(EMPTY_DATASTORE.encode())
        with self._locked():
            self._fresh()
            if self._broken:
                raise StoreError(self._broken)

    # ------------------------------------------------------------------ the Store interface

    def load(self, serial: str) -> DeviceRecord:
        return self._record(serial, trust_seconds=0.0)

    def _record(self, serial: str, trust_seconds: float) -> DeviceRecord:
        index = self._current(trust_seconds)
        # Parsed records are immutable and a dict lookup is atomic: a cached one needs no lock.
        cached = index.cached(serial)
        if cached is not None:
            return cached
        with self._thread_lock:  # parsing reads the tree, which a group commit may be changing
            return index.record(serial)

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:
        # Most polls change nothing: decide on the cached copy (records are immutable, so
        # the decision runs outside every lock).
        decision = decide(self._record(serial, trust_seconds=STAT_INTERVAL))
        if decision.status is None and decision.unclaimed is None:
            return decision
        # A change: decide again under the file lock, batched with other threads' changes into
        # one file write (group commit); each caller returns only once its change is on disk.
        job = _Job(serial, decide)
        with self._queue_lock:
            self._queue.append(job)
        while not job.done.is_set():
            with self._flush_lock:
                if not job.done.is_set():
                    self._drain()
        if job.error is not None:
            raise job.error
        return job.decision

    def _drain(self) -> None:
        """Decide and apply every queued change, then write the file once (the caller holds the flush lock)."""
        with self._queue_lock:
            jobs, self._queue = self._queue, []
        if not jobs:
            return
        try:
            with self._file_lock():
                with self._thread_lock:
                    index = self._fresh()
                    if self._broken:
                        raise StoreUnavailable(self._broken)
                    changed = False
                    for job in jobs:
                        job.decision = job.decide(index.record(job.serial))
                        changed |= self._apply(index, job.serial, job.decision)
                    data = self._serialize(index) if changed else b""
                if data:
                    # Polls go on reading the (already updated) copy while the bytes reach the disk.
                    self._atomic_write(data)
                    with self._thread_lock:
                        self._stamp = self._stat_stamp()
        except BaseException as exc:
            self._stamp = None  # the tree may hold unsaved changes: re-read the file next time
            for job in jobs:
                job.error = exc
        finally:
            for job in jobs:
                job.done.set()

    def _apply(self, index: _Index, serial: str, decision) -> bool:
        if decision.status is not None:
            self._put_status(index, serial, decision.status)
        if decision.unclaimed is not None:
            old = index.unclaimed.get(serial)
            new = model.unclaimed_to_xml(decision.unclaimed)
            if old is not None:
                old.addnext(new)
                index.pnp.remove(old)
            else:
                index.pnp.append(new)
            index.unclaimed[serial] = new
            index.touched.append(new)
            index.forget(serial)
        return decision.status is not None or decision.unclaimed is not None

    def snapshot(self) -> Snapshot:
        with self._locked():
            index = self._fresh()
            serials = sorted(set(index.declarations) | set(index.devices))
            unclaimed = tuple(model.unclaimed_from_xml(u) for u in index.unclaimed.values())
            problems = (self._broken,) if self._broken else ()
            return Snapshot(tuple(index.record(s) for s in serials), unclaimed, problems)

    def reload(self, serial: str) -> None:
        """Nothing to do: every request already sees the file as it is on disk."""

    def reset(self, serial: str) -> bool:
        """Forget a device's status, so its next poll starts over; False when it had none."""
        with self._locked():
            index = self._fresh()
            device = index.devices.get(serial)
            if device is None or device.find(q("status")) is None:
                return False
            index.set_child(device, None, "status")
            self._save(index)
            return True

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads and other processes both kept out.

        Lock order: the file lock, then the thread lock; never the file lock while
        holding the thread lock.
        """
        with self._file_lock(), self._thread_lock:
            yield

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Other processes sharing the file kept out (``FILE.lock``)."""
        with open(self.path + ".lock", "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _stat_stamp(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _current(self, trust_seconds: float = 0.0) -> _Index:
        """The parsed file; the file lock is taken only when it must be re-read (and maybe re-planned).

        A copy checked (one stat) less than ``trust_seconds`` ago is used as it is: polls that change
        nothing see an edit up to ``STAT_INTERVAL`` later; every change is decided on the file as it
        is on disk.
        """
        index, stamp, now = self._index, self._stamp, time.monotonic()
        if index is not None and stamp is not None:
            # Reading these attributes needs no lock; at worst a poll looks at the file once more.
            if now - self._stat_time < trust_seconds:
                return index
            if stamp == self._stat_stamp():
                self._stat_time = now
                return index
        with self._locked():
            return self._fresh()

    def _fresh(self) -> _Index:
        """The parsed file, re-read only when it changed on disk; work re-planned when needed."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            raise StoreUnavailable(f"datastore {self.path} was removed") from None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp and self._index is not None:
            return self._index
        try:
            index = _Index(etree.parse(self.path, _FILE_PARSER))
        except (etree.XMLSyntaxError, StoreError, OSError) as exc:
            self._broken = f"datastore {self.path} is not usable, fix it: {exc}"
            log.error("%s (serving the last good copy, writes refused)", self._broken)
            self._stamp = stamp
            if self._index is None:
                return _Index(etree.ElementTree(etree.fromstring(EMPTY_DATASTORE.encode())))
            return self._index
        self._broken = ""
        self._index, self._stamp = index, stamp
        if self._replan(index):
            self._save(index)
        return index

    def _plan(self, declaration: model.Declaration) -> Work | PlanningError:
        cached = self._plans.get(declaration)
        if cached is None:
            try:
                cached = plan(declaration, self._load_template)
            except PlanningError as exc:
                cached = exc
            self._plans[declaration] = cached
        return cached

    def _replan(self, index: _Index) -> bool:
        """Bring ``pnp/device/work`` in line with the declarations; True when anything changed."""
        changed = False
        for serial, declaration in index.declarations.items():
            planned = self._plan(declaration)
            device = index.devices.get(serial)
            current = model.work_from_xml(device.find(q("work"))) if device is not None else None
            if isinstance(planned, PlanningError):
                status = model.status_from_xml(device.find(q("status"))) if device is not None else None
                if current is not None or status is None or status.error_message != str(planned):
                    log.error("%s", planned)
                    device = index.device(serial)
                    index.set_child(device, None, "work")
                    failed = Status(state="error", error_code="planning-error", error_message=str(planned))
                    self._put_status(index, serial, failed)
                    changed = True
                continue
            if current != planned:
                log.info("pnp-device %s: planned %d steps, revision %s", serial, len(planned.steps), planned.revision)
                device = index.device(serial)
                work = model.work_to_xml(serial, planned, creator=False).find(q("work"))
                old = device.find(q("work"))
                if old is not None:
                    old.addnext(work)
                    device.remove(old)
                else:
                    device.find(q("serial")).addnext(work)
                changed = True
        for serial, device in list(index.devices.items()):
            if serial not in index.declarations and device.find(q("work")) is not None:
                log.info("pnp-device %s: declaration removed, work removed", serial)
                index.set_child(device, None, "work")
                changed = True
        return changed

    def _put_status(self, index: _Index, serial: str, status: Status) -> None:
        device = index.device(serial)
        index.set_child(device, model.status_to_xml(status), "status")
        claimed = index.unclaimed.pop(serial, None)
        if claimed is not None:
            index.pnp.remove(claimed)
        index.forget(serial)

    def _save(self, index: _Index) -> None:
        self._atomic_write(self._serialize(index))
        self._stamp = self._stat_stamp()

    def _serialize(self, index: _Index) -> bytes:
        if self._broken:
            raise StoreUnavailable(self._broken)
        # Only what we changed is re-indented: the operator's declarations keep their layout.
        index.tidy()
        return etree.tostring(index.tree, xml_declaration=True, encoding="UTF-8")

    def _atomic_write(self, data: bytes) -> None:
        directory = os.path.dirname(self.path)
        mode = os.stat(self.path).st_mode & 0o777 if os.path.exists(self.path) else 0o644
        handle, temporary = tempfile.mkstemp(prefix=".pnp-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        directory_handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)
