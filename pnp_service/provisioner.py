"""The per-device state machine: one agent message in, one reply and a status change out.

Theory of operation
-------------------
Everything the machine needs is in the store's record for a serial: the work
(ordered steps and their revision) and the status (state, current step, phase,
attempts, the correlator of the outstanding request, retry time, facts the
device reported).  No state lives in this process, so any listener can answer
any poll.

A message is first *classified* into a case; the serial's stage and the case are
looked up in the transition table, :data:`pnp_service.machine.MOVES`, which names
the handler here that works out the reply and the record, and the stages it may
lead to (checked: a move the table lacks is a ``TransitionError``, never a guess):

WORK-REQUEST (:class:`~pnp_service.machine.Poll`): an undeclared serial is recorded as unclaimed
and told to back off (while stacks or locations are declared, it is first asked
what it is: device-info for a stack's active member, its neighbours for a switch
at a declared location; a location whose declaration asks for SUDI binds it only
after it has answered a device-auth challenge with a genuine SUDI); a status of
another revision starts over at the first step; a device in error, provisioned,
or before its retry time gets a backoff (unless it says it has just reloaded:
then it is asked at once); a device whose declaration asks for SUDI
authentication and has not proven itself from this address lately gets a
device-auth challenge (or, held off after a failed proof, a backoff) and
nothing else; otherwise steps with nothing to do are skipped, the
current step checks what it can before sending anything (free space), and its
request is sent, its correlator remembered.  A device that polls again without
answering is asked what its step says (an image install goes to verify, never
installs twice).

WORK-RESPONSE (:class:`~pnp_service.machine.Answer`): always answered with a Bye.  A device-auth
answer is checked against the challenge sent under its correlator (single use):
a valid proof is recorded with its address; a failed one holds that address
off and is recorded as the last error, never as a failed attempt, so a spoofer
cannot push the genuine device into error.  A response
that carries the remembered correlator is judged by its step type; a fault, or
a response of another service, to the outstanding request counts as a failed
attempt; a stale correlator, a response when nothing is outstanding and a
backoff acknowledgement change nothing (the first two ask a caching store to
look again: another listener may have sent that request).

The step's verdict moves the status (:data:`~pnp_service.machine.VERDICTS`): advance to the next
step or to provisioned, enter a phase, retry with a growing backoff until
``max_attempts``, or fail at once.

The rule of this file: pure.  Time, the caller's address and the download URL
builder come in as arguments; no I/O, no HTTP, no store.  States and verdicts
are enums whose values are the YANG's enumerations.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import replace
from typing import Callable

from . import neighbours, protocol, sudi
from .backoff import Backoff
from .machine import VERDICTS, Answer, Poll, Stage, TransitionError, move, stage_of
from .model import (DeviceFacts, DeviceRecord, Handoff, HandoffProgress, State, Status, Step, Unclaimed, Work, format_time,
                    parse_time)
from .steps import (Outcome, RequestContext, StepRegistry, StepType, UnknownStepType, Verdict, default_registry,
                    pid_mismatch)


class Event(enum.StrEnum):
    """What one message meant: the ``event=`` of the log line."""

    UNCLAIMED = "unclaimed"
    PROBE = "probe"
    CHALLENGE = "sudi-challenge"
    PROVEN = "sudi-proven"
    REFUSED = "sudi-refused"
    REFUSED_CLAIM = "refused-claim"
    HELD_OFF = "sudi-held-off"
    STACK_MEMBER = "stack-member"
    LOCATED = "located"
    LOCATION_REFUSED = "location-refused"
    MUST_PROVE = "location-must-prove"
    NOT_PLANNED = "not-planned"
    REQUEST = "request"
    WAIT = "wait"
    ERROR_BACKOFF = "error-backoff"
    PROVISIONED_BACKOFF = "provisioned-backoff"
    PROVISIONED = "provisioned"
    HANDOFF_AGAIN = "handoff-again"
    BROKEN_WORK = "broken-work"
    ADVANCE = "advance"
    PHASE = "phase"
    RETRY = "retry"
    FAIL = "fail"
    GAVE_UP = "gave-up"
    FAULT = "fault"
    WRONG_SERVICE = "wrong-service"
    STALE = "stale"
    UNEXPECTED = "unexpected"
    BACKOFF_ACK = "backoff-ack"


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
    #: HTTPS from day 0 (``serve --trustpool``): the ``trustpool`` step put ahead of every device's work
    #: (``steps.TrustpoolStep.plan``); None: no such step.
    https_bootstrap: Step | None = None
    #: SUDI device authentication (``serve --sudi-ca``); None: declarations that ask for it are never served.
    sudi: sudi.Policy | None = None
    #: Provisioned devices are handed to hooks (``--on-provisioned``, ``--webhook``), not only to a controller.
    hooks: bool = False

    def retry_delay(self, attempts: int) -> int:
        return int(Backoff(self.retry_base_seconds, self.retry_max_seconds).delay(attempts))


@dataclasses.dataclass(frozen=True)
class Contact:
    """Who is calling and when, and how to build download URLs for them."""

    now: dt.datetime
    address: str
    #: ``download_url(kind, serial, revision, name, bind_seconds)``: the signed URL of a step's download; with
    #: ``bind_seconds``, bound to this caller's address and expiring that soon.
    download_url: Callable[[str, str, str, str, int], str] = lambda kind, serial, revision, name, bind: ""
    #: Size of a file in the listener's image folder (None: not there).
    file_size: Callable[[str], int | None] = lambda name: None
    #: The message came over HTTPS.
    secure: bool = False
    #: ``reserve_transfer(serial)``: take (or keep) one of the listener's image transfer slots; False: all are busy.
    reserve_transfer: Callable[[str], bool] = lambda serial: True


@dataclasses.dataclass(frozen=True)
class Probe:
    """One question a stranger is asked, in turn, to learn what it is."""

    name: str
    #: Asked while locations are declared (else: while stacks are).
    locates: bool
    #: The exec command (cli-exec) whose output lists the neighbours, and its parser.
    command: str = ""
    parse: Callable[[str], list[neighbours.Neighbour]] | None = None


#: The questions, in the order they are asked, one per poll; a round ends at the first answer that settles what the
#: stranger is, and starts again after ``contact_refresh_seconds``.  A member of a declared stack lists its serial in
#: device-info; a switch at a declared location names the upstream device and port in its neighbours: the topology
#: service first, and where the agent does not answer it (or lists nothing at a declared location), the CDP and then
#: the LLDP table read with cli-exec.
PROBES = (
    Probe("device-info", locates=False),
    Probe("topology", locates=True),
    Probe("cdp", locates=True, command="show cdp neighbors detail", parse=neighbours.parse_cdp_detail),
    Probe("lldp", locates=True, command="show lldp neighbors detail", parse=neighbours.parse_lldp_detail),
)
_PROBES = {probe.name: probe for probe in PROBES}
#: A stranger's question once it is found at a declared location whose declaration asks for ``authentication sudi``:
#: the proof, asked before its neighbours are believed (bound only once a genuine SUDI answers the challenge).
PROVING = "sudi"
#: Longest reason kept in a stranger's entry (the YANG's note leaf holds 512 characters).
NOTE_MAX = 500


@dataclasses.dataclass(frozen=True)
class Decision:
    """The reply to send, and what to record first (``status`` or ``unclaimed``; None: nothing).

    ``recheck``: the record may be behind the source of truth (a response this
    process did not expect); a caching store looks again and decides once more.
    """

    reply: bytes
    event: Event
    detail: str = ""
    status: Status | None = None
    unclaimed: Unclaimed | None = None
    step: str = ""
    recheck: bool = False
    #: The caller is the active member of this declared stack (recorded instead of a status).
    member_of: str = ""
    #: The caller is the switch at this declared location: bound to it, it is provisioned as its declaration.
    located_at: neighbours.Location | None = None
    #: The declared serial the status belongs to, when it is not the caller's (a stack's).
    device: str = ""
    #: The declared hostname, for the log.
    hostname: str = ""

    @property
    def changes(self) -> bool:
        return self.status is not None or self.unclaimed is not None or bool(self.member_of) or self.located_at is not None


@dataclasses.dataclass(frozen=True)
class _Poll:
    """A WORK-REQUEST being decided: the record, the message, and the status to act on."""

    record: DeviceRecord
    request: protocol.WorkRequest
    contact: Contact
    envelope: protocol.Envelope
    status: Status
    changed: bool  # whether ``status`` differs from the record's beyond what need not be written


@dataclasses.dataclass(frozen=True)
class _Answer:
    record: DeviceRecord
    response: protocol.WorkResponse | protocol.Fault
    contact: Contact
    reply: bytes
    position: int = -1
    step: Step | None = None
    step_type: StepType | None = None


class Provisioner:
    def __init__(self, settings: Settings | None = None, registry: StepRegistry | None = None):
        self.settings = settings or Settings()
        self.registry = registry or default_registry()
        bootstrap = self.settings.https_bootstrap
        self._bootstrap = (bootstrap,) if bootstrap is not None else ()


    # ================================================================== the table's interpreter

    def _apply(self, case: Poll | Answer, message: _Poll | _Answer) -> Decision:
        """Run the move :data:`~pnp_service.machine.MOVES` has for this case in the serial's stage, and check that it
        left the serial in a stage the move may lead to."""
        record = message.record
        stage = _stage(record, record.status)
        step = move(stage, case)
        decision: Decision = getattr(self, step.handler)(message)
        after = _stage(record, decision.status) if decision.status is not None else stage
        if after not in step.to:
            raise TransitionError(f"{case.name} in stage {stage} led to {after}; the table allows "
                                  f"{', '.join(sorted(step.to))}")
        return decision

    def _apply_verdict(self, status: Status, work: Work, position: int, outcome: Outcome,
                       now: dt.datetime) -> tuple[Status, Event]:
        """Apply a step's verdict through :data:`~pnp_service.machine.VERDICTS`."""
        verdict = VERDICTS[outcome.verdict]
        judged: tuple[Status, Event] = getattr(self, verdict.handler)(status, work, position, outcome, now)
        if Stage(judged[0].state.value) not in verdict.to:
            raise TransitionError(f"verdict {outcome.verdict} led to {judged[0].state}")
        return judged

    # ================================================================== WORK-REQUEST

    def effective_work(self, work: Work | None) -> Work | None:
        """The work as this listener serves it: with the HTTPS bootstrap step first when it has one."""
        if work is None or not self._bootstrap:
            return work
        return Work(work.revision, self._bootstrap + work.steps, work.steps_revision)

    def on_work_request(self, record: DeviceRecord, request: protocol.WorkRequest, contact: Contact) -> Decision:
        envelope = protocol.Envelope(request.udi, request.correlator)
        record = replace(record, work=self.effective_work(record.work))
        work = record.work
        status, changed = (record.status or Status(), False) if work is None else self._current(record, work, request, contact)
        poll = _Poll(record, request, contact, envelope, status, changed)
        return _for(record, self._apply(self._classify_poll(poll), poll))

    def _classify_poll(self, poll: _Poll) -> Poll:
        if poll.record.work is None:
            if poll.record.declaration is not None:
                return Poll.NOT_PLANNED
            if self._proving(poll.record, poll.contact.now):
                return Poll.PROVE_LOCATION
            return Poll.PROBE if self._worth_probing(poll) else Poll.UNDECLARED
        if self._claim_refused(poll):
            return Poll.REFUSED_CLAIM
        if poll.status.state == State.ERROR:
            return Poll.IN_ERROR
        if poll.status.state == State.PROVISIONED and poll.record.status is not None \
                and poll.record.status.revision != poll.status.revision:  # _current kept it provisioned
            return Poll.HANDOFF_CHANGED
        if poll.status.state == State.PROVISIONED:
            return Poll.PROVISIONED
        waiting = poll.status.retry_at is not None and poll.contact.now < poll.status.retry_at
        if waiting and not (poll.request.reloaded and poll.status.phase):  # a device back from a reload is asked at once
            return Poll.WAITING
        declaration = poll.record.declaration
        if declaration is not None and declaration.authentication == "sudi":
            policy = self.settings.sudi
            if policy is None or not policy.anchors:
                return Poll.UNPROVABLE
            if self._held_off(poll.status, poll.contact) is not None:
                return Poll.HELD_OFF
            if not self._proven(poll.status, poll.contact, policy):
                return Poll.CHALLENGE
        return Poll.DUE

    # ------------------------------------------------------------------ SUDI

    @staticmethod
    def _proven(status: Status, contact: Contact, policy: sudi.Policy) -> bool:
        return (status.sudi.proven_address == contact.address and status.sudi.proven_at is not None
                and (contact.now - status.sudi.proven_at).total_seconds() < policy.trust_seconds)

    @staticmethod
    def _held_off(status: Status, contact: Contact) -> dt.datetime | None:
        for address, until, _ in status.sudi.throttled:
            ends = parse_time(until)
            if address == contact.address and ends is not None and contact.now < ends:
                return ends
        return None

    def _poll_unprovable(self, poll: _Poll) -> Decision:
        message = "the declaration asks for SUDI authentication but this listener has no --sudi-ca: nothing is served"
        status = poll.status
        changed = status.error.code != sudi.Reason.NO_CA
        if changed:
            status = status.failed(sudi.Reason.NO_CA, message, "", poll.contact.now)
        reply = protocol.backoff(poll.envelope, "device authentication unavailable", default_minutes=self.settings.error_backoff_minutes)
        return Decision(reply, Event.REFUSED, message, status if changed or poll.changed else None)

    def _poll_held_off(self, poll: _Poll) -> Decision:
        ends = self._held_off(poll.status, poll.contact)
        wait = max(1, int((ends - poll.contact.now).total_seconds())) if ends else 60
        reply = protocol.backoff(poll.envelope, "device authentication failed from this address", seconds=wait)
        return Decision(reply, Event.HELD_OFF, f"a proof from this address failed; held off {wait}s")  # writes nothing

    def _poll_challenge(self, poll: _Poll) -> Decision:
        """Ask for the proof: a challenge bound to this serial and this address, expiring soon, single use.

        One challenge per address: an address that polls again gets the same one again (it is never refreshed, so
        a caller that never answers does not keep its place). At most CHALLENGE_ADDRESSES addresses hold one; a
        newcomer beyond them takes the place of the oldest that has had CHALLENGE_ANSWER_SECONDS to answer, never
        of a younger one (the genuine device answers in seconds), else it is told when to come back.  An unproven
        caller's poll is not the device's contact: only the challenges change in the device's status.
        """
        policy = self.settings.sudi
        assert policy is not None
        now, address = poll.contact.now, poll.contact.address
        record, work = poll.record, poll.record.work
        current = record.status is not None and work is not None and record.status.revision == work.revision
        base = record.status if current and record.status is not None else poll.status
        live = [c for c in base.sudi.challenges if (parse_time(c[3]) or now) > now]
        mine = next((c for c in live if c[1] == address), None)
        if mine is not None:  # the same challenge again, under this request's correlator
            kept = [c for c in live if c is not mine] + [(poll.request.correlator, *mine[1:])]
            status = replace(base, sudi=base.sudi.asked(tuple(kept)))
            reply = protocol.device_auth(poll.envelope, mine[2], ",".join(sudi.ENCRYPTION_METHODS),
                                         ",".join(sudi.HASH_METHODS))
            return Decision(reply, Event.CHALLENGE, "asked again for a SUDI proof", status, step=base.step)
        if len(live) >= sudi.CHALLENGE_ADDRESSES:
            def issued(c: tuple[str, str, str, str]) -> dt.datetime:
                return (parse_time(c[3]) or now) - dt.timedelta(seconds=policy.challenge_seconds)

            oldest = min(live, key=issued)
            answered_in = (now - issued(oldest)).total_seconds()
            if answered_in < sudi.CHALLENGE_ANSWER_SECONDS:
                wait = max(1, int(sudi.CHALLENGE_ANSWER_SECONDS - answered_in))
                reply = protocol.backoff(poll.envelope, "device authentication busy, try again", seconds=wait)
                return Decision(reply, Event.HELD_OFF, f"challenges are out to {len(live)} other addresses; asked "
                                f"to come back in {wait}s")
            live.remove(oldest)  # it had its time to answer
        challenge = sudi.new_challenge()
        expires = format_time(now + dt.timedelta(seconds=policy.challenge_seconds))
        status = replace(base, sudi=base.sudi.asked(tuple(live) + ((poll.request.correlator, address, challenge, expires),)))
        reply = protocol.device_auth(poll.envelope, challenge, ",".join(sudi.ENCRYPTION_METHODS), ",".join(sudi.HASH_METHODS))
        return Decision(reply, Event.CHALLENGE, "asked for a SUDI proof", status, step=base.step)

    def _proving(self, record: DeviceRecord, now: dt.datetime) -> bool:
        """Found at a declared location that asks for SUDI, in this round of questions: the proof is due."""
        known = record.unclaimed
        return (known is not None and known.probe == PROVING and bool(known.candidate) and known.probed is not None
                and (now - known.probed).total_seconds() < self.settings.contact_refresh_seconds
                and self.settings.sudi is not None)

    def _poll_prove_location(self, poll: _Poll) -> Decision:
        """Ask a stranger found at a location that asks for SUDI for its proof, before it is bound.

        One challenge per stranger, for one address, single use, expiring: the same address polling again gets the
        same one again; another address gets one only once the holder has had CHALLENGE_ANSWER_SECONDS to answer
        (the genuine switch answers in seconds), else it is told when to come back.
        """
        policy = self.settings.sudi
        known = poll.record.unclaimed
        assert policy is not None and known is not None
        now, address, request = poll.contact.now, poll.contact.address, poll.request
        entry = replace(known, udi=str(request.udi), pid=request.udi.pid, hostname=request.hostname, address=address,
                        last_seen=now, correlator=request.correlator)
        expires = known.challenge_expires
        live = bool(known.challenge) and expires is not None and expires > now
        if live and known.challenge_address != address:
            assert expires is not None
            answered_in = policy.challenge_seconds - (expires - now).total_seconds()
            if answered_in < sudi.CHALLENGE_ANSWER_SECONDS:
                wait = max(1, int(sudi.CHALLENGE_ANSWER_SECONDS - answered_in))
                reply = protocol.backoff(poll.envelope, "device authentication busy, try again", seconds=wait)
                return Decision(reply, Event.HELD_OFF, f"at {known.candidate}: a challenge is out to "
                                f"{known.challenge_address}; asked to come back in {wait}s")
            live = False  # it had its time to answer
        if not live:
            entry = replace(entry, challenge=sudi.new_challenge(), challenge_address=address,
                            challenge_expires=now + dt.timedelta(seconds=policy.challenge_seconds))
        reply = protocol.device_auth(poll.envelope, entry.challenge, ",".join(sudi.ENCRYPTION_METHODS),
                                     ",".join(sudi.HASH_METHODS))
        detail = f"at {known.candidate}: asked {'again ' if live else ''}for a SUDI proof before it is bound"
        return Decision(reply, Event.CHALLENGE, detail, unclaimed=entry)

    def _worth_probing(self, poll: _Poll) -> bool:
        """Stacks or locations are declared, and a question of :data:`PROBES` is left to ask this stranger."""
        return self._next_probe(poll.record, poll.contact.now)[0] is not None

    def _next_probe(self, record: DeviceRecord, now: dt.datetime) -> tuple[Probe | None, bool]:
        """The question to ask next, and whether it begins a new round."""
        asked = [probe for probe in PROBES if (record.locations if probe.locates else record.stacks)]
        if not asked:
            return None, False
        known = record.unclaimed
        if known is None or known.probed is None \
                or (now - known.probed).total_seconds() >= self.settings.contact_refresh_seconds:
            return asked[0], True
        names = [probe.name for probe in asked]
        last = known.probe or ("device-info" if known.correlator else "")  # an older version asked only that
        if last not in names:
            return None, False  # the round ended
        following = names.index(last) + 1  # answered or not: a question polled past goes unanswered
        return (asked[following], False) if following < len(asked) else (None, False)

    def _current(self, record: DeviceRecord, work: Work, request: protocol.WorkRequest, contact: Contact) -> tuple[Status, bool]:
        """The status to act on, and whether it must be written even if nothing else changes.

        A status of another revision (or none) starts over at the first step.  The
        contact (time, address, UDI) is recorded; a contact within
        ``contact_refresh_seconds`` that changes nothing else is not worth a write.
        """
        status = record.status
        reloaded = contact.now if request.reloaded else None
        if status is not None and status.revision != work.revision and status.state == State.PROVISIONED \
                and status.steps_revision and status.steps_revision == work.steps_revision:
            # Only the hand-off changed: the device keeps what it has and is handed off again.
            moved = _provisioned(replace(status, revision=work.revision), contact.now, self._hands_off(record))
            return _contacted(moved, contact, request), True
        if status is None or status.revision != work.revision:
            # What the device reported is still true of it; what it went through for older work is not.
            fresh = Status(
                state=State.ONBOARDING, revision=work.revision, steps_revision=work.steps_revision,
                step=work.steps[0].id if work.steps else "",
                started=contact.now, reloaded=reloaded, secure=contact.secure,
                facts=status.facts if status is not None else DeviceFacts(),
            )
            return _contacted(fresh, contact, request), True
        if reloaded is not None:
            status = replace(status, reloaded=reloaded)
        if work.steps_revision and status.steps_revision != work.steps_revision:
            # Recorded by an older version (or before the work had it): written once, at this poll.
            return _contacted(replace(status, steps_revision=work.steps_revision), contact, request), True
        recent = (
            status.last_contact is not None
            and (contact.now - status.last_contact).total_seconds() < self.settings.contact_refresh_seconds
        )
        same = status.address == contact.address and status.facts.udi == str(request.udi) and status.secure == contact.secure
        if recent and same and reloaded is None:
            return status, False
        return _contacted(replace(status, secure=contact.secure), contact, request), True

    def _backoff(self, poll: _Poll, event: Event, reason: str, detail: str, *,
                 seconds: int | None = None, default_minutes: int | None = None) -> Decision:
        status = poll.status if poll.changed else None
        reply = protocol.backoff(poll.envelope, reason, seconds=seconds, default_minutes=default_minutes)
        return Decision(reply, event, detail, status, step=poll.status.step)

    def _poll_undeclared(self, poll: _Poll) -> Decision:
        record, request, contact = poll.record, poll.request, poll.contact
        known = record.unclaimed
        entry = Unclaimed(
            serial=record.serial,
            udi=str(request.udi),
            pid=request.udi.pid,
            hostname=request.hostname,
            address=contact.address,
            first_seen=known.first_seen if known and known.first_seen else contact.now,
            last_seen=contact.now,
            # What the questions found stays: the round is not asked again before its time, the refusal shows.
            probed=known.probed if known else None,
            probe=known.probe if known else "",
            note=known.note if known else "",
        )
        unchanged = known is not None and replace(known, last_seen=None) == replace(entry, last_seen=None)
        recent = (
            unchanged
            and known is not None
            and known.last_seen is not None
            and (contact.now - known.last_seen).total_seconds() < self.settings.contact_refresh_seconds
        )
        reply = protocol.backoff(poll.envelope, "device not declared", seconds=self.settings.unclaimed_backoff_seconds)
        detail = f"undeclared {request.udi.pid or 'device'}" + (" (first call)" if known is None else "")
        return Decision(reply, Event.UNCLAIMED, detail, unclaimed=None if recent else entry)

    def _poll_probe(self, poll: _Poll) -> Decision:
        """A stranger while stacks or locations are declared: the next question of :data:`PROBES`."""
        record, request, contact = poll.record, poll.request, poll.contact
        known = record.unclaimed
        probe, new_round = self._next_probe(record, contact.now)
        assert probe is not None
        entry = Unclaimed(
            serial=record.serial, udi=str(request.udi), pid=request.udi.pid, hostname=request.hostname,
            address=contact.address, first_seen=known.first_seen if known and known.first_seen else contact.now,
            last_seen=contact.now, correlator=request.correlator,
            probed=contact.now if new_round or known is None else known.probed, probe=probe.name,
            note="" if new_round or known is None else known.note,
        )
        if probe.command:
            reply, detail = protocol.cli_exec(poll.envelope, probe.command), f"asked for `{probe.command}`"
        elif probe.locates:
            reply, detail = protocol.topology(poll.envelope), "asked for its neighbours (topology)"
        else:
            reply, detail = protocol.device_info(poll.envelope, "all"), "asked for device-info"
        purpose = "where it is plugged in" if probe.locates else "whether it is a declared stack's member"
        return Decision(reply, Event.PROBE, f"undeclared: {detail}, to learn {purpose}", unclaimed=entry)

    def _poll_not_planned(self, poll: _Poll) -> Decision:
        why = poll.record.planning_error or "declared, but no work is planned for it"
        return Decision(
            protocol.backoff(poll.envelope, "work not planned yet", seconds=self.settings.unplanned_backoff_seconds),
            Event.NOT_PLANNED,
            why,
        )

    def _claim_refused(self, poll: _Poll) -> bool:
        """The caller claims the declared serial with another PID and has proved nothing (SUDI): not this device."""
        declaration, record = poll.record.declaration, poll.record
        if declaration is None or not declaration.pid or (record.caller and record.caller != record.serial):
            return False  # a stack's member reports its own PID
        pid = poll.request.udi.pid
        if pid == declaration.pid:
            return False  # (a UDI without a PID is no better a claim than one with another)
        policy = self.settings.sudi
        return not (policy is not None and record.status is not None
                    and self._proven(record.status, poll.contact, policy))

    def _poll_refused_claim(self, poll: _Poll) -> Decision:
        """Record the refused claim where the operator sees it (not more than once per contact_refresh_seconds),
        back the caller off, and leave the genuine device's progress and contact alone."""
        declaration, contact = poll.record.declaration, poll.contact
        assert declaration is not None
        message = f"refused a claim from {contact.address}: " + pid_mismatch(declaration.pid, poll.request.udi.pid)
        status = self._refused_claim(poll.record, "pid-mismatch", message, contact.now)
        reply = protocol.backoff(poll.envelope, "not the declared device", default_minutes=self.settings.error_backoff_minutes)
        return Decision(reply, Event.REFUSED_CLAIM, message, status)

    def _refused_claim(self, record: DeviceRecord, code: str, message: str, now: dt.datetime) -> Status | None:
        """The record's status with the refused claim as its last error; None when it says so already, lately."""
        status = record.status or Status(revision="")
        recent = status.error.time is not None and (now - status.error.time).total_seconds() < self.settings.contact_refresh_seconds
        if status.error.code == code and status.error.message == message and recent:
            return None
        return status.failed(code, message, "", now)

    def _poll_in_error(self, poll: _Poll) -> Decision:
        status = poll.status
        return self._backoff(poll, Event.ERROR_BACKOFF, "provisioning failed; see status",
                             f"in error ({status.error.code}: {status.error.message})",
                             default_minutes=self.settings.error_backoff_minutes)

    def _poll_provisioned(self, poll: _Poll) -> Decision:
        return self._backoff(poll, Event.PROVISIONED_BACKOFF, "provisioned", "already provisioned",
                             default_minutes=self.settings.provisioned_backoff_minutes)

    def _poll_handoff_changed(self, poll: _Poll) -> Decision:
        handed = " handed off again" if poll.status.handoff.state == Handoff.PENDING else ""
        return Decision(
            protocol.backoff(poll.envelope, "provisioned", default_minutes=self.settings.provisioned_backoff_minutes),
            Event.HANDOFF_AGAIN, f"new work differs only in the hand-off: kept provisioned,{handed or ' nothing to do'}",
            poll.status,
        )

    def _poll_waiting(self, poll: _Poll) -> Decision:
        status, work = poll.status, poll.record.work
        assert status.retry_at is not None and work is not None
        wait = max(1, int((status.retry_at - poll.contact.now).total_seconds()))
        position = work.index(status.step)
        reason = f"retrying {status.step} after a failure"
        if position is not None:
            step = work.steps[position]
            try:
                reason = self.registry.get(step.type).wait_reason(step, status.phase)
            except UnknownStepType:
                pass
        return self._backoff(poll, Event.WAIT, reason, f"{reason}, {wait}s left", seconds=wait)

    def _poll_due(self, poll: _Poll) -> Decision:
        """Skip the steps with nothing to do, then send the current step's request (or finish)."""
        work, contact = poll.record.work, poll.contact
        assert work is not None
        status = poll.status
        position = work.index(status.step)
        if position is None:  # a step id the work no longer has: from the first step
            position, status = 0, replace(status, step=work.steps[0].id if work.steps else "", phase="", attempts=0)
        while position < len(work.steps):
            step = work.steps[position]
            try:
                step_type = self.registry.get(step.type)
            except UnknownStepType as exc:
                failed = _error(status, "unknown-step-type", str(exc), step.id, contact.now)
                return Decision(
                    protocol.backoff(poll.envelope, "provisioning failed; see status", default_minutes=self.settings.error_backoff_minutes),
                    Event.BROKEN_WORK, str(exc), failed, step=step.id,
                )
            if status.correlator and status.step == step.id:
                # Polled again without answering the last request: the step says where to go on.
                moved = step_type.unanswered(step, status, poll.request.reloaded)
                if moved is not None and moved != status.phase:
                    status = replace(status, phase=moved, phase_since=contact.now, retry_at=None)
                elif moved is None:  # asked again: a bounded number of times
                    status = replace(status, attempts=status.attempts + 1)
                    if status.attempts >= self.settings.max_attempts:
                        service = step_type.service(step, status)
                        message = (f"the device polled {status.attempts} times without answering its {service} "
                                   "request (gave up)")
                        return Decision(
                            protocol.backoff(poll.envelope, "provisioning failed; see status",
                                             default_minutes=self.settings.error_backoff_minutes),
                            Event.GAVE_UP, message, _error(status, "no-answer", message, step.id, contact.now),
                            step=step.id,
                        )
            if not step_type.is_done(step, status):
                return self._prechecked(poll, status, step, step_type)
            position += 1
            next_id = work.steps[position].id if position < len(work.steps) else ""
            status = replace(status, step=next_id, phase="", attempts=0)
        done = _provisioned(status, contact.now, self._hands_off(poll.record))
        return Decision(
            protocol.backoff(poll.envelope, "provisioned", default_minutes=self.settings.provisioned_backoff_minutes),
            Event.PROVISIONED, "nothing left to do", done,
        )

    def _context(self, poll: _Poll) -> RequestContext:
        record, request, contact = poll.record, poll.request, poll.contact
        assert record.work is not None
        envelope = poll.envelope
        declaration = record.declaration
        if request.auth_required and declaration is not None and declaration.username:
            envelope = replace(envelope, username=declaration.username, password=declaration.password)
        revision = record.work.revision

        # After a SUDI proof, what is handed out is bound to the address that proved and expires soon.
        bind = self.settings.sudi.download_seconds if declaration is not None and declaration.authentication == "sudi" \
            and self.settings.sudi else 0

        def download_url(kind: str, name: str) -> str:
            return contact.download_url(kind, record.serial, revision, name, bind)

        return RequestContext(envelope, record.serial, revision, download_url, contact.file_size,
                              lambda: contact.reserve_transfer(record.serial))

    def _prechecked(self, poll: _Poll, status: Status, step: Step, step_type: StepType) -> Decision:
        """What the step checks before sending (it may change phase, or fail before anything is sent)."""
        context = self._context(poll)
        for _ in range(4):  # a phase change is followed by that phase's own check
            outcome = step_type.precheck(step, status, context)
            if outcome is None:
                break
            work = poll.record.work
            assert work is not None
            status, event = self._apply_verdict(status, work, work.index(step.id) or 0, outcome, poll.contact.now)
            if outcome.verdict != Verdict.PHASE or status.retry_at is not None:
                reply = protocol.backoff(poll.envelope, "provisioning failed; see status",
                                         default_minutes=self.settings.error_backoff_minutes) \
                    if status.state == State.ERROR else protocol.backoff(poll.envelope, step_type.wait_reason(step, status.phase),
                                                                         seconds=outcome.wait_seconds or self.settings.retry_base_seconds)
                return Decision(reply, event, f"{outcome.code}: {outcome.message}" if outcome.code else outcome.phase,
                                status, step=step.id)
        return self._send(poll, status, step, step_type, context)

    def _send(self, poll: _Poll, status: Status, step: Step, step_type: StepType, context: RequestContext) -> Decision:
        request, contact = poll.request, poll.contact
        reply = step_type.request(step, status, context)
        sent = _contacted(replace(status, state=State.ONBOARDING, step=step.id, correlator=request.correlator,
                                  retry_at=None), contact, request)
        service = step_type.service(step, status)
        phase = f" ({status.phase})" if status.phase else ""
        what = step_type.describe(step, status)
        return Decision(reply, Event.REQUEST, f"sent {service} request{phase}" + (f": {what}" if what else ""), sent,
                        step=step.id)

    # ================================================================== WORK-RESPONSE

    def on_work_response(
        self, record: DeviceRecord, response: protocol.WorkResponse | protocol.Fault, contact: Contact
    ) -> Decision:
        correlator = "" if isinstance(response, protocol.Fault) else response.correlator
        record = replace(record, work=self.effective_work(record.work))
        answer = _Answer(record, response, contact, protocol.bye(protocol.Envelope(response.udi, correlator)))
        case, answer = self._classify_response(answer)
        return _for(record, self._apply(case, answer))

    def _classify_response(self, answer: _Answer) -> tuple[Answer, _Answer]:
        response, status, work = answer.response, answer.record.status, answer.record.work
        if isinstance(response, protocol.WorkResponse) and response.service == "backoff":
            return Answer.BACKOFF_ACK, answer
        if work is None and self._is_location_proof(answer):
            return Answer.LOCATION_PROOF, answer
        if isinstance(response, protocol.WorkResponse) and response.service == "device-auth":
            return Answer.PROOF, answer
        if work is None and self._is_probe_answer(answer):
            return Answer.PROBE_ANSWER, answer
        if (work is None or status is None or not status.correlator or status.revision != work.revision
                or status.state != State.ONBOARDING):
            return Answer.NOTHING_OUTSTANDING, answer
        position = work.index(status.step)
        if position is None:
            return Answer.NOTHING_OUTSTANDING, answer
        step = work.steps[position]
        try:
            step_type = self.registry.get(step.type)
        except UnknownStepType:
            return Answer.NOTHING_OUTSTANDING, answer
        answer = replace(answer, position=position, step=step, step_type=step_type)
        if self._not_the_requester(answer):
            return Answer.NOT_REQUESTER, answer
        if self._claims_another_pid(answer):
            return Answer.ANOTHER_PID, answer
        if isinstance(response, protocol.Fault):
            return Answer.FAULT, answer
        if response.correlator != status.correlator:
            return Answer.STALE, answer
        if response.service != step_type.service(step, status):
            return Answer.WRONG_SERVICE, answer
        return Answer.ANSWER, answer

    @staticmethod
    def _is_probe_answer(answer: _Answer) -> bool:
        """A stranger's answer to the question outstanding: by its correlator and service, or a fault (which carries
        no correlator) from the address the question went to."""
        probed, response = answer.record.unclaimed, answer.response
        if probed is None or not probed.correlator:
            return False
        if isinstance(response, protocol.Fault):
            return probed.probe in _PROBES and answer.contact.address == probed.address
        probe = _PROBES.get(probed.probe or "device-info")
        service = "cli-exec" if probe is not None and probe.command else probed.probe or "device-info"
        return probe is not None and response.correlator == probed.correlator and response.service == service

    @staticmethod
    def _is_location_proof(answer: _Answer) -> bool:
        """A stranger asked for the proof its location wants: its device-auth answer, or a fault (no correlator)
        from the address the challenge went to."""
        known, response = answer.record.unclaimed, answer.response
        if known is None or known.probe != PROVING or not known.challenge:
            return False
        if isinstance(response, protocol.Fault):
            return answer.contact.address == known.challenge_address
        return response.service == "device-auth"

    def _not_the_requester(self, answer: _Answer) -> bool:
        """An answer (a fault above all: it carries no correlator) from another address than the one the outstanding
        request went to (the proven one, for SUDI): someone else's, ignored; the requester may still answer."""
        status, declaration, contact = answer.record.status, answer.record.declaration, answer.contact
        assert status is not None
        sudi_declared = declaration is not None and declaration.authentication == "sudi"
        requester = status.sudi.proven_address if sudi_declared else status.address
        return bool(requester) and contact.address != requester

    def _claims_another_pid(self, answer: _Answer) -> bool:
        """The requester answers as another product than the declared one (its poll said otherwise)."""
        declaration, record = answer.record.declaration, answer.record
        caller_is_device = not record.caller or record.caller == record.serial
        pid = answer.response.udi.pid
        return bool(declaration is not None and declaration.pid and caller_is_device and pid != declaration.pid)

    def _answer_not_requester(self, answer: _Answer) -> Decision:
        what = "fault" if isinstance(answer.response, protocol.Fault) else f"{answer.response.service} response"
        return self._ignore(answer, Event.STALE, f"{what} from {answer.contact.address}, not the address the request "
                            "went to: ignored")

    def _answer_another_pid(self, answer: _Answer) -> Decision:
        """A refused claim: its request is withdrawn, nothing counted (the declaration stays for the real switch)."""
        declaration = answer.record.declaration
        assert declaration is not None
        message = f"refused an answer from {answer.contact.address}: " + pid_mismatch(declaration.pid,
                                                                                     answer.response.udi.pid)
        return self._judge(answer, Event.REFUSED_CLAIM, Outcome(Verdict.REFUSE, code="pid-mismatch", message=message))

    def _ignore(self, answer: _Answer, event: Event, detail: str, recheck: bool = False) -> Decision:
        return Decision(answer.reply, event, detail, recheck=recheck)

    def _answer_backoff_ack(self, answer: _Answer) -> Decision:
        return self._ignore(answer, Event.BACKOFF_ACK, "")

    def _answer_proof(self, answer: _Answer) -> Decision:
        """Check a device-auth answer against the challenge sent under its correlator; a failure holds the address off."""
        response, record, contact = answer.response, answer.record, answer.contact
        assert isinstance(response, protocol.WorkResponse)
        status, declaration, policy = record.status, record.declaration, self.settings.sudi
        # The challenge sent under this correlator; else the one this address holds (asked again, it got the same).
        sent = next((c for c in status.sudi.challenges if c[0] == response.correlator), None) if status else None
        if sent is None and status is not None:
            sent = next((c for c in status.sudi.challenges if c[1] == contact.address), None)
        if status is None or declaration is None or sent is None:
            return self._ignore(answer, Event.STALE, "device-auth answer to no challenge of ours (old, or used)", recheck=True)
        # Single use, but only the address it was sent to can use it up: an answer from elsewhere is refused and
        # leaves it for the device it was sent to.
        remaining = tuple(c for c in status.sudi.challenges if c is not sent or c[1] != contact.address)
        try:
            proven = _checked_proof(response, contact, sent[1], sent[2], parse_time(sent[3]), policy,
                                    declaration.sudi_allowed, declaration.pid)
        except sudi.SudiError as exc:
            failures = next((f for a, _, f in status.sudi.throttled if a == contact.address), 0) + 1
            # Growing, but never longer than a challenge lives: behind NAT the genuine switch shares this address.
            hold = (policy or sudi.Policy()).hold_off_seconds(failures)
            until = format_time(contact.now + dt.timedelta(seconds=hold))
            refused = replace(status, sudi=status.sudi.refused(remaining, contact.address, until, failures)).failed(
                exc.reason, f"SUDI proof from {contact.address} refused: {exc}", "", contact.now)
            return Decision(answer.reply, Event.REFUSED, f"{exc.reason}: {exc} (held off {hold}s)", refused)
        accepted = replace(status, sudi=status.sudi.proven(remaining, contact.address, contact.now))
        if accepted.error.code.startswith("sudi-"):
            accepted = accepted.without_error()
        return Decision(answer.reply, Event.PROVEN, f"SUDI proof of {proven.serial} ({proven.pid}) accepted", accepted)

    def _answer_location_proof(self, answer: _Answer) -> Decision:
        """Check a stranger's proof; a genuine SUDI binds it to the location it was found at, anything else ends the
        round (asked again after ``contact_refresh_seconds``), the reason in its entry."""
        record, contact, response = answer.record, answer.contact, answer.response
        known = record.unclaimed
        assert known is not None
        if contact.address != known.challenge_address:  # leaves the challenge for the address it was sent to
            return self._ignore(answer, Event.STALE, f"device-auth answer from {contact.address}; the challenge went "
                                f"to {known.challenge_address}: ignored")
        ended = replace(known, probe="", correlator="", challenge="", challenge_address="", challenge_expires=None,
                        last_seen=contact.now)
        declared = next((d for at, d in record.location_declarations.items() if str(at) == known.candidate), None)
        if declared is None:
            return Decision(answer.reply, Event.UNCLAIMED, f"{known.candidate} is no longer declared",
                            unclaimed=replace(ended, candidate=""))
        at, declaration = declared.location, declared.for_serial(record.serial)
        try:
            if isinstance(response, protocol.Fault):
                raise sudi.SudiError(sudi.Reason.NO_SUDI, f"the agent answered with a fault ({response.string or response.code})")
            proven = _checked_proof(response, contact, known.challenge_address, known.challenge,
                                    known.challenge_expires, self.settings.sudi, declaration.sudi_allowed, declaration.pid)
        except sudi.SudiError as exc:
            note = (f"at {at}: SUDI proof from {contact.address} refused ({exc.reason}: {exc}); not bound, asked "
                    f"again in {self.settings.contact_refresh_seconds}s")
            return Decision(answer.reply, Event.REFUSED, note, unclaimed=replace(ended, note=note[:NOTE_MAX]))
        bound = record.locations.get(at, "")
        if bound and bound != record.serial:
            return _not_bound(answer.reply, ended, _held_by(at, bound))
        return Decision(answer.reply, Event.LOCATED, f"at {at}: SUDI proof of {proven.serial} ({proven.pid}) accepted; "
                        "provisioned as that location's declaration", located_at=at)

    def _answer_probe(self, answer: _Answer) -> Decision:
        """A stranger's answer to a question of :data:`PROBES`: a declared stack's member, a switch at a declared
        location, or neither (the next question at its next poll)."""
        response, record = answer.response, answer.record
        assert record.unclaimed is not None
        probe = _PROBES[record.unclaimed.probe or "device-info"]
        answered = replace(record.unclaimed, correlator="", last_seen=answer.contact.now)
        if isinstance(response, protocol.Fault) or not response.success:
            why = response.string if isinstance(response, protocol.Fault) else (response.error.message if response.error else "")
            return Decision(answer.reply, Event.UNCLAIMED, f"{probe.name} not answered ({why or 'an error'})",
                            unclaimed=answered)
        if probe.locates:
            found = list(response.neighbours) if probe.parse is None else probe.parse(response.details.get("output", ""))
            return self._locate(answer, probe, found, answered)
        info = response.device or protocol.DeviceInfo()
        for member in info.members:
            stack = record.stacks.get(member.udi.serial)
            if stack:
                return Decision(answer.reply, Event.STACK_MEMBER,
                                f"active member of declared stack {stack} (slot {member.slot} is {member.udi.serial})",
                                member_of=stack)
        return Decision(answer.reply, Event.UNCLAIMED, "not a member of a declared stack", unclaimed=answered)

    def _locate(self, answer: _Answer, probe: Probe, found: list[neighbours.Neighbour], answered: Unclaimed) -> Decision:
        """Bind the stranger to the one declared location its neighbours put it at, unless that location is another
        serial's (sticky: the operator resets that one) or two match (refused with both named)."""
        record = answer.record
        at = neighbours.matches(found, record.locations)
        if not at:
            seen = ", ".join(sorted({str(n.location) for n in found})[:4]) or "none"
            return Decision(answer.reply, Event.UNCLAIMED, f"{probe.name}: no neighbour at a declared location "
                            f"(neighbours: {seen})", unclaimed=answered)
        if len(at) > 1:
            return _not_bound(answer.reply, answered, f"matches {len(at)} declared locations "
                              f"({', '.join(map(str, at[:2]))}): refused, declare one")
        bound = record.locations[at[0]]
        if bound and bound != record.serial:
            return _not_bound(answer.reply, answered, _held_by(at[0], bound))
        declared = record.location_declarations.get(at[0])
        if declared is not None and declared.declaration.authentication == "sudi" and bound != record.serial:
            policy = self.settings.sudi
            if policy is None or not policy.anchors:
                return _not_bound(answer.reply, answered, f"at {at[0]}, whose declaration asks for authentication "
                                  "sudi, but this listener has no --sudi-ca: nothing is bound")
            note = f"at {at[0]} ({probe.name}): bound once it proves a genuine SUDI"
            return Decision(answer.reply, Event.MUST_PROVE, note,
                            unclaimed=replace(answered, probe=PROVING, candidate=str(at[0]), note=note))
        return Decision(answer.reply, Event.LOCATED, f"at {at[0]} ({probe.name}): provisioned as that location's "
                        "declaration", located_at=at[0])

    def _answer_nothing_outstanding(self, answer: _Answer) -> Decision:
        service = answer.response.service if isinstance(answer.response, protocol.WorkResponse) else "fault"
        return self._ignore(answer, Event.UNEXPECTED, f"{service} response, but no request is outstanding", recheck=True)

    def _answer_stale(self, answer: _Answer) -> Decision:
        response = answer.response
        assert isinstance(response, protocol.WorkResponse)
        return self._ignore(answer, Event.STALE, f"{response.service} response with stale correlator {response.correlator}",
                            recheck=True)

    def _answer_fault(self, answer: _Answer) -> Decision:
        fault = answer.response
        assert isinstance(fault, protocol.Fault)
        text = fault.string or fault.detail or "the agent could not process the request"
        return self._judge(answer, Event.FAULT, _failed_attempt(f"agent fault {fault.code}".strip(), text))

    def _answer_wrong_service(self, answer: _Answer) -> Decision:
        response, step, step_type = answer.response, answer.step, answer.step_type
        assert isinstance(response, protocol.WorkResponse) and step is not None and step_type is not None
        expected = step_type.service(step, answer.record.status or Status())
        outcome = _failed_attempt("wrong-service", f"the agent answered a {expected} request with a {response.service} response")
        return self._judge(answer, Event.WRONG_SERVICE, outcome)

    def _answer(self, answer: _Answer) -> Decision:
        response, step, step_type, status = answer.response, answer.step, answer.step_type, answer.record.status
        assert isinstance(response, protocol.WorkResponse) and step is not None and step_type is not None and status
        outcome = step_type.on_response(step, replace(status, last_contact=answer.contact.now), response)
        return self._judge(answer, None, outcome)

    def _hands_off(self, record: DeviceRecord) -> bool:
        """Whether a provisioned device is handed on: to its controller, or to the hooks."""
        return self.settings.hooks or (record.declaration is not None and record.declaration.handoff is not None)

    def _judge(self, answer: _Answer, event: Event | None, outcome: Outcome) -> Decision:
        """Apply a step's verdict on an answer to the status (:meth:`_apply_verdict`) and say what it did."""
        status, work, step = answer.record.status, answer.record.work, answer.step
        assert status is not None and work is not None and step is not None
        if outcome.verdict == Verdict.REFUSE:  # not the declared device: its contact is not the device's
            base = replace(status, correlator="")
        else:
            base = replace(status, correlator="", last_contact=answer.contact.now, address=answer.contact.address,
                           facts=status.facts.reported(outcome.facts))
        updated, verdict_event = self._apply_verdict(base, work, answer.position, outcome, answer.contact.now)
        if updated.state == State.PROVISIONED and self._hands_off(answer.record):
            updated = _provisioned(updated, answer.contact.now, handoff=True)
        reported = f"{outcome.code}: {outcome.message}" if outcome.code or outcome.message else "ok"
        detail = f"{reported} -> {updated.state}"
        if updated.state == State.PROVISIONED and updated.started is not None:
            detail += f" in {int((answer.contact.now - updated.started).total_seconds())} s"
        return Decision(answer.reply, event or verdict_event, detail, updated, step=step.id)

    # ------------------------------------------------------------------ verdicts

    def _advance(self, status: Status, work: Work, position: int, outcome: Outcome, now: dt.datetime) -> tuple[Status, Event]:
        cleared = replace(status, phase="", attempts=0, retry_at=None, phase_since=None, deadline=None,
                          reloaded=None).without_error()
        if position + 1 < len(work.steps):
            return replace(cleared, step=work.steps[position + 1].id), Event.ADVANCE
        return _provisioned(cleared, now), Event.PROVISIONED

    def _phase(self, status: Status, work: Work, position: int, outcome: Outcome, now: dt.datetime) -> tuple[Status, Event]:
        wait = dt.timedelta(seconds=outcome.wait_seconds) if outcome.wait_seconds else None
        same = outcome.phase == status.phase
        deadline = (now + dt.timedelta(seconds=outcome.deadline_seconds) if outcome.deadline_seconds
                    else status.deadline if same else None)
        # ``reloaded`` is what the device said in this phase: a new phase has not heard it.
        return replace(status, phase=outcome.phase, retry_at=now + wait if wait else None,
                       phase_since=status.phase_since if same else now, deadline=deadline,
                       reloaded=status.reloaded if same else None), Event.PHASE

    def _fail(self, status: Status, work: Work, position: int, outcome: Outcome, now: dt.datetime) -> tuple[Status, Event]:
        return _error(status, outcome.code, outcome.message, work.steps[position].id, now), Event.FAIL

    def _refuse(self, status: Status, work: Work, position: int, outcome: Outcome, now: dt.datetime) -> tuple[Status, Event]:
        """Not the declared device: its answer is recorded as a refused claim; attempts and state are untouched."""
        return status.failed(outcome.code, outcome.message, "", now), Event.REFUSED_CLAIM

    def _retry(self, status: Status, work: Work, position: int, outcome: Outcome, now: dt.datetime) -> tuple[Status, Event]:
        step_id = work.steps[position].id
        attempts = status.attempts + 1
        if attempts >= self.settings.max_attempts:
            message = f"{outcome.message} (gave up after {attempts} attempts)"
            return replace(_error(status, outcome.code, message, step_id, now), attempts=attempts), Event.GAVE_UP
        delay = dt.timedelta(seconds=self.settings.retry_delay(attempts))
        retrying = replace(
            status, attempts=attempts, phase=outcome.phase, retry_at=now + delay, phase_since=now, deadline=None,
            reloaded=None,
        ).failed(outcome.code, outcome.message, step_id, now)
        return retrying, Event.RETRY


