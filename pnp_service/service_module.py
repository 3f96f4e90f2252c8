"""The clixon-pyapi service module: declarations in, pending work out, on every services-commit.

clixon_server.py calls :func:`setup` for each changed ``pnp-device`` instance
(``instance=None``: re-plan all).  Before that, the controller has already
removed the work it recorded for the changed instances (the ``cl:creator``
tags), so the module rewrites everything an instance owns: its
``/pnp/device[serial]/work``, planned by the same planner the embedded store
uses.  A rendering error raises, the transaction fails, and the CLI shows the
message.  ``diff=True`` (``commit diff``) runs the same code; the controller
commits nothing.

The declarations are read raw from the controller's ``actions`` datastore
rather than from ``root``: clixon-pyapi's XML parser drops the newlines of
multi-line text (a ``config/template``).  For the same reason ``SERVICE_XPATH``
selects nothing: pyapi writes ``root`` back whole, so nothing read through its
parser may pass through it, and an empty ``root`` keeps the cost of a commit
that changes one device independent of how many are declared.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping
from xml.sax.saxutils import escape as xml_escape

from .model import PNP_NS, SERVICE_NAME, Declaration, Work, creator_tag
from .planner import DEFAULT_TEMPLATE_DIRS, PlanningError, file_template_loader, plan

SERVICE = SERVICE_NAME
# Matches no node (a serial is never empty): the module reads nothing from root.
SERVICE_XPATH = "/pnp:pnp/pnp:device[pnp:serial='']"
SERVICE_NAMESPACES = {"pnp": PNP_NS}

CLIXON_LIB_NS = "http://clicon.org/lib"

ReadDeclarations = Callable[[str | None], Mapping[str, Declaration]]


def template_dirs() -> list[str]:
    configured = os.environ.get("PNP_TEMPLATE_DIRS", "")
    return [d for d in configured.split(os.pathsep) if d] or list(DEFAULT_TEMPLATE_DIRS)


def read_from_controller(instance: str | None) -> Mapping[str, Declaration]:
    """The declarations of ``instance`` (or all), read raw from the actions datastore."""
    from clixon.args import get_sockpath  # the socket clixon_server.py itself was started with

    from .stores.clixon import DEFAULT_SOCKET, fetch_declarations, session

    with session(get_sockpath() or DEFAULT_SOCKET) as opened:
        return fetch_declarations(opened, "actions", instance)


def setup(root, log, instance=None, diff=False, read_declarations: ReadDeclarations | None = None):
    """Plan the changed declaration (or all) and write its work into ``root``."""
    declarations = (read_declarations or read_from_controller)(instance)
    if instance is not None and instance not in declarations:
        log.info(f"pnp-device {instance}: declaration deleted; the controller removes its work")
        return
    load_template = file_template_loader(template_dirs())
    plans = {}
    for serial, declaration in sorted(declarations.items()):
        try:
            plans[serial] = plan(declaration, load_template)
        except PlanningError as exc:
            log.error(str(exc))
            raise
    write_work(root, plans)
    verb = "would plan" if diff else "planned"
    for serial, work in plans.items():
        log.info(f"pnp-device {serial}: {verb} {len(work.steps)} steps, revision {work.revision}")


def _escape(text: str) -> str:
    # pyapi writes element text as given: escape it here.
    return xml_escape(text)


def _child(element, name: str):
    found = element.get_elements(name)
    return found[0] if found else None


def write_work(root, plans: Mapping[str, Work]) -> None:
    """Write each plan as ``/pnp/device[serial]/work`` into a pyapi Element tree, idempotently."""
    pnp = _child(root, "pnp")
    if pnp is None:
        pnp = root.create("pnp", attributes={"xmlns": PNP_NS})
    devices = {}
    for device in pnp.get_elements("device"):
        serial = _child(device, "serial")
        if serial is not None:
            devices[serial.get_data()] = device
    for serial, work in plans.items():
        device = devices.get(_escape(serial))
        if device is None:
            device = pnp.create("device")
            device.create("serial", data=_escape(serial))
        for old in device.get_elements("work"):
            device.delete(element=old)
        work_element = device.create(
            "work",
            attributes={"cl:creator": creator_tag(serial), "xmlns:cl": CLIXON_LIB_NS, "nc:operation": "merge"},
        )
        work_element.create("revision", data=work.revision)
        for step in work.steps:
            step_element = work_element.create("step")
            step_element.create("id", data=_escape(step.id))
            step_element.create("type", data=_escape(step.type))
            for name, value in step.params.items():
                param = step_element.create("param")
                param.create("name", data=_escape(name))
                if value:
                    param.create("value", data=_escape(value))


__all__ = ["SERVICE", "SERVICE_XPATH", "SERVICE_NAMESPACES", "setup"]
