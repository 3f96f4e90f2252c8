"""A device's state graph as data: every move the provisioner makes, in one table a test walks and a script draws.

Theory of operation (after h11's ``_state.py``)
-----------------------------------------------
Where a serial stands is its :class:`Stage`: a caller nobody declared (``unknown``), a declaration with no work
(``unplanned``: its template does not render), or one of the YANG's device states for the current work
(``planned``: no status of this revision yet; ``onboarding``; ``provisioned``; ``error``).  Each agent message is
first classified into a case (:class:`Poll` for a WORK-REQUEST, :class:`Answer` for a WORK-RESPONSE); the pair
(stage, case) is looked up in :data:`MOVES`, which says which provisioner handler works out the details, which
kinds of reply it may send, and which stages the serial may stand in afterwards.  The provisioner refuses a move the
table does not have, and checks the stage it ends in (``TransitionError``): a new case or a new state is a line
here, visible to the test that walks this table (tests/test_machine.py) and to the diagram in docs/protocol.md,
which ``tools/state_diagram.py`` draws from it.

A step's own phases (an image install goes through cleanup, copy, verify...) are each step type's graph, declared
as data beside it (``steps.ImageInstallStep.PHASES``); this table sees them only as "onboarding".  When a response
answers the outstanding request, the step's :class:`~pnp_service.steps.Verdict` moves the device as
:data:`VERDICTS` says.

The rule of this file: data only.  It names the provisioner's handlers by name and imports nothing that acts.
"""

from __future__ import annotations

import dataclasses
import enum

from .model import State
from .steps import Verdict


class Stage(enum.StrEnum):
    """Where a serial stands: a stranger, a declaration without work, or the YANG's state for the current work."""

    UNKNOWN = "unknown"
    UNPLANNED = "unplanned"
    PLANNED = State.PLANNED.value
    ONBOARDING = State.ONBOARDING.value
    PROVISIONED = State.PROVISIONED.value
    ERROR = State.ERROR.value


class Poll(enum.Enum):
    """The cases of a WORK-REQUEST, in the order the provisioner tests them."""

    UNDECLARED = "nobody declared it"
    PROVE_LOCATION = "found at a declared location that asks for SUDI: prove it first"
    PROBE = "undeclared while stacks or locations are: what is it?"
    NOT_PLANNED = "declared, its template does not render"
    REFUSED_CLAIM = "another PID, nothing proven"
    IN_ERROR = "in error"
    HANDOFF_CHANGED = "provisioned; only its hand-off changed since"
    PROVISIONED = "provisioned"
    WAITING = "before its retry time"
    UNPROVABLE = "SUDI asked, no CA"
    HELD_OFF = "a proof from this address failed lately"
    CHALLENGE = "SUDI asked, not proven from here"
    DUE = "its step is due"


class Answer(enum.Enum):
    """The cases of a WORK-RESPONSE, in the order the provisioner tests them."""

    BACKOFF_ACK = "a backoff acknowledged"
    LOCATION_PROOF = "a stranger's SUDI proof, asked before its location is believed"
    PROOF = "a SUDI proof"
    PROBE_ANSWER = "a stranger's answer to what it is"
    NOTHING_OUTSTANDING = "no request outstanding"
    NOT_REQUESTER = "from another address"
    ANOTHER_PID = "as another product"
    FAULT = "a fault"
    STALE = "another correlator"
    WRONG_SERVICE = "another service"
    ANSWER = "the answer"


class Reply(enum.StrEnum):
    """What the device is sent back (the service of the reply)."""

    BACKOFF = "backoff"
    REQUEST = "request"  # the due step's request, whatever its service
    CHALLENGE = "device-auth"
    PROBE = "device-info"
    TOPOLOGY = "topology"
    NEIGHBOURS = "cli-exec"  # show cdp/lldp neighbors detail
    BYE = "bye"


@dataclasses.dataclass(frozen=True)
class Move:
    """What a case does in a stage: the handler, the replies it may send, the stages it may leave the serial in."""

    handler: str
    replies: frozenset[Reply]
    to: frozenset[Stage]


def _move(handler: str, replies: Reply | set[Reply], *to: Stage) -> Move:
    return Move(handler, frozenset(replies if isinstance(replies, set) else {replies}), frozenset(to))


class TransitionError(RuntimeError):
    """The provisioner met a (stage, case) the table does not have, or left a serial where a move may not."""


_NOT_STARTED = (Stage.PLANNED, Stage.ONBOARDING)  # a status of the current work, or none yet
_DECLARED = (Stage.PLANNED, Stage.ONBOARDING, Stage.PROVISIONED, Stage.ERROR)

