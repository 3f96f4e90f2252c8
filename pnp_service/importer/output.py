"""The three forms declarations are handed out in: a declarations file (new, or merged into an existing one,
its comments and other declarations kept), a ``clixon_cli`` script and a NETCONF ``edit-config`` body.  Pure:
declarations in, text or bytes out; reading and writing files is the command line's job."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from lxml import etree

from .. import validation
from ..model import (
    CONTROLLER_NS,
    NETCONF_NS,
    SERVICE_NAME,
    Declaration,
    child_text,
    declaration_to_xml,
    q,
)
from ..xmlsafe import parser, qname
from .lists import LINE_STEP, ImportFailed, Imported, Problem, Where, _Problems, yang_problems


# --------------------------------------------------------------------------- output: a declarations file


def _comment(text: str) -> str:
    return "<!-- " + text.replace("--", "- -") + " -->\n"


#: Entries written on one line each, as an operator writes them: ``<variable><name>x</name><value>1</value></variable>``.
_ONE_LINE = frozenset(q(name) for name in ("variable", "command", "line", "param", "credentials"))


def _indented(element: etree._Element, level: int) -> etree._Element:
    etree.indent(element, space="  ", level=level)
    for entry in element.iter(*_ONE_LINE):
        entry.text = None
        for child in entry:
            child.tail = None
    return element


def declarations_document(declarations: Sequence[Declaration], comment: str = "") -> bytes:
    """A complete declarations file (``<config><services xmlns=...><pnp-device>...``), as ``serve`` reads it."""
    root = etree.Element("config")
    services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
    for declaration in declarations:
        services.append(declaration_to_xml(declaration))
    _indented(root, 0)
    head = "<?xml version='1.0' encoding='UTF-8'?>\n" + (_comment(comment) if comment else "")
    return head.encode() + etree.tostring(root, encoding="UTF-8") + b"\n"


def declarations_fragment(declarations: Sequence[Declaration]) -> str:
    """The ``<pnp-device>`` elements alone, indented to paste into a file's ``<services>``."""
    out = []
    for declaration in declarations:
        element = _indented(declaration_to_xml(declaration), 2)
        out.append("    " + etree.tostring(element, encoding="unicode").rstrip())
    return "\n".join(out) + "\n"


@dataclasses.dataclass(frozen=True)
class Merged:
    data: bytes
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    kept: tuple[str, ...]


def _serialize(root: etree._Element) -> bytes:
    """The document with the comments around its root element each on a line of its own (lxml keeps no
    whitespace outside the root)."""
    before: list[etree._Element] = []
    after: list[etree._Element] = []
    sibling = root.getprevious()
    while sibling is not None:
        before.insert(0, sibling)
        sibling = sibling.getprevious()
    sibling = root.getnext()
    while sibling is not None:
        after.append(sibling)
        sibling = sibling.getnext()
    parts = [b"<?xml version='1.0' encoding='UTF-8'?>"]
    parts += [etree.tostring(node, encoding="UTF-8", with_tail=False) for node in before]
    parts.append(etree.tostring(root, encoding="UTF-8", with_tail=False))
    parts += [etree.tostring(node, encoding="UTF-8", with_tail=False) for node in after]
    return b"\n".join(parts)


