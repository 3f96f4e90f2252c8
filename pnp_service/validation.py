"""The operator's declarations file, checked against the YANG before anything is planned.

Owns reading an embedded-mode declarations file (``<config><services
xmlns="http://clicon.org/controller"><pnp-device>...``) into declarations, and
refusing it, with the file, line and YANG path of each problem, when it is not
valid for ``yang/pnp-service``: unknown or misspelled elements, wrong
namespaces, pattern and range violations, duplicate keys, missing mandatory
leaves.  The check is libyang's (CESNET's reference YANG implementation, the one
behind yanglint, sysrepo and netopeer2), through its Python bindings: every YANG
1.1 rule, the IETF types built in, line numbers and schema paths in its messages.

A stand-in for the controller's own module (only ``services`` and the
``created-by-service`` grouping) is shipped with the package, so the file can be
checked without a controller; under a controller, the controller validates.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
import sys
import threading

from lxml import etree

from .model import (CONTROLLER_NS, PNP_NS, SERVICE_NAME, Declaration, LocationDeclaration, declaration_from_xml,
                    location_from_xml, sharing_texts)
from .neighbours import Location
from .xmlsafe import iterparse, parser

HERE = os.path.dirname(os.path.abspath(__file__))
#: The controller stand-in, shipped inside the package.
STANDIN_DIR = os.path.join(HERE, "yang")


def yang_dirs() -> list[str]:
    """Where ``pnp-service@*.yang`` is: $PNP_YANG_DIR, the source tree's yang/, or the installed share folder."""
    candidates = [
        os.environ.get("PNP_YANG_DIR", ""),
        os.path.join(os.path.dirname(HERE), "yang"),
        os.path.join(sys.prefix, "share", "pnp-service", "yang"),
    ]
    return [d for d in candidates if d and glob.glob(os.path.join(d, "pnp-service@*.yang"))]


@dataclasses.dataclass(frozen=True)
class Problem:
    message: str
    line: int | None = None
    path: str = ""

    def describe(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.message}" + (f" (at {self.path})" if self.path else "")


class DeclarationsError(ValueError):
    """A declarations file that cannot be served; ``str()`` says where and what to fix."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = source, problems
        super().__init__("; ".join(p.describe(source) for p in problems))


# libyang reports 'MESSAGE: Data location "/path", line number N.' or 'Schema location "/path".'
_LOCATION = re.compile(r'^(?P<message>.*?)(?:\.)?:? (?:Data|Schema) location "(?P<path>[^"]*)"(?:, line number (?P<line>\d+))?\.?$')


class _Validator:
    """One libyang context with the pnp-service module loaded, shared by the process."""

    def __init__(self) -> None:
        try:
            import libyang
        except ImportError as exc:
            raise DeclarationsError(
                "libyang",
                [Problem(f"the libyang Python bindings are not installed ({exc}); run ./install.sh, which installs "
                         "Debian's libyang2-dev and pip's libyang")],
            ) from None
        self.libyang = libyang
        dirs = yang_dirs()
        if not dirs:
            raise DeclarationsError("yang", [Problem("pnp-service@*.yang not found; set PNP_YANG_DIR to the repository's yang/")])
        self.context = libyang.Context(":".join(dirs + [STANDIN_DIR]))
        self.context.load_module("pnp-service")
        self.lock = threading.Lock()
        self.messages: list[str] = []
        capture = logging.getLogger("libyang")
        capture.propagate = False  # libyang's messages become Problems, not log lines of their own
        capture.setLevel(logging.ERROR)
        capture.addHandler(_Collect(self.messages))
        libyang.configure_logging(True, logging.ERROR)

    def check(self, text: str) -> list[Problem]:
        with self.lock:
            self.messages.clear()
            try:
                tree = self.context.parse_data_mem(text, "xml", strict=True, no_state=True)
            except self.libyang.LibyangError as exc:
                return [self._problem(m) for m in self.messages] or [Problem(str(exc))]
            if tree is not None:
                tree.free()
            return []

    @staticmethod
    def _problem(message: str) -> Problem:
        match = _LOCATION.match(message)
        if not match:
            return Problem(message)
        line = match.group("line")
        return Problem(match.group("message").rstrip("."), int(line) if line else None, match.group("path"))


class _Collect(logging.Handler):
    def __init__(self, into: list[str]):
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


_validator: _Validator | None = None
_validator_lock = threading.Lock()


def _shared_validator() -> _Validator:
    global _validator
    with _validator_lock:
        if _validator is None:
            _validator = _Validator()
        return _validator


_ROOT_START = re.compile(rb"<config(\s[^>]*)?>")
_ROOT_END = re.compile(rb"</config\s*>\s*$")


def _fragment(data: bytes) -> str:
    """The children of ``<config>`` as one XML fragment for libyang, on the lines they have in the file.

    The root's start and end tags are blanked out in place (newlines kept), so libyang's line numbers are
    the file's.  A root that declares namespaces its children use cannot be blanked: then the children
    are serialized, each padded to start on its own line.
    """
    start, end = _ROOT_START.search(data), _ROOT_END.search(data)
    if start is not None and end is not None and b"xmlns" not in (start.group(1) or b""):
        blank = lambda match: re.sub(rb"[^\n]", b" ", match.group(0))  # noqa: E731
        text = data[: start.start()] + blank(start) + data[start.end() : end.start()] + blank(end) + data[end.end() :]
        return text.decode("utf-8")
    root = etree.fromstring(data, parser(large=True))
    out: list[str] = []
    line = 1
    for child in root:
        if not isinstance(child.tag, str):
            continue
        text = etree.tostring(child, encoding="unicode", with_tail=False)
        out.append("\n" * max(0, (child.sourceline or line) - line))
        line = max(line, child.sourceline or line)
        out.append(text + "\n")
        line += text.count("\n") + 1
    return "".join(out)


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a declarations file declares: devices by serial, and switches by location (keyed by normal form)."""

    declarations: dict[str, Declaration]
    locations: dict[Location, LocationDeclaration]