MOVES: dict[tuple[Stage, Poll | Answer], Move] = {
    # ---------------------------------------------------------------- WORK-REQUEST
    (Stage.UNKNOWN, Poll.UNDECLARED): _move("_poll_undeclared", Reply.BACKOFF, Stage.UNKNOWN),
    # A stranger is asked what it is (provisioner.PROBES): a stack's member, or a switch at a declared location.
    (Stage.UNKNOWN, Poll.PROBE): _move("_poll_probe", {Reply.PROBE, Reply.TOPOLOGY, Reply.NEIGHBOURS}, Stage.UNKNOWN),
    # Found at a location whose declaration asks for SUDI: bound only once proven (a challenge held by another
    # address that has not had its time to answer: come back later).
    (Stage.UNKNOWN, Poll.PROVE_LOCATION): _move("_poll_prove_location", {Reply.CHALLENGE, Reply.BACKOFF}, Stage.UNKNOWN),
    (Stage.UNPLANNED, Poll.NOT_PLANNED): _move("_poll_not_planned", Reply.BACKOFF, Stage.UNPLANNED),
    **{(stage, Poll.REFUSED_CLAIM): _move("_poll_refused_claim", Reply.BACKOFF, stage) for stage in _DECLARED},
    (Stage.ERROR, Poll.IN_ERROR): _move("_poll_in_error", Reply.BACKOFF, Stage.ERROR),
    (Stage.PROVISIONED, Poll.PROVISIONED): _move("_poll_provisioned", Reply.BACKOFF, Stage.PROVISIONED),
    # New work that differs from what it was provisioned with only in the hand-off: handed off again, not reloaded.
    (Stage.PLANNED, Poll.HANDOFF_CHANGED): _move("_poll_handoff_changed", Reply.BACKOFF, Stage.PROVISIONED),
    (Stage.ONBOARDING, Poll.WAITING): _move("_poll_waiting", Reply.BACKOFF, Stage.ONBOARDING),
    (Stage.ONBOARDING, Poll.HELD_OFF): _move("_poll_held_off", Reply.BACKOFF, Stage.ONBOARDING),
    # A first poll of this work starts it (a status of this revision, onboarding), whatever the answer.
    # (A challenge refused because every address's slot is taken writes nothing: only in onboarding, where the
    # challenges are.)
    (Stage.PLANNED, Poll.UNPROVABLE): _move("_poll_unprovable", Reply.BACKOFF, Stage.ONBOARDING),
    (Stage.ONBOARDING, Poll.UNPROVABLE): _move("_poll_unprovable", Reply.BACKOFF, Stage.ONBOARDING),
    (Stage.PLANNED, Poll.CHALLENGE): _move("_poll_challenge", Reply.CHALLENGE, Stage.ONBOARDING),
    (Stage.ONBOARDING, Poll.CHALLENGE): _move("_poll_challenge", {Reply.CHALLENGE, Reply.BACKOFF}, Stage.ONBOARDING),
    # Provisioned without a request when every step left has nothing to do (a plugin step type may say so).
    **{(stage, Poll.DUE): _move("_poll_due", {Reply.REQUEST, Reply.BACKOFF}, Stage.ONBOARDING, Stage.PROVISIONED,
                                Stage.ERROR) for stage in _NOT_STARTED},
    # ---------------------------------------------------------------- WORK-RESPONSE (always a bye)
    **{(stage, Answer.BACKOFF_ACK): _move("_answer_backoff_ack", Reply.BYE, stage) for stage in Stage},
    **{(stage, Answer.PROOF): _move("_answer_proof", Reply.BYE, stage) for stage in Stage},
    (Stage.UNKNOWN, Answer.LOCATION_PROOF): _move("_answer_location_proof", Reply.BYE, Stage.UNKNOWN),
    (Stage.UNKNOWN, Answer.PROBE_ANSWER): _move("_answer_probe", Reply.BYE, Stage.UNKNOWN),
    **{(stage, Answer.NOTHING_OUTSTANDING): _move("_answer_nothing_outstanding", Reply.BYE, stage) for stage in Stage},
    (Stage.ONBOARDING, Answer.NOT_REQUESTER): _move("_answer_not_requester", Reply.BYE, Stage.ONBOARDING),
    (Stage.ONBOARDING, Answer.ANOTHER_PID): _move("_answer_another_pid", Reply.BYE, Stage.ONBOARDING),
    (Stage.ONBOARDING, Answer.FAULT): _move("_answer_fault", Reply.BYE, Stage.ONBOARDING, Stage.ERROR),
    (Stage.ONBOARDING, Answer.STALE): _move("_answer_stale", Reply.BYE, Stage.ONBOARDING),
    (Stage.ONBOARDING, Answer.WRONG_SERVICE): _move("_answer_wrong_service", Reply.BYE, Stage.ONBOARDING, Stage.ERROR),
    (Stage.ONBOARDING, Answer.ANSWER): _move("_answer", Reply.BYE, Stage.ONBOARDING, Stage.PROVISIONED, Stage.ERROR),
}

#: A step's verdict (on the answer to its request, or on what it checked before sending one) -> the handler that
#: applies it to the status, and the states the status may be in afterwards.
VERDICTS: dict[Verdict, Move] = {
    Verdict.ADVANCE: _move("_advance", set(), Stage.ONBOARDING, Stage.PROVISIONED),  # the next step, or done
    Verdict.PHASE: _move("_phase", set(), Stage.ONBOARDING),
    Verdict.RETRY: _move("_retry", set(), Stage.ONBOARDING, Stage.ERROR),  # error once --max-attempts are spent
    Verdict.FAIL: _move("_fail", set(), Stage.ERROR),
    Verdict.REFUSE: _move("_refuse", set(), *Stage),  # not the declared device: its state does not move
}


def stage_of(work_revision: str | None, declared: bool, state: State | None, status_revision: str = "") -> Stage:
    """Where a serial stands: ``work_revision`` None when it has no work, ``state`` None when it has no status."""
    if work_revision is None:
        return Stage.UNPLANNED if declared else Stage.UNKNOWN
    if state is None or status_revision != work_revision:
        return Stage.PLANNED
    return Stage(state.value)


def move(stage: Stage, case: Poll | Answer) -> Move:
    """The table's move for a case in a stage; TransitionError when it has none."""
    try:
        return MOVES[(stage, case)]
    except KeyError:
        raise TransitionError(f"no move for {case.name} in stage {stage}") from None


__all__ = ["Answer", "MOVES", "Move", "Poll", "Reply", "Stage", "TransitionError", "VERDICTS", "move", "stage_of"]
