"""What the operator asks of the listener in the controller's CLI, beside resets: claims and clears.

The CLI's generic callbacks can set a node and commit, nothing more: they cannot
copy what a device reported, run the services, nor delete every entry of a list
(an api-path must name its keys).  So ``pnp claim`` and ``pnp clear`` commit a
request under ``/pnp`` and the listener, which reads the requests every second,
does the work.

``pnp clear unclaimed`` and ``pnp clear claims`` set ``/pnp/clear-unclaimed`` or
``/pnp/clear-claims``: the listener removes every entry of that list and the
request in one commit.

Claims (``/pnp/claim``):  ``pnp claim SERIAL hostname H template-file F`` in
clixon_cli commits a claim entry (keyed by all three, so that one generic
``cli_set`` writes it); the CLI cannot copy what the device reported, nor run
the services.  The listener reads the claims every second with the resets and
makes each one: under the candidate lock it checks the claim is still asked
for, that the serial called in undeclared and is not declared since, then
creates the declaration (with the product id the device reported, so a caller
with another PID cannot take it) and removes the claim in one
``controller-commit`` (the controller plans the declaration in the same
transaction: a plain commit would store it unplanned).  A claim that cannot be
made stays, with its ``error`` for ``show pnp claims``; the operator clears it.
"""

from __future__ import annotations

import dataclasses
import logging

from lxml import etree

from ... import model
from ...model import CONTROLLER_NS, NETCONF_NS, PNP_NS, Unclaimed, q
from ...xmlsafe import escape_text, iterparse
from ..base import StoreUnavailable
from .netconf import RpcError, Session, candidate_locked, commit_edit, controller_commit_edit

log = logging.getLogger(__name__)

#: The YANG's bounds on a declaration's pid: a reported one outside them is not copied (the claim is refused).
_PID_LENGTH = range(1, 65)


@dataclasses.dataclass(frozen=True)
class Claim:
    serial: str
    hostname: str
    template_file: str
    error: str = ""

    def key_xml(self) -> str:
        return (f"<serial>{escape_text(self.serial)}</serial><hostname>{escape_text(self.hostname)}</hostname>"
                f"<template-file>{escape_text(self.template_file)}</template-file>")


def claims_in(data: bytes | bytearray) -> list[Claim]:
    """The ``/pnp/claim`` entries of a get-config reply."""
    claims = []
    for _, element in iterparse(data, tag=q("claim")):
        claim = Claim(model.child_text(element, "serial"), model.child_text(element, "hostname"),
                      model.child_text(element, "template-file"), model.child_text(element, "error"))
        if model.is_serial(claim.serial):
            claims.append(claim)
    return claims


def _read(session: Session, claim: Claim) -> tuple[bool, bool, Unclaimed | None]:
    """Under the lock: (the claim is still asked for, the serial is declared, what it reported when undeclared)."""
    serial = claim.serial  # a valid serial: no quote can reach the xpath
    data = session.get_config_raw(
        "running", f"/pnp:pnp/pnp:claim[pnp:serial='{serial}'] | /pnp:pnp/pnp:unclaimed[pnp:serial='{serial}'] | "
                   f"/ctrl:services/pnp:pnp-device[pnp:serial='{serial}']")
    asked = declared = False
    reported = None
    for _, element in iterparse(data, tag=(q("claim"), q("unclaimed"), q("pnp-device"))):
        if model.child_text(element, "serial") != serial:
            continue
        if element.tag == q("claim"):
            asked = asked or (model.child_text(element, "hostname") == claim.hostname
                              and model.child_text(element, "template-file") == claim.template_file
                              and not model.child_text(element, "error"))
        elif element.tag == q("unclaimed"):
            reported = model.unclaimed_from_xml(element)
        else:
            declared = True
    return asked, declared, reported


def _declaration_xml(claim: Claim, reported: Unclaimed) -> str:
    pid = f"<pid>{escape_text(reported.pid)}</pid>" if reported.pid else ""
    return (f'<services xmlns="{CONTROLLER_NS}"><pnp-device xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}" '
            f'nc:operation="create"><serial>{claim.serial}</serial>{pid}'
            f"<hostname>{escape_text(claim.hostname)}</hostname>"
            f"<config><template-file>{escape_text(claim.template_file)}</template-file></config></pnp-device></services>"
            f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}"><claim nc:operation="remove">{claim.key_xml()}</claim>'
            f"</pnp>")


