"""Safe XML and safe text: the one hardened parser factory, the one escaper, the one text cleaner.

Owns how every piece of XML this package reads is parsed (agent messages, the
operator's declarations file, controller replies) and how untrusted text is
made harmless before it is stored, logged or sent on.  Everything else asks
here instead of building its own lxml parser or escaping by hand.

The rule of this file: no knowledge of PnP, YANG, HTTP or stores.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import Iterable, Iterator
from xml.sax.saxutils import escape as _sax_escape

from lxml import etree

# Never entities, never DTDs, never the network, whoever wrote the document.
_HARDENED = dict(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False, collect_ids=False)

_local = threading.local()


def parser(*, large: bool = False, keep_comments: bool = False) -> etree.XMLParser:
    """A hardened lxml parser for this thread.

    ``large`` lifts lxml's size limits, for documents we trust to be big (the
    operator's file, a controller reply); never for what a device sent.  One
    parser per thread and flavour: a parser shared between threads serialises
    them on a lock.
    """
    key = (large, keep_comments)
    cache = getattr(_local, "parsers", None)
    if cache is None:
        cache = _local.parsers = {}
    found = cache.get(key)
    if found is None:
        found = cache[key] = etree.XMLParser(
            huge_tree=large, remove_comments=not keep_comments, remove_pis=True, **_HARDENED
        )
    return found


class _Reading:
    """A file over bytes already in memory, read in pieces without a copy of the whole (io.BytesIO copies it)."""

    __slots__ = ("view", "position")

    def __init__(self, data: bytes | bytearray):
        self.view, self.position = memoryview(data), 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size is None or size < 0 else self.position + size
        piece = self.view[self.position:end].tobytes()
        self.position += len(piece)
        return piece


def iterparse_pieces(pieces: Iterable[bytes], events: tuple[str, ...] = ("end",), **options) -> Iterator[tuple]:
    """:func:`iterparse` over a document that arrives in pieces (a controller's reply as it is read): the whole
    never sits in memory at once."""
    pull = etree.XMLPullParser(events=events, huge_tree=True, remove_comments=True, remove_pis=True, **_HARDENED,
                               **options)
    for piece in pieces:
        pull.feed(piece)
        yield from pull.read_events()
    pull.close()
    yield from pull.read_events()


def iterparse(data: bytes | bytearray, events: tuple[str, ...] = ("end",), **options):
    """lxml's incremental parser over trusted but large bytes, with the same hardening as :func:`parser`."""
    return etree.iterparse(_Reading(data), events=events, huge_tree=True, remove_comments=True, remove_pis=True,
                           **_HARDENED, **options)


def qname(namespace: str, name: str) -> str:
    """Clark notation, ``{namespace}name``."""
    return f"{{{namespace}}}{name}"


def escape_text(text: str) -> str:
    """Element text for XML written as a string."""
    return _sax_escape(text)


_ATTRIBUTE_SPECIAL = re.compile(r'[&<>"\n\r\t]')


def escape_attribute(text: str) -> str:
    """An attribute value in double quotes, newlines and tabs kept as character references."""
    if not _ATTRIBUTE_SPECIAL.search(text):
        return text  # the common case (a UDI, a correlator)
    return _sax_escape(text, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


# Unicode categories that can forge a line or reorder what a reader sees: controls
# (C0, C1, DEL), format characters (bidi overrides, zero-width), line and paragraph
# separators.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs"))


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def clean_text(text: str | None, limit: int = 255, *, multiline: bool = False) -> str:
    """Untrusted text made safe to store and show: no control or format characters, at most ``limit`` characters.

    Single-line values lose every such character (a newline becomes a space); with
    ``multiline`` newlines and tabs are kept (command output).  Surrounding
    whitespace is stripped.
    """
    if not text:
        return ""
    if text.isprintable() and len(text) <= limit:
        return text.strip()  # the common case: nothing to do
    kept = []
    for char in text:
        if multiline and char in "\n\t":
            kept.append(char)
        elif char in "\r\n\t\v\f":
            kept.append(" ")
        elif not _unsafe(char):
            kept.append(char)
    return "".join(kept).strip()[:limit]


def decimal(text: str | None) -> int | None:
    """A whole number written in ASCII digits, else None.  ``str.isdigit`` also accepts ``"²"``, which ``int``
    then refuses: a crash on a value anyone can send."""
    text = (text or "").strip()
    return int(text) if text.isascii() and text.isdigit() else None


def visible(text: str) -> str:
    """A value for a log line or a table cell: control and format characters shown as escapes, never raw."""
    if text.isprintable():
        return text
    return "".join(char if char == " " or not _unsafe(char) else repr(char)[1:-1] for char in text)