@sharing_texts()  # a platform, a template, variable names: one string each, not one per device
def _structure(data: bytes, source: str) -> Declared:
    """Check what libyang cannot see (the root, the namespace of services, two locations one in normal form) and
    read the declarations.

    Streams through the file, freeing each declaration's elements once read, so a large file costs
    little memory.
    """
    problems: list[Problem] = []
    declarations: dict[str, Declaration] = {}
    locations: dict[Location, LocationDeclaration] = {}
    services = f"{{{CONTROLLER_NS}}}services"
    device = f"{{{PNP_NS}}}{SERVICE_NAME}"
    location = f"{{{PNP_NS}}}pnp-location"
    events = iterparse(data, ("start", "end"))
    depth = 0
    try:
        for kind, element in events:
            if kind == "start":
                depth += 1
                name = etree.QName(element)
                if depth == 1 and (name.localname != "config" or name.namespace):
                    problems.append(Problem(
                        f"the root element is <{name.localname}>, expected <config> (no namespace) holding "
                        f'<services xmlns="{CONTROLLER_NS}">', element.sourceline))
                    break
                if depth == 2 and name.localname == "services" and name.namespace != CONTROLLER_NS:
                    problems.append(Problem(
                        f'<services> must be in the controller\'s namespace: write <services xmlns="{CONTROLLER_NS}">'
                        + (f" (it is in {name.namespace!r})" if name.namespace else ""), element.sourceline, "/services"))
                continue
            depth -= 1
            if depth == 1 and element.tag == f"{{{PNP_NS}}}pnp" and len(element):
                problems.append(Problem(
                    "<pnp> is state written by pnp-service and does not belong in the declarations file "
                    "(it now lives in the state database): remove it", element.sourceline, "/pnp-service:pnp"))
            if depth == 2 and element.tag in (device, location) and element.getparent() is not None \
                    and element.getparent().tag == services:
                if element.tag == device:
                    declaration = declaration_from_xml(element)
                    declarations[declaration.serial] = declaration
                else:
                    at = location_from_xml(element)
                    same = locations.get(at.location)
                    if same is not None and (same.neighbor, same.port) != (at.neighbor, at.port):
                        problems.append(Problem(
                            f"pnp-location {at.neighbor} {at.port} is the same port as pnp-location {same.neighbor} "
                            f"{same.port} (names are compared in normal form: {at.location}): keep one",
                            element.sourceline, "/pnp-location"))
                    locations[at.location] = at
                element.clear()
                parent = element.getparent()
                while element.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise DeclarationsError(source, [Problem(f"not well-formed XML: {exc.msg}", exc.lineno)]) from None
    if problems:
        raise DeclarationsError(source, problems)
    return Declared(declarations, locations)


def load(data: bytes, source: str) -> dict[str, Declaration]:
    """Declarations by serial from a file's bytes, or :class:`DeclarationsError` naming every problem found."""
    return read(data, source).declarations


def read(data: bytes, source: str) -> Declared:
    """Declarations by serial and by location from a file's bytes, or :class:`DeclarationsError` naming every
    problem found."""
    probe = data[:4096].upper()
    if b"<!DOCTYPE" in probe or b"<!ENTITY" in probe:
        raise DeclarationsError(source, [Problem("DTDs and entities are not allowed in a declarations file")])
    declared = _structure(data, source)
    problems = _shared_validator().check(_fragment(data))
    if problems:
        raise DeclarationsError(source, problems)
    return declared


def load_file(path: str, shown: str = "") -> dict[str, Declaration]:
    """Read and check a declarations file (see :func:`read_file`); its declarations by serial."""
    return read_file(path, shown).declarations


def read_file(path: str, shown: str = "") -> Declared:
    """Read and check a declarations file; a missing or unreadable one is a :class:`DeclarationsError` too.
    ``shown``: the path as the operator wrote it, for the messages."""
    shown = shown or path
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DeclarationsError(shown, [Problem("no such file (pnp-service init FILE writes a commented example)")]) from None
    except OSError as exc:
        raise DeclarationsError(shown, [Problem(f"cannot read it: {exc.strerror}")]) from None
    return read(data, shown)


__all__ = ["Declared", "DeclarationsError", "Problem", "load", "load_file", "read", "read_file", "SERVICE_NAME"]