def make_claim(session: Session, claim: Claim) -> tuple[str, str]:
    """Make one claim: (``declared``, ``refused`` or ``gone``, what happened for the log).  A refusal is written into the claim; a busy or unreachable
    controller raises :class:`StoreUnavailable` or a busy :class:`RpcError` (the claim is tried again later)."""
    refusal = ""
    with candidate_locked(session):
        asked, declared, reported = _read(session, claim)
        if not asked:
            return "gone", f"{claim.serial}: claim already made (by another listener) or cleared"
        if declared:
            refusal = (f"{claim.serial} is declared already: change its declaration under services pnp-device, "
                       "then pnp clear claims")
        elif reported is None:
            refusal = (f"{claim.serial} has not called in undeclared (show pnp unclaimed lists those that have): "
                       "declare it under services pnp-device instead, then pnp clear claims")
        elif reported.pid and len(reported.pid) not in _PID_LENGTH:
            refusal = f"{claim.serial} reported a product id the declaration cannot hold: declare it by hand"
        else:
            refused = controller_commit_edit(session, _declaration_xml(claim, reported))
            if refused is not None:
                refusal = f"the controller refused the declaration of {claim.serial}: {refused}"
            else:
                return "declared", (f"{claim.serial} claimed as {claim.hostname} (template file {claim.template_file}, product id "
                        f"{reported.pid or 'any'}): provisioned from its next poll")
    commit_edit(session, f'<pnp xmlns="{PNP_NS}"><claim>{claim.key_xml()}<error>{escape_text(refusal)}</error>'
                         "</claim></pnp>")
    return "refused", f"claim refused: {refusal}"


#: The clear requests: request leaf -> the list it empties.
CLEARS = {"clear-unclaimed": "unclaimed", "clear-claims": "claim"}


def clears_in(data: bytes | bytearray) -> list[str]:
    """The clear requests (``clear-unclaimed``, ``clear-claims``) of a get-config reply."""
    return [request for _, element in iterparse(data, tag=tuple(q(r) for r in CLEARS))
            for request in (etree.QName(element).localname,)]


def clear_lists(session: Session, requests: list[str]) -> dict[str, int]:
    """Carry out clear requests: every entry of each list asked for removed, with the requests, in one commit.
    How many entries each list lost."""
    if not requests:
        return {}
    removed: dict[str, int] = {}
    with candidate_locked(session):
        lists = [CLEARS[request] for request in requests]
        data = session.get_config_raw("running", " | ".join(f"/pnp:pnp/pnp:{name}" for name in lists))
        parts = []
        for _, element in iterparse(data, tag=tuple(q(name) for name in lists)):
            name = etree.QName(element).localname
            keys = "".join(f"<{key}>{escape_text(model.child_text(element, key))}</{key}>" for key in _KEYS[name])
            parts.append(f'<{name} nc:operation="remove">{keys}</{name}>')
            removed[name] = removed.get(name, 0) + 1
        parts += [f'<{request} nc:operation="remove"/>' for request in requests]
        session.edit_config(f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}">{"".join(parts)}</pnp>')
        session.commit()
    return removed


_KEYS = {"unclaimed": ("serial",), "claim": ("serial", "hostname", "template-file")}


def make_claims(session: Session, claims: list[Claim]) -> list[str]:
    """Make the claims not refused yet; the serials declared.  Stops at a busy or unreachable controller."""
    made = []
    for claim in claims:
        if claim.error:
            continue
        try:
            result, outcome = make_claim(session, claim)
        except RpcError as exc:
            if exc.busy:
                break  # tried again at the next read
            log.error("claim of %s could not be recorded: %s", claim.serial, exc)
            continue
        except StoreUnavailable:
            break
        if result == "declared":
            log.info("%s", outcome)
            made.append(claim.serial)
        elif result == "refused":
            log.warning("%s", outcome)
    return made


__all__ = ["CLEARS", "Claim", "claims_in", "clear_lists", "clears_in", "make_claim", "make_claims"]