def merge_into(existing: bytes, source: str, imported: Sequence[Imported], *, replace: bool = False) -> Merged:
    """``existing`` (a valid declarations file) with the imported declarations added; serials it has are replaced
    in place with ``replace``, else kept as they are.  Comments and the other declarations stay as written
    (comments inside a replaced declaration go with it).  The result is checked against the YANG whole."""
    try:
        validation.load(existing, source)
    except validation.DeclarationsError as exc:
        raise ImportFailed([Problem(Where(source, p.line), f"{p.message}{f' (at {p.path})' if p.path else ''}; "
                                    f"fix it first (pnp-service check --datastore {source})") for p in exc.problems]) from None
    root = etree.fromstring(existing, parser(large=True, keep_comments=True))
    services = root.find(qname(CONTROLLER_NS, "services"))
    if services is None:
        services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
        services.tail = "\n"
    present = {child_text(el, "serial").strip(): el for el in services.iterfind(q(SERVICE_NAME))}
    present |= {f'{child_text(el, "neighbor").strip()} {child_text(el, "port").strip()}': el
                for el in services.iterfind(q("pnp-location"))}
    added, replaced, kept = [], [], []
    text = services.text or ""
    step = text if text and not text.strip() else "\n    "  # the indentation between declarations
    for item in imported:
        serial = item.key
        element = _indented(declaration_to_xml(item.declaration), 2)
        old = present.get(serial)
        if old is not None:
            if not replace:
                kept.append(serial)
                continue
            element.tail = old.tail
            services.replace(old, element)
            present[serial] = element
            replaced.append(serial)
            continue
        if len(services):
            last = services[-1]
            element.tail, last.tail = last.tail, step
        else:
            services.text, element.tail = step, "\n  "
        services.append(element)
        added.append(serial)
    data = _serialize(root) + (b"\n" if existing.endswith(b"\n") else b"")
    where = {item.key: item.where for item in imported}
    try:
        validation.load(data, source)
    except validation.DeclarationsError as exc:
        raise yang_problems(exc, where, source, lines=True) from None
    return Merged(data, tuple(added), tuple(replaced), tuple(kept))


# --------------------------------------------------------------------------- output: clixon_cli


class Untypable(ValueError):
    """Text the controller's CLI cannot take (tabs, control or non-ASCII characters)."""


def cli_value(text: str) -> str:
    """``text`` as one clixon_cli (CLIgen) argument, as an operator pastes or pipes it.

    CLIgen reads a line in four passes, and each is answered here:
      1. the line editor takes ``\\`` as "the next character as is" and ``?`` as a help request;
      2. the line is trimmed: runs of blanks become one space, a word starting with ``#`` starts a comment;
      3. it is split into words on blanks and ``|``, a word opening with ``"`` running to the next ``"``
         (no escapes inside), ``\\`` protecting the next character elsewhere;
      4. a string value loses one more level of ``\\``.
    So a literal backslash is written ``\\\\\\\\``; a blank after a blank, and ``#`` after a blank, as
    ``\\\\`` and the character; ``?`` as ``\\?``.  A value without ``"`` is quoted; one with ``"`` is
    written unquoted, every blank, ``"`` and ``|`` escaped.  Tabs, control and non-ASCII characters
    cannot be typed: refused.
    """
    bad = sorted({ch for ch in text if not (" " <= ch <= "~")})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise Untypable(f"has characters the controller's CLI cannot type ({shown})")
    if text and not any(ch in ' \t"\\|#?' for ch in text):
        return text
    quoted = '"' not in text
    if not quoted and text.endswith(" "):
        raise Untypable("has a quote and ends with a blank, which the controller's CLI trims")
    out = []
    previous = ""
    for ch in text:
        if ch == "\\":
            out.append("\\\\\\\\")
        elif ch == "?":
            out.append("\\?")
        elif ch == "#" and (previous == " " or (previous == "" and not quoted)):
            out.append("\\\\#")
        elif not quoted and ch in '|"':
            out.append("\\\\" + ch)
        elif ch == " " and (not quoted or previous == " "):
            out.append("\\\\ ")
        else:
            out.append(ch)
        previous = ch
    return f'"{"".join(out)}"' if quoted else "".join(out)


