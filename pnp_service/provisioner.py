"""The per-device state machine: one agent message in, one reply and a status change out.

Theory of operation
-------------------
Everything the machine needs is in the store's record for a serial: the work
(ordered steps and their revision) and the status (state, current step, phase,
attempts, the correlator of the outstanding request, retry time, facts the
device reported).  No state lives in this process, so any listener can answer
any poll.

WORK-REQUEST: an undeclared serial is recorded as unclaimed and told to back
off.  A status of another revision starts over at the first step.  A device in
error, provisioned, or before its retry time gets a backoff.  Otherwise steps
that have nothing to do are skipped, and the current step's request is sent,
its correlator remembered.

WORK-RESPONSE: always answered with a Bye.  Only a response carrying the
remembered correlator, of the service the current step expects, can change
anything; stale ones, faults and backoff acknowledgements never do.  The step
type judges the response: advance, enter a phase (image-install waits for the
reload, then verifies), retry with a growing backoff until ``max_attempts``,
or fail at once (a PID mismatch).

The rule of this file: pure.  Time, the caller's address and the download URL
builder come in as arguments; no I/O, no HTTP, no store.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import replace
from typing import Callable

from . import protocol
from .model import DeviceRecord, Status, Unclaimed, Work
from .steps import Outcome, RequestContext, StepRegistry, UnknownStepType


@dataclasses.dataclass(frozen=True)
class Settings:
    """Timing policy of the listener."""

    max_attempts: int = 3
    retry_base_seconds: int = 30
    retry_max_seconds: int = 900
    unclaimed_backoff_seconds: int = 120
    unplanned_backoff_seconds: int = 60
    error_backoff_minutes: int = 10
    provisioned_backoff_minutes: int = 60
    #: A poll that changes nothing but the contact time (or an unclaimed device's
    #: last-seen) is written only when the recorded time is older than this, so idle
    #: polls cost no write.
    contact_refresh_seconds: int = 300

    def retry_delay(self, attempts: int) -> int:
        return min(self.retry_max_seconds, self.retry_base_seconds * 2 ** max(0, attempts - 1))


@dataclasses.dataclass(frozen=True)
class Contact:
    """Who is calling and when, and how to build download URLs for them."""

    now: dt.datetime
    address: str
    download_url: Callable[[str, str, str], str] = lambda kind, serial, revision: ""


@dataclasses.dataclass(frozen=True)
class Decision:
    """The reply to send and what to record first (None: nothing)."""

    reply: bytes
    event: str
    detail: str = ""
    status: Status | None = None
    unclaimed: Unclaimed | None = None


_FACT_FIELDS = ("udi", "platform", "version", "hostname")


class Provisioner:
    def __init__(self, settings: Settings | None = None, registry: StepRegistry | None = None):
        self.settings = settings or Settings()
        self.registry = registry or StepRegistry()

    # ------------------------------------------------------------------ WORK-REQUEST

    def on_work_request(self, record: DeviceRecord, request: protocol.WorkRequest, contact: Contact) -> Decision:
        envelope = protocol.Envelope(request.udi, request.correlator)
        if record.work is None:
            if record.declaration is None:
                return self._unclaimed(record, request, envelope, contact)
            return Decision(
                protocol.backoff(envelope, "work not planned yet", seconds=self.settings.unplanned_backoff_seconds),
                "not-planned",
                "declared but no work is planned yet (is the service module running?)",
            )

        work = record.work
        previous = record.status
        if self._idle(previous, work, request, contact):
            status, quiet = previous, None  # only the contact time changed, and recently: write nothing
        else:
            status = quiet = self._current(previous, work, request, contact)

        if status.state == "error":
            return Decision(
                protocol.backoff(envelope, "provisioning failed; see status", default_minutes=self.settings.error_backoff_minutes),
                "error-backoff",
                f"in error ({status.error_code}: {status.error_message})",
                quiet,
            )
        if status.state == "provisioned":
            return Decision(
                protocol.backoff(envelope, "provisioned", default_minutes=self.settings.provisioned_backoff_minutes),
                "provisioned-backoff",
                "already provisioned",
                quiet,
            )
        if status.retry_at is not None and contact.now < status.retry_at:
            wait = max(1, int((status.retry_at - contact.now).total_seconds()))
            reason = "waiting for the reload" if status.phase else f"retrying {status.step} after a failure"
            return Decision(protocol.backoff(envelope, reason, seconds=wait), "wait", f"{reason}, {wait}s left", quiet)

        position = work.index(status.step)
        if position is None:
            position, status = 0, replace(status, step=work.steps[0].id if work.steps else "", phase="", attempts=0)
        while position < len(work.steps):
            step = work.steps[position]
            try:
                step_type = self.registry.get(step.type)
            except UnknownStepType as exc:
                failed = self._error(status, "unknown-step-type", str(exc), step.id, contact.now)
                return Decision(
                    protocol.backoff(envelope, "provisioning failed; see status", default_minutes=self.settings.error_backoff_minutes),
                    "error",
                    str(exc),
                    failed,
                )
            if not step_type.is_done(step, status):
                break
            position += 1
            next_id = work.steps[position].id if position < len(work.steps) else ""
            status = replace(status, step=next_id, phase="", attempts=0)
        else:
            done = replace(
                status, state="provisioned", step="", phase="", correlator="", retry_at=None, last_contact=contact.now
            )
            return Decision(
                protocol.backoff(envelope, "provisioned", default_minutes=self.settings.provisioned_backoff_minutes),
                "provisioned",
                "nothing left to do",
                done,
            )

        declaration = record.declaration
        if request.auth_required and declaration is not None and declaration.username:
            envelope = replace(envelope, username=declaration.username, password=declaration.password)
        context = RequestContext(envelope, record.serial, work.revision, contact.download_url)
        reply = step_type.request(step, status, context)
        sent = replace(
            status,
            state="onboarding",
            step=step.id,
            correlator=request.correlator,
            retry_at=None,
            last_contact=contact.now,
            address=contact.address,
            udi=str(request.udi),
        )
        service = step_type.service(step, status.phase)
        phase = f" ({status.phase})" if status.phase else ""
        return Decision(reply, "request", f"step {step.id}{phase}: sent {service} request", sent)

    def _unclaimed(
        self, record: DeviceRecord, request: protocol.WorkRequest, envelope: protocol.Envelope, contact: Contact
    ) -> Decision:
        known = record.unclaimed
        entry = Unclaimed(
            serial=record.serial,
            udi=str(request.udi),
            pid=request.udi.pid,
            hostname=request.hostname,
            address=contact.address,
            first_seen=known.first_seen if known and known.first_seen else contact.now,
            last_seen=contact.now,
        )
        unchanged = known is not None and replace(known, last_seen=None, first_seen=None) == replace(
            entry, last_seen=None, first_seen=None
        )
        recent = (
            unchanged
            and known.last_seen is not None
            and (contact.now - known.last_seen).total_seconds() < self.settings.contact_refresh_seconds
        )
        reply = protocol.backoff(envelope, "device not declared", seconds=self.settings.unclaimed_backoff_seconds)
        return Decision(
            reply,
            "unclaimed",
            f"undeclared {request.udi.pid} from {contact.address}",
            unclaimed=None if recent else entry,
        )

    def _current(self, status: Status | None, work: Work, request: protocol.WorkRequest, contact: Contact) -> Status:
        """The status to act on: fresh at the first step when the work is new, with the contact recorded."""
        if status is None or status.revision != work.revision:
            facts = {name: getattr(status, name) for name in _FACT_FIELDS} if status else {}
            status = Status(
                state="onboarding", revision=work.revision, step=work.steps[0].id if work.steps else "", **facts
            )
        return replace(status, last_contact=contact.now, address=contact.address, udi=str(request.udi))

    def _idle(self, status: Status | None, work: Work, request: protocol.WorkRequest, contact: Contact) -> bool:
        """True when this poll would change nothing but a recently written contact time."""
        return (
            status is not None
            and status.revision == work.revision
            and status.last_contact is not None
            and (contact.now - status.last_contact).total_seconds() < self.settings.contact_refresh_seconds
            and status.address == contact.address
            and status.udi == str(request.udi)
        )

    # ------------------------------------------------------------------ WORK-RESPONSE

    def on_work_response(
        self, record: DeviceRecord, response: protocol.WorkResponse | protocol.Fault, contact: Contact
    ) -> Decision:
        if isinstance(response, protocol.Fault):
            reply = protocol.bye(protocol.Envelope(response.udi, ""))
            return Decision(reply, "fault", f"agent fault {response.code}: {response.string}")
        reply = protocol.bye(protocol.Envelope(response.udi, response.correlator))
        if response.service == "backoff":
            return Decision(reply, "backoff-ack")
        status, work = record.status, record.work
        if work is None or status is None or not status.correlator:
            return Decision(reply, "unexpected", f"{response.service} response but no request is outstanding")
        if status.correlator != response.correlator or status.revision != work.revision:
            return Decision(reply, "stale", f"{response.service} response with stale correlator {response.correlator}")
        position = work.index(status.step)
        step = work.steps[position] if position is not None else None
        step_type = self.registry.get(step.type) if step is not None else None
        if step is None or step_type is None or step_type.service(step, status.phase) != response.service:
            return Decision(reply, "stale", f"{response.service} response does not answer step {status.step}")

        outcome = step_type.on_response(step, status, response)
        updated = self._apply(outcome, work, position, status, contact)
        verdict = "ok" if response.success else f"failed ({outcome.code}: {outcome.message})"
        return Decision(reply, outcome.kind, f"step {step.id}: {response.service} {verdict} -> {updated.state}", updated)

    def _apply(self, outcome: Outcome, work: Work, position: int, status: Status, contact: Contact) -> Status:
        facts = {name: value for name, value in outcome.facts.items() if name in _FACT_FIELDS and value}
        status = replace(status, correlator="", last_contact=contact.now, address=contact.address, **facts)
        step_id = work.steps[position].id
        if outcome.kind == "advance":
            if position + 1 < len(work.steps):
                return replace(status, step=work.steps[position + 1].id, phase="", attempts=0, retry_at=None)
            return replace(status, state="provisioned", step="", phase="", attempts=0, retry_at=None)
        if outcome.kind == "phase":
            wait = dt.timedelta(seconds=outcome.wait_seconds) if outcome.wait_seconds else None
            return replace(status, phase=outcome.phase, retry_at=contact.now + wait if wait else None)
        if outcome.kind == "fail":
            return self._error(status, outcome.code, outcome.message, step_id, contact.now)
        attempts = status.attempts + 1
        if attempts >= self.settings.max_attempts:
            message = f"{outcome.message} (gave up after {attempts} attempts)"
            return replace(self._error(status, outcome.code, message, step_id, contact.now), attempts=attempts)
        delay = dt.timedelta(seconds=self.settings.retry_delay(attempts))
        return replace(
            status,
            attempts=attempts,
            phase=outcome.phase,
            retry_at=contact.now + delay,
            error_code=outcome.code,
            error_message=outcome.message,
            error_step=step_id,
            error_time=contact.now,
        )

    @staticmethod
    def _error(status: Status, code: str, message: str, step_id: str, now: dt.datetime) -> Status:
        return replace(
            status,
            state="error",
            correlator="",
            retry_at=None,
            error_code=code,
            error_message=message,
            error_step=step_id,
            error_time=now,
        )
