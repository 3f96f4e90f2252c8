"""The listener's request handling, independent of the web framework.

Owns the path from an HTTP body to an HTTP answer: parse with the protocol
core (a body that is not PnP, or names a serial that cannot exist, is a 400
and changes nothing), run the state machine on the store's record through
``store.update`` (which makes any change durable first), log one event line per
message, and serve signed downloads by asking the work's step types what they
serve.  The Flask app (``app.py``) only adapts requests and responses to these
calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from typing import Callable

from . import protocol
from .downloads import TransferGate, UrlSigner
from .logs import event
from .model import DeviceRecord, Handoff, State
from .provisioner import Contact, Decision, Event, Provisioner, Settings
from .sightings import SightingWriter
from .steps import Download, StepRegistry, UnknownStepType
from .stores.base import Store, StoreUnavailable
from .timeline import Entry, TimelineWriter

log = logging.getLogger("pnp_service.listener")

XML = "application/xml"
TEXT = "text/plain; charset=utf-8"

#: How loud each event is.  Anything not listed is INFO.
EVENT_LEVELS = {
    Event.STALE: logging.WARNING,
    Event.UNEXPECTED: logging.WARNING,
    Event.FAULT: logging.WARNING,
    Event.WRONG_SERVICE: logging.WARNING,
    Event.RETRY: logging.WARNING,
    Event.FAIL: logging.ERROR,
    Event.GAVE_UP: logging.ERROR,
    Event.BROKEN_WORK: logging.ERROR,
    Event.REFUSED: logging.WARNING,
    Event.LOCATION_REFUSED: logging.WARNING,
    Event.HELD_OFF: logging.DEBUG,
    Event.BACKOFF_ACK: logging.DEBUG,
    Event.WAIT: logging.DEBUG,
    Event.PROVISIONED_BACKOFF: logging.DEBUG,
    Event.ERROR_BACKOFF: logging.DEBUG,
    # Said once, at ERROR, when the declarations are loaded (and on /healthz and in status), not at every poll.
    Event.NOT_PLANNED: logging.DEBUG,
}


#: The URL the device called us at (or a function returning it, evaluated only when needed).
BaseUrl = str | Callable[[], str]


@dataclasses.dataclass(frozen=True)
class ListenerSettings:
    provisioning: Settings = Settings()
    max_body_bytes: int = protocol.MAX_MESSAGE_BYTES
    #: Base URL devices use to reach this listener, e.g. ``https://pnp.example.net``;
    #: empty: the URL the device called.
    public_url: str = ""
    secret: bytes = b""
    download_lifetime_seconds: int = 3600
    #: Folder of image files served to devices whose ``image/url`` is a bare file name.
    image_dir: str = ""
    #: How long a device is told to wait when the store cannot take its change (HTTP 503 Retry-After).
    unavailable_retry_seconds: int = 30
    #: Devices pulling an image from this listener process at once; the others are told to back off.
    max_image_transfers: int = 64
    #: Strangers' sightings waiting to be written (sightings.py); beyond, one is dropped until its next poll.
    max_waiting_sightings: int = 10_000


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()
    #: A file to stream instead of ``body`` (image downloads).
    file_path: str = ""
    #: Called once when the file's transfer ends: ``(bytes sent, whether it reached the end of the file)``.
    on_close: Callable[[int, bool], None] | None = None


class Later:
    """What finishes an answer that must wait (a durable write, a controller round trip), run in a thread: alone
    (call it), or with the others waiting at that moment (:meth:`Listener.finish_many`: one store commit for all)."""

    __slots__ = ("listener", "serial", "decide", "address", "reported")

    def __init__(self, listener: "Listener", serial: str, decide: Callable[[DeviceRecord], Decision], address: str,
                 reported: str):
        self.listener, self.serial, self.decide, self.address, self.reported = listener, serial, decide, address, reported

    def __call__(self) -> Reply:
        return self.listener._durable(self.serial, self.decide, self.address, self.reported)


def _error(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode(), TEXT)


class Listener:
    def __init__(
        self,
        store: Store,
        settings: ListenerSettings | None = None,
        registry: StepRegistry | None = None,
        clock: Callable[[], float] = time.time,
        on_provisioned: Callable[[str], None] | None = None,
        timeline: TimelineWriter | None = None,
    ):
        from .metrics import Metrics

        self.store = store
        #: Told the serial of every device that became provisioned and waits to be handed on (never blocks).
        self.on_provisioned = on_provisioned
        self.settings = settings or ListenerSettings()
        if not self.settings.secret:
            raise ValueError("ListenerSettings.secret is required to sign download URLs")
        self.provisioner = Provisioner(self.settings.provisioning, registry)
        self.registry = self.provisioner.registry
        self.signer = UrlSigner(self.settings.secret, self.settings.download_lifetime_seconds)
        self.transfers = TransferGate(self.settings.max_image_transfers)
        self.metrics = Metrics(store, transfers=self.transfers)
        self.clock = clock
        self.sightings = SightingWriter(store, capacity=self.settings.max_waiting_sightings,
                                        on_dropped=self.metrics.refused.labels("sightings-full").inc)
        #: Where each declared device's events are kept for ``status SERIAL`` (timeline.py); None: nowhere.
        self.timeline = timeline
        #: The planning error last put in each declared device's timeline: said once, not at every poll.
        self._planning_noted: dict[str, str] = {}

    def close(self, timeout: float = 10.0) -> bool:
        """Write what waits behind answers already sent (strangers' sightings, timeline entries); False if
        ``timeout`` was too short."""
        written = self.sightings.flush(timeout)
        if not written:
            log.warning("stopping with %d strangers' sightings not written", self.sightings.waiting())
        if self.timeline is not None and not self.timeline.flush(timeout):
            log.warning("stopping with %d timeline entries not written", self.timeline.waiting())
            written = False
        return written

    def note(self, serial: str, what: str, address: str = "", step: str = "", state: str = "", detail: str = "") -> None:
        """Add a line to a declared device's timeline (behind the answer; never waits)."""
        if self.timeline is not None:
            self.timeline.record(serial, Entry(utcnow_from(self.clock()), what, address, step, state, detail))

    # ------------------------------------------------------------------ PnP endpoints

    def work_request(self, body: bytes, address: str, base_url: BaseUrl, secure: bool = False) -> Reply:
        reply = self._work_request(body, address, base_url, secure, quick=False)
        assert isinstance(reply, Reply)
        return reply

    def work_response(self, body: bytes, address: str, base_url: BaseUrl, secure: bool = False) -> Reply:
        reply = self._work_response(body, address, base_url, secure, quick=False)
        assert isinstance(reply, Reply)
        return reply

    def quick_work_request(self, body: bytes, address: str, base_url: BaseUrl, secure: bool = False) -> Reply | Later:
        """The answer when it needs no wait (nothing to record, nothing to look up elsewhere); else what finishes
        it in a thread (:data:`Later`: it decides again, on the record as it is then, and makes it durable).

        Most polls of a roll-out are such (a provisioned device, a device told to wait, a bye): the server
        answers them on its event loop, and hands only the others to a thread.
        """
        return self._work_request(body, address, base_url, secure, quick=True)

    def quick_work_response(self, body: bytes, address: str, base_url: BaseUrl, secure: bool = False) -> Reply | Later:
        """As :meth:`quick_work_request`, for a WORK-RESPONSE (a backoff's acknowledgement, a stale answer)."""
        return self._work_response(body, address, base_url, secure, quick=True)

    def _work_request(self, body: bytes, address: str, base_url: BaseUrl, secure: bool, quick: bool) -> Reply | Later:
        try:
            request = protocol.parse_work_request(body)
        except protocol.ProtocolError as exc:
            self.metrics.refused.labels("bad-work-request").inc()
            event(log, logging.WARNING, "bad-work-request", address=address, reason=str(exc))
            return _error(400, f"bad WORK-REQUEST: {exc}")
        contact = self._contact(address, base_url, secure)
        return self._decide(
            request.udi.serial,
            lambda record: self.provisioner.on_work_request(record, request, contact),
            address,
            request.hostname,
            quick,
        )

    def _work_response(self, body: bytes, address: str, base_url: BaseUrl, secure: bool, quick: bool) -> Reply | Later:
        try:
            response = protocol.parse_work_response(body)
        except protocol.ProtocolError as exc:
            self.metrics.refused.labels("bad-work-response").inc()
            event(log, logging.WARNING, "bad-work-response", address=address, reason=str(exc))
            return _error(400, f"bad WORK-RESPONSE: {exc}")
        contact = self._contact(address, base_url, secure)
        return self._decide(
            response.udi.serial,
            lambda record: self.provisioner.on_work_response(record, response, contact),
            address,
            quick=quick,
        )

    def _decide(self, serial: str, decide: Callable[[DeviceRecord], Decision], address: str, reported: str = "",
                quick: bool = False) -> Reply | Later:
        began = time.perf_counter()
        decide = _DecidedOnce(decide)
        if quick:
            record = self.store.peek(serial)
            decision = decide(record) if record is not None else None
            if decision is not None and _a_sighting(decision) and decision.unclaimed is not None:
                # A stranger's backoff does not wait for the disk: its sighting is written behind it.
                self.sightings.record(serial, decision.unclaimed)
                return self._answered(serial, decision, address, reported, began)
            if decision is None or decision.changes or decision.recheck:
                # To be made durable (or looked up) first: decided again in a thread, on the record as it is then.
                return Later(self, serial, decide, address, reported)
            return self._answered(serial, decision, address, reported, began)
        return self._durable(serial, decide, address, reported)

    def _durable(self, serial: str, decide: Callable[[DeviceRecord], Decision], address: str, reported: str) -> Reply:
        began = time.perf_counter()
        try:
            decision = self.store.update(serial, decide)
        except StoreUnavailable as exc:
            return self._unavailable(serial, address, exc)
        return self._answered(serial, decision, address, reported, began)

    @property
    def finishes_many_at_once(self) -> bool:
        """Whether :meth:`finish_many` commits its writes together (the store's ``update_many`` is one commit)."""
        return bool(getattr(self.store, "updates_many_in_one_commit", False))

    def finish_many(self, laters: list[Later]) -> list[Reply]:
        """Finish several answers with one store commit for all their writes: a reply per answer, in order.  The
        server hands the laters of many devices over at once (one thread hand-off, one commit, instead of one each)."""
        began = time.perf_counter()
        results = self.store.update_many([(later.serial, later.decide) for later in laters])
        replies = []
        for later, result in zip(laters, results):
            if isinstance(result, StoreUnavailable):
                replies.append(self._unavailable(later.serial, later.address, result))
            elif isinstance(result, Exception):
                log.error("deciding on %s failed", later.serial, exc_info=result)
                replies.append(_error(500, "500 Internal Server Error"))
            else:
                replies.append(self._answered(later.serial, result, later.address, later.reported, began))
        return replies

    def _unavailable(self, serial: str, address: str, exc: StoreUnavailable) -> Reply:
        self.metrics.refused.labels("store-unavailable").inc()
        event(log, logging.ERROR, "store-unavailable", serial=serial, address=address, reason=str(exc))
        retry = str(self.settings.unavailable_retry_seconds)
        return Reply(503, b"store unavailable, retry later\n", TEXT, (("Retry-After", retry),))

    def _answered(self, serial: str, decision: Decision, address: str, reported: str, began: float) -> Reply:
        """Count, hand on and log a decision that is made (and durable when it changed something): its reply."""
        status = decision.status
        self.metrics.polls.labels(decision.event.value).inc()
        if decision.changes:
            self.metrics.writes.observe(time.perf_counter() - began)
        if decision.event == Event.REFUSED and status is not None:
            self.metrics.sudi_refused.labels(status.error.code or "unknown").inc()
        if status is not None and status.handoff.state == Handoff.PENDING and status.state == State.PROVISIONED and self.on_provisioned:
            self.on_provisioned(status_serial(serial, decision))
        level = EVENT_LEVELS.get(decision.event, logging.INFO)
        if decision.event == Event.NOT_PLANNED and self._planning_noted.get(serial) != decision.detail:
            if len(self._planning_noted) >= 100_000:  # only declared serials get here; a bound all the same
                self._planning_noted.clear()
            self._planning_noted[serial] = decision.detail
            self.note(serial, "planning-error", address, detail=decision.detail)
        if level >= logging.INFO and status is not None and decision.event != Event.UNCLAIMED:
            self.note(status_serial(serial, decision), decision.event, address, decision.step, str(status.state),
                      decision.detail)
        event(
            log,
            level,
            decision.event,
            serial=serial,
            address=address,
            device=decision.device or None,
            hostname=decision.hostname or reported or None,
            step=decision.step or None,
            state=status.state if status is not None else None,
            detail=decision.detail,
        )
        return Reply(200, decision.reply, XML)

    def _contact(self, address: str, base_url: BaseUrl, secure: bool = False) -> Contact:
        now = self.clock()

        def download_url(kind: str, serial: str, revision: str, name: str, bind_seconds: int = 0) -> str:
            # The base URL is worked out only when a download URL is needed, not on every poll.
            root = self.settings.public_url or (base_url() if callable(base_url) else base_url)
            bound = address if bind_seconds else ""
            return root.rstrip("/") + self.signer.path(kind, serial, revision, name, now, bound, bind_seconds or None)

        def file_size(name: str) -> int | None:
            path = self._image_path(name)
            return os.path.getsize(path) if path else None

        return Contact(now=utcnow_from(now), address=address, download_url=download_url, file_size=file_size,
                       secure=secure, reserve_transfer=self.transfers.reserve)

    # ------------------------------------------------------------------ downloads

    def download(self, kind: str, serial: str, revision: str, name: str, expires: str, signature: str, address: str,
                 bound: bool = False, head: bool = False) -> Reply:
        """A signed download; ``head``: only its headers (a look takes no image transfer slot)."""
        found = self._offered(kind, serial, revision, name, expires, signature, address, bound, self.store.load)
        if isinstance(found, Reply) or found is None:  # load always has a record
            return found or _error(404, "no such download")
        offered, hostname = found
        return self._serve(offered, serial, address, kind, name, hostname, head)

    def quick_download(self, kind: str, serial: str, revision: str, name: str, expires: str, signature: str,
                       address: str, bound: bool = False) -> Reply | None:
        """A configuration download answered on the event loop (its text is in the work, the record in memory);
        None when it needs a thread: an image (a file transfer), or a record the store must look up first."""
        found = self._offered(kind, serial, revision, name, expires, signature, address, bound, self.store.peek)
        if found is None or isinstance(found, Reply):
            return found
        offered, hostname = found
        if offered.text is None:
            return None
        return self._serve(offered, serial, address, kind, name, hostname)

    def _offered(self, kind: str, serial: str, revision: str, name: str, expires: str, signature: str, address: str,
                 bound: bool, load: Callable[[str], DeviceRecord | None]) -> tuple[Download, str] | Reply | None:
        """What the signed URL offers (and the device's hostname), a refusal, or None when ``load`` has no record."""
        refused = self.signer.check(kind, serial, revision, name, expires, signature, self.clock(),
                                    address if bound else "")
        if refused:
            event(log, logging.WARNING, "download-refused", serial=serial, address=address, kind=kind, reason=refused)
            return _error(403, f"download refused: {refused}")
        record = load(serial)
        if record is None:
            return None
        work = self.provisioner.effective_work(record.work)
        if work is None or work.revision != revision:
            event(log, logging.WARNING, "download-refused", serial=serial, address=address, kind=kind,
                  reason=f"revision {revision} is not current")
            return _error(404, "no such download (the work changed; the device will be sent a new URL)")
        for step in work.steps:
            try:
                offered = self.registry.get(step.type).download(step, kind)
            except UnknownStepType:
                continue
            if offered is not None:
                return offered, record.declaration.hostname if record.declaration else ""
        return _error(404, f"this device's work has no {kind} to download here")

    def _serve(self, offered: Download, serial: str, address: str, kind: str, name: str, hostname: str = "",
               head: bool = False) -> Reply:
        if offered.text is not None:
            data = offered.text.encode()
            # A configuration carries secrets: log its size, never its text.
            event(log, logging.INFO, "download", serial=serial, address=address, hostname=hostname or None, kind=kind,
                  bytes=len(data))
            self.note(serial, "download", address, detail=f"{kind}, {len(data)} bytes")
            return Reply(200, data, offered.content_type)
        path = self._image_path(offered.file_name)
        if not path or (name and name != offered.file_name):
            event(log, logging.WARNING, "download-refused", serial=serial, address=address, kind=kind,
                  reason=f"{offered.file_name!r} is not a file in the image folder")
            return _error(404, "no such image here")
        if head:
            return Reply(200, content_type=offered.content_type, file_path=path, on_close=lambda sent, complete: None)
        if not self.transfers.begin(serial):
            self.metrics.refused.labels("transfers-busy").inc()
            event(log, logging.WARNING, "download-busy", serial=serial, address=address, kind=kind,
                  limit=self.transfers.limit)
            self.note(serial, "download-busy", address, detail=f"{kind}: every transfer slot in use, told to retry")
            return Reply(503, b"image transfers busy, retry later\n", TEXT, (("Retry-After", "60"),))
        size = os.path.getsize(path)
        event(log, logging.INFO, "download", serial=serial, address=address, hostname=hostname or None, kind=kind,
              file=offered.file_name, bytes=size)
        began = time.monotonic()

        def finished(sent: int, complete: bool) -> None:
            self.transfers.end(serial, complete)
            seconds = round(time.monotonic() - began, 1)
            outcome = "download-done" if complete else "download-broken"
            event(log, logging.INFO if complete else logging.WARNING, outcome, serial=serial, address=address,
                  hostname=hostname or None, kind=kind, file=offered.file_name, bytes=sent, seconds=seconds)
            self.note(serial, outcome, address, detail=f"{kind} {offered.file_name}: {sent} of {size} bytes in {seconds} s")

        return Reply(200, content_type=offered.content_type, file_path=path, on_close=finished)

    def _image_path(self, name: str) -> str:
        """The file ``name`` inside ``image_dir``, when it is a plain, visible file there."""
        if not self.settings.image_dir or not name or os.path.basename(name) != name or name.startswith("."):
            return ""
        root = os.path.realpath(self.settings.image_dir)
        path = os.path.realpath(os.path.join(root, name))
        return path if os.path.dirname(path) == root and os.path.isfile(path) else ""


def status_serial(caller: str, decision: Decision) -> str:
    """The declared serial a decision's status belongs to (a stack's, when a member called)."""
    return decision.device or caller


def utcnow_from(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)


def _a_sighting(decision: Decision) -> bool:
    """A stranger told to back off, whose only change is its unclaimed entry (no probe awaiting an answer)."""
    return (decision.event == Event.UNCLAIMED and decision.unclaimed is not None and decision.status is None
            and not decision.member_of and not decision.unclaimed.correlator and not decision.recheck)


class _DecidedOnce:
    """A message's ``decide``, which answers again without deciding when it is asked about the very record it last
    decided on: a poll decided on the event loop, then before and inside the store's transaction, is decided once
    while nothing changed in between (the stores hand out the same objects for an unchanged record)."""

    __slots__ = ("decide", "record", "decision")

    def __init__(self, decide: Callable[[DeviceRecord], Decision]):
        self.decide = decide
        self.record: DeviceRecord | None = None
        self.decision: Decision | None = None

    def __call__(self, record: DeviceRecord) -> Decision:
        seen = self.record
        if seen is not None and self.decision is not None and _same_record(seen, record):
            return self.decision
        decision = self.decide(record)
        self.record, self.decision = record, decision
        return decision


def _same_record(one: DeviceRecord, other: DeviceRecord) -> bool:
    """The same objects throughout (identity, not equality: cheap, and never wrong)."""
    return (one.serial == other.serial and one.caller == other.caller and one.status is other.status
            and one.unclaimed is other.unclaimed and one.work is other.work and one.declaration is other.declaration
            and one.planning_error == other.planning_error and one.stacks is other.stacks)