def _cli_lines(declaration: Declaration) -> Iterable[tuple[str, str, str]]:
    """(path, field name for messages, value or "") of each ``set`` line of one declaration."""
    yield from ((name, name, getattr(declaration, name)) for name in ("pid", "hostname") if getattr(declaration, name))
    lines = declaration.template_lines
    if declaration.template is not None:
        texts = declaration.template.split("\n")
        if texts and texts[-1] == "":
            texts.pop()
        lines = tuple((LINE_STEP * (i + 1), t) for i, t in enumerate(texts or [""]))
    for number, text in lines:
        yield (f"config line {number}" + (" text" if text else ""), f"template line {number}", text)
    if declaration.template_file:
        yield ("config template-file", "template-file", declaration.template_file)
    if declaration.config_url:
        yield ("config url", "config-url", declaration.config_url)
    if declaration.apply_to != "startup":
        yield ("config apply-to", "apply-to", declaration.apply_to)
    if not declaration.reload:
        yield ("config reload", "reload", "false")
    types = dict(declaration.variable_types)
    for name, value in declaration.variables:
        yield (f"variable {name}" + (" value" if value else ""), f"variable {name}", value)
        if name in types:
            yield (f"variable {name} type", f"variable {name}", types[name])
    for seq, command in declaration.commands:
        yield (f"command {seq} cli", f"command {seq}", command)
    for extra in declaration.steps:
        yield (f"step {extra.id} type", f"step {extra.id}", extra.type)
        if extra.position != "before-config":
            yield (f"step {extra.id} position", f"step {extra.id}", extra.position)
        for name, value in extra.params:
            yield (f"step {extra.id} param {name}" + (" value" if value else ""), f"step {extra.id}", value)
    if declaration.has_image or declaration.image_md5:
        yield ("image version", "image version", declaration.image_version)
        yield ("image url", "image url", declaration.image_url)
        yield ("image md5", "image md5", declaration.image_md5)
        if declaration.image_reload_wait != 60:
            yield ("image reload-wait", "image reload-wait", str(declaration.image_reload_wait))
    if declaration.username:
        yield ("credentials username", "username", declaration.username)
    if declaration.password:
        yield ("credentials password", "password", declaration.password)


#: Declarations per controller commit: the controller runs the service once per new instance and a commit must end
#: within its service-timeout (300 s by default); 1,000 new ones at 9,100 declared took about 50 s (README).
COMMIT_EVERY = 1000


def clixon_cli_script(imported: Sequence[Imported], *, replace: bool = False, comment: str = "",
                      commit_every: int = COMMIT_EVERY) -> str:
    """A script for ``clixon_cli``: ``configure``, one ``set services pnp-device SERIAL ...`` per leaf, a
    ``commit`` after every ``commit_every`` devices and at the end.

    With ``replace`` each device's old declaration is deleted first, so nothing of it survives; without,
    ``set`` merges into a declaration the controller has.  Templates are typed as numbered ``config line``s.
    """
    if commit_every < 1:
        raise ValueError("commit_every must be at least 1")
    problems = _Problems()
    out = [f"# {line}" for line in comment.splitlines()] + ["configure"]
    for number, item in enumerate(imported):
        if number and number % commit_every == 0:
            out.append("commit")
        declaration = item.declaration
        path = f"pnp-device {declaration.serial}" if declaration.serial else f"pnp-location {item.key}"
        prefix = f"set services {path}"
        if replace:
            out.append(f"delete services {path}")
        out.append(prefix)
        for path, field, value in _cli_lines(declaration):
            try:
                out.append(f"{prefix} {path} {cli_value(value)}" if value else f"{prefix} {path}")
            except Untypable as exc:
                problems.add(item.where, f"{item.key} {field}",
                             f"{exc}: write it with --output or --netconf instead")
    problems.raise_any()
    out += ["commit"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- output: NETCONF


def netconf_config(declarations: Sequence[Declaration], *, replace: bool = False) -> str:
    """The ``<config>`` of an ``edit-config`` on the candidate: each ``pnp-device`` with operation ``create``
    (the controller refuses a serial it has), or ``replace`` (the old declaration goes whole)."""
    root = etree.Element(qname(NETCONF_NS, "config"), nsmap={None: NETCONF_NS, "nc": NETCONF_NS})
    services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
    for declaration in declarations:
        element = declaration_to_xml(declaration)
        element.set(qname(NETCONF_NS, "operation"), "replace" if replace else "create")
        services.append(element)
    _indented(root, 0)
    return etree.tostring(root, encoding="unicode") + "\n"

