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
that changes one device independent of how many are declared.  The work XML
is the model's (``model.work_to_xml``), copied into pyapi's tree.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Mapping, Sequence

from lxml import etree

from .model import CLIXON_LIB_NS, NETCONF_NS, PNP_NS, SERVICE_NAME, Declaration, Work, q, work_to_xml
from .planner import PlanningError, controller_template_dirs, file_template_loader, plan
from .steps import default_registry
from .xmlsafe import escape_text

SERVICE = SERVICE_NAME
# Matches no node (a serial is never empty): the module reads nothing from root.
SERVICE_XPATH = "/pnp:pnp/pnp:device[pnp:serial='']"
SERVICE_NAMESPACES = {"pnp": PNP_NS}

ReadDeclarations = Callable[[str | None], Mapping[str, Declaration]]
_PREFIXES = {CLIXON_LIB_NS: "cl", NETCONF_NS: "nc"}


#: The controller's public SSH key, for templates that make the device manageable (controller_ssh_key...).
CONTROLLER_KEY_FILE = "/usr/local/etc/pnp-service/controller_ssh_key.pub"
#: What install.sh --controller chose (configure()); the environment variables of clixon_server.py win.
_configured: dict[str, object] = {}


def configure(template_dirs: Sequence[str] | None = None, controller_key: str | None = None) -> None:
    """Where this installation keeps template files and the controller's public key (install.sh --controller
    writes this call into the module file it installs, with the folders it was given)."""
    if template_dirs is not None:
        _configured["template_dirs"] = list(template_dirs)
    if controller_key is not None:
        _configured["controller_key"] = controller_key


def template_context() -> dict[str, object]:
    """Variables every declaration gets: the controller's SSH key, from $PNP_CONTROLLER_SSH_KEY, the installed
    path, or the default file."""
    from .planner import controller_variables

    path = os.environ.get("PNP_CONTROLLER_SSH_KEY") or str(_configured.get("controller_key", CONTROLLER_KEY_FILE))
    try:
        with open(path, encoding="ascii") as handle:
            return controller_variables(handle.read().strip())
    except OSError:
        return {}  # a template that uses the key then fails, and says which variable is missing


def template_dirs() -> list[str]:
    from .planner import TEMPLATE_DIRS_VARIABLE

    installed = _configured.get("template_dirs")
    if installed and not os.environ.get(TEMPLATE_DIRS_VARIABLE):
        return list(installed)  # type: ignore[call-overload]
    return controller_template_dirs(os.environ)


def server_socket(argv: Sequence[str]) -> str:
    """The controller socket the running clixon_server.py was started with: its ``-s``/``--sockpath``, else
    CLICON_SOCK of its ``-f``/``--configfile``, else the default.

    Read from its command line here, not asked of pyapi: pyapi answers nothing at all when NO_CLIXON_ARGS happens
    to be in the environment the controller was started from, and the module would then talk to the default
    socket of another installation."""
    import argparse

    from .stores.clixon.netconf import DEFAULT_SOCKET
    from .xmlsafe import parser

    options = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    options.add_argument("-s", "--sockpath")
    options.add_argument("-f", "--configfile")
    known, _ = options.parse_known_args(list(argv[1:]))
    if known.sockpath:
        return known.sockpath
    if known.configfile:
        try:
            config = etree.parse(known.configfile, parser(large=True)).getroot()
        except (OSError, etree.XMLSyntaxError):
            return DEFAULT_SOCKET
        found = config.findtext("{http://clicon.org/config}CLICON_SOCK") or config.findtext("CLICON_SOCK")
        return (found or "").strip() or DEFAULT_SOCKET
    return DEFAULT_SOCKET


def read_from_controller(instance: str | None) -> Mapping[str, Declaration]:
    """The declarations of ``instance`` (or all), read raw from the actions datastore."""
    from .stores.clixon.netconf import fetch_declarations, session

    with session(server_socket(sys.argv)) as opened:
        return fetch_declarations(opened, "actions", None if instance is None else [instance])


def _known_step_types() -> list[str]:
    return default_registry().names()


def setup(root, log, instance=None, diff=False, read_declarations: ReadDeclarations | None = None):
    """Plan the changed declaration (or all) and write its work into ``root``."""
    declarations = (read_declarations or read_from_controller)(instance)
    if instance is not None and instance not in declarations:
        log.info(f"pnp-device {instance}: declaration deleted; the controller removes its work")
        return
    load_template = file_template_loader(template_dirs())
    known = _known_step_types()
    context = template_context()
    plans = {}
    for serial, declaration in sorted(declarations.items()):
        try:
            plans[serial] = plan(declaration, load_template, known, context)
        except PlanningError as exc:
            log.error(str(exc))
            raise
    write_work(root, plans)
    verb = "would plan" if diff else "planned"
    for serial, work in plans.items():
        log.info(f"pnp-device {serial}: {verb} {len(work.steps)} steps, revision {work.revision}")


def _child(element, name: str):
    found = element.get_elements(name)
    return found[0] if found else None


def _copy_into(parent, element: etree._Element, attributes: dict[str, str] | None = None) -> None:
    """Copy an lxml element into pyapi's tree; pyapi writes text as given, so it is escaped here."""
    attributes = dict(attributes or {})
    for name, value in element.attrib.items():
        qualified = etree.QName(name)
        prefix = _PREFIXES.get(qualified.namespace or "")
        if prefix:
            attributes[f"{prefix}:{qualified.localname}"] = value
            attributes[f"xmlns:{prefix}"] = qualified.namespace or ""
    child = parent.create(etree.QName(element).localname, attributes=attributes, data=escape_text(element.text or ""))
    for grandchild in element:
        _copy_into(child, grandchild)


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
        device = devices.get(escape_text(serial))
        if device is None:
            device = pnp.create("device")
            device.create("serial", data=escape_text(serial))
        for old in device.get_elements("work"):
            device.delete(element=old)
        work_element = work_to_xml(serial, work).find(q("work"))
        assert work_element is not None
        _copy_into(device, work_element, {"nc:operation": "merge"})


__all__ = ["SERVICE", "SERVICE_XPATH", "SERVICE_NAMESPACES", "setup"]