def _stage(record: DeviceRecord, status: Status | None) -> Stage:
    work = record.work
    return stage_of(work.revision if work is not None else None, record.declaration is not None,
                    status.state if status is not None else None, status.revision if status is not None else "")


def _for(record: DeviceRecord, decision: Decision) -> Decision:
    """Say whose record the decision was taken on (a stack's, when a member called) and its declared hostname."""
    if record.declaration is not None and record.declaration.hostname:
        decision = replace(decision, hostname=record.declaration.hostname)
    return replace(decision, device=record.serial) if record.caller and record.caller != record.serial else decision


def _not_bound(reply: bytes, entry: Unclaimed, note: str) -> Decision:
    """A stranger at a declared location that is not bound to it: the round ends, the reason kept in its entry."""
    return Decision(reply, Event.LOCATION_REFUSED, note, unclaimed=replace(entry, probe="", note=note[:NOTE_MAX]))


def _held_by(at: neighbours.Location, serial: str) -> str:
    return f"at {at}, whose declaration is bound to {serial}: reset {serial} to free the location"


def _checked_proof(response: protocol.WorkResponse, contact: Contact, sent_to: str, challenge: str,
                   expires: dt.datetime | None, policy: sudi.Policy | None, serials: tuple[str, ...],
                   pid: str) -> sudi.Proven:
    """Who a device-auth answer to ``challenge`` proves; raises :class:`sudi.SudiError` with the reason."""
    if sent_to != contact.address:
        raise sudi.SudiError(sudi.Reason.STALE, f"the challenge was sent to {sent_to}, the answer came from {contact.address}")
    if expires is None or contact.now > expires:
        raise sudi.SudiError(sudi.Reason.STALE, "the challenge has expired")
    if not response.success or response.auth is None:
        error = response.error or protocol.ErrorInfo()
        raise sudi.SudiError(sudi.Reason.NO_SUDI, f"the device sent no proof ({error.code or 'no code'}: "
                             f"{error.message or 'no SUDI'})")
    proof = response.auth
    return sudi.verify(anchors=policy.anchors if policy else (), certificate_b64=proof.sudi_cert,
                       signature_b64=proof.challenge_response, challenge=challenge, encryption=proof.encryption,
                       hashing=proof.hashing, serials=serials, pid=pid, now=contact.now)


def _failed_attempt(code: str, message: str) -> Outcome:
    return Outcome(Verdict.RETRY, code=code, message=message)


def _provisioned(status: Status, now: dt.datetime, handoff: bool = False) -> Status:
    done = replace(status, state=State.PROVISIONED, step="", phase="", correlator="", attempts=0, retry_at=None,
                   last_contact=now)
    if handoff and status.handoff.revision != status.revision:  # once per device and revision
        done = replace(done, handoff=HandoffProgress.pending(status.revision, now))
    return done


def _error(status: Status, code: str, message: str, step_id: str, now: dt.datetime) -> Status:
    return replace(status, state=State.ERROR, correlator="", retry_at=None).failed(code, message, step_id, now)


def _contacted(status: Status, contact: Contact, request: protocol.WorkRequest) -> Status:
    """The status with this poll as the device's last contact (time, address, the UDI it gave)."""
    return replace(status, last_contact=contact.now, address=contact.address,
                   facts=replace(status.facts, udi=str(request.udi)))
