"""The event-driven HTTP/1.1 server the listener runs on: a client costs a socket, never a thread.

Owns connections and nothing else.  One asyncio event loop reads every request
with httptools (llhttp, Node.js's strict parser, as uvicorn uses it) under deadlines: a whole request (head and body) within
``request_timeout`` of its first byte (of the accept, for a connection's first
request), an idle keep-alive connection closed after ``keepalive_timeout``, and
every write bounded by progress (``send_timeout`` without the client taking a
byte, not a total time).  Only once a request is complete does the WSGI
application (the Flask app) run, in a small thread pool, so a slow or silent
client never holds a thread.  A file body (:class:`FileSpan`) is sent by the loop
with ``sendfile`` in bounded chunks: a gigabyte image pulled over a slow link
costs a socket and no thread.  What strangers can grow is capped: open
connections (``max_connections``: an idle keep-alive connection is closed to
make room, else the newcomer gets a 503), requests waiting for a thread
(``max_pending``), header and body sizes.  Every request the server refuses
itself (400, 408, 413, 431, 503) gets a short plain answer and a counter in
:data:`STATS`, never a traceback.

gunicorn runs it as a worker class (``serving.py``); tests and the benchmark
run it in a thread (:func:`start_in_thread`).

The rule of this file: HTTP, sockets and WSGI only; nothing of PnP, Flask or gunicorn.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import io
import logging
import re
import socket
import ssl
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, NoReturn
from urllib.parse import unquote_to_bytes

import httptools

from .logs import event

log = logging.getLogger("pnp_service.http")
access_log = logging.getLogger("pnp_service.access")

WsgiApp = Callable[[dict, Callable[..., Any]], Iterable[bytes]]


@dataclasses.dataclass(frozen=True)
class QuickRequest:
    """A whole request, as :attr:`Application.quick` sees it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    address: str
    scheme: str
    host: str  # the Host header, or the address the client reached
    port: int = 0  # the local port the connection arrived on
    query: str = ""  # the target's query (after "?"), undecoded

    @property
    def host_url(self) -> str:
        return f"{self.scheme}://{self.host}/"


@dataclasses.dataclass(frozen=True)
class QuickAnswer:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Batched:
    """What finishes an answer in a thread together with the others waiting at that moment: ``run_many(items)``
    answers each of the items it is given, in order (one thread hand-off and, for a store, one commit for all)."""

    item: Any
    run_many: Callable[[list[Any]], list[QuickAnswer]]


#: What :attr:`Application.quick` returns: an answer now, what finishes it in a thread (alone, or batched), or None
#: (the WSGI app).
Quick = Callable[[QuickRequest], "QuickAnswer | Callable[[], QuickAnswer] | Batched | None"]

#: Batches of :class:`Batched` work running at once: the next batch gathers what arrives meanwhile.  One: a store
#: commits one batch at a time anyway, and a second thread deciding meanwhile only contends for the interpreter's
#: lock (measured: 15% more server CPU per provisioning with two).
BATCHES_IN_FLIGHT = 1
#: Items in one batch at most: a batch is one transaction, kept short.
BATCH_MAX = 64


class Application:
    """A WSGI application, and what it can answer on the event loop itself, without a thread.

    ``quick(request)`` is called on the loop with every whole request whose body is at most
    ``QUICK_BODY_BYTES``; it returns a :class:`QuickAnswer`, a function that finishes the answer in a thread
    (it waits for something: a durable write), or None to have the WSGI application answer in a thread.
    It must never wait itself: no disk write, no network, no lock a thread may hold for long.  It is how the
    listener answers the polls that change nothing without a thread hand-off, and the others without the WSGI
    layer.  ``on_close`` finishes what the application does behind answers already sent, when the process stops.
    """

    def __init__(self, wsgi: WsgiApp, quick: Quick | None = None, on_close: Callable[[], Any] | None = None):
        self.wsgi, self.quick, self.on_close = wsgi, quick, on_close

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        return self.wsgi(environ, start_response)

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()


#: Bodies larger than this always go to a thread: parsing them is work the loop should not do.
QUICK_BODY_BYTES = 16 * 1024

#: A file goes out with ``sendfile`` in pieces that fit the room the client's socket has now (up to 1 MiB), so a
#: piece never waits on the client; while the socket is full, the server looks every 50 ms whether the client took
#: anything, and only ``send_timeout`` without a byte taken ends the transfer: a slow link that keeps moving,
#: however slowly, is never cut.
SENDFILE_MIN, SENDFILE_MAX, SENDFILE_LOOK = 4 * 1024, 1024 * 1024, 0.05


@dataclasses.dataclass(frozen=True)
class Limits:
    """Deadlines and caps of one server process (``pnp-service serve`` sets them from its options)."""

    #: A whole request, head and body, must arrive within this many seconds of its first byte.
    request_timeout: float = 30.0
    #: An idle keep-alive connection is closed after this many seconds without a new request.
    keepalive_timeout: float = 15.0
    #: A write (an answer, a chunk of a download) that makes no progress for this long closes the connection.
    send_timeout: float = 60.0
    #: Open connections of this process; beyond, an idle one is closed to make room, else the newcomer gets a 503.
    max_connections: int = 4096
    #: Request line and headers together.
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 256 * 1024
    #: Threads that run the application: requests are complete when they get one, so a few suffice.
    threads: int = 8
    #: Complete requests waiting for a thread; beyond, 503 with Retry-After.
    max_pending: int = 1024
    #: Request body bytes buffered at once by all connections of this process; beyond, 503 (4,096 almost complete
    #: bodies of 256 KiB would otherwise hold a gigabyte).
    max_buffered_bytes: int = 32 * 1024 * 1024
    #: Chunks of one chunked request body (agents send Content-Length; a body in one-byte chunks is work, not data).
    max_chunks: int = 1024
    #: How long a graceful stop waits for answers and downloads in flight.
    graceful_timeout: float = 10.0


class Stats:
    """What the server did, for ``/metrics`` (one per process; plain integers, read without a lock)."""

    def __init__(self) -> None:
        self.open_connections = 0
        self.transfers = 0  # file bodies being sent
        self.closed: collections.Counter[str] = collections.Counter()  # connections the server closed, by reason
        self.refused: collections.Counter[int] = collections.Counter()  # answers the server gave itself, by status


STATS = Stats()


# --------------------------------------------------------------------------- file bodies


class FileSpan:
    """A part of an open file as a response body: sent with ``sendfile`` by this server, read in blocks by others.

    ``on_close(sent)`` is called once, with the bytes the client took, when the body is done or abandoned.
    """

    def __init__(self, file: io.BufferedReader, offset: int, length: int,
                 on_close: Callable[[int], None] | None = None, block: int = 256 * 1024):
        self.file, self.offset, self.length = file, offset, length
        self.sent = 0
        self._on_close = on_close
        self._block = block
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        """For any WSGI server (Flask's development server): the span in blocks."""
        self.file.seek(self.offset + self.sent)
        while self.sent < self.length:
            data = self.file.read(min(self._block, self.length - self.sent))
            if not data:
                break
            self.sent += len(data)
            yield data

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.file.close()
        finally:
            if self._on_close is not None:
                self._on_close(self.sent)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range of a ``Range: bytes=...`` header as (offset, length), None to send the whole file.

    Raises :class:`RangeNotSatisfiable` for a range wholly past the end.  Several
    ranges, or a header this does not understand, are ignored (RFC 9110 lets a
    server send the whole representation instead).
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    digits = re.compile(r"[0-9]{0,18}")  # ASCII digits ("²".isdigit() is true, and int() refuses it), 18 at most
    if not dash or not digits.fullmatch(first) or not digits.fullmatch(last) or first == last == "":
        return None
    if first == "":  # the last N bytes
        suffix = int(last)
        if suffix == 0:
            raise RangeNotSatisfiable(size)
        return (max(0, size - suffix), min(suffix, size))
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(size)
    if end < start:
        return None
    return (start, end - start + 1)


class RangeNotSatisfiable(ValueError):
    def __init__(self, size: int):
        super().__init__(f"range not satisfiable (the file has {size} bytes)")
        self.size = size


# --------------------------------------------------------------------------- requests and answers


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """A whole request as a connection read it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case
    http_version: bytes  # b"1.1"
    keep_alive: bool  # what the client asked for (no "Connection: close"; HTTP/1.0 only with "keep-alive")
    body: bytes


#: Requests a client may send ahead of their answers (pipelining: agents never do; a flood of tiny ones is work).
PIPELINED_MAX = 16

#: Headers of the application's answer the server writes itself, from the body (Content-Length too, except for HEAD).
_FRAMING = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_FIELD_TEXT = rb"[\t\x20-\x7e\x80-\xff]*"  # no CR, LF or NUL: a line break in a header would split the answer
_VALID_NAME, _VALID_TEXT = re.compile(_TOKEN), re.compile(_FIELD_TEXT)


# --------------------------------------------------------------------------- WSGI


def _environ(request: Request, body: bytes, peer: tuple, local: tuple, scheme: str) -> dict[str, Any]:
    target = request.target
    if not target.startswith(b"/") and b"://" in target:  # absolute form: http://host/path
        target = b"/" + target.split(b"://", 1)[1].partition(b"/")[2]
    path, _, query = target.partition(b"?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": str(local[0]) if local else "",
        "SERVER_PORT": str(local[1]) if local else "",
        "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": str(peer[0]) if peer else "",
        "REMOTE_PORT": str(peer[1]) if peer else "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in request.headers:
        if b"_" in raw_name:
            continue  # HTTP_X_A would be both X-A and X_A: header smuggling; nothing we serve needs one
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is whole: its length is CONTENT_LENGTH above
        else:
            key = "HTTP_" + name
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


@dataclasses.dataclass
class _Answer:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | FileSpan


def _run_app(app: WsgiApp, environ: dict[str, Any]) -> _Answer:
    """Run the application on a whole request (in a pool thread); the body is read here, a file body is not."""
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = app(environ, start_response)
    if isinstance(result, FileSpan):
        body: bytes | FileSpan = result
    else:
        try:
            body = b"".join(written) + b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    status, headers = started
    code, _, reason = status.partition(" ")
    encoded = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return _Answer(int(code), reason.encode("latin-1"), encoded, body)


# --------------------------------------------------------------------------- connections


def _plain(status: int, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete answer the server gives itself, closing the connection."""
    body = (message + "\n").encode()
    reason = _REASONS.get(status, "Error")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{name}: {value}" for name, value in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class _Close(Exception):
    """End this connection (quietly: the reason was counted)."""


class Connection(asyncio.Protocol):
    """One client: its requests in turn, each under its deadlines.

    The loop drives it through callbacks, with no task of its own: a request the application answers on the loop
    (a :class:`QuickAnswer`) is read, answered and written within the callback that brought its last byte.  What
    waits (a thread, a batch, a file transfer, a TLS handshake, a client slow to take an answer) runs in a task,
    and the connection goes on when it ends; what the client sends meanwhile waits unread (a head's worth at most,
    then reading pauses).  One timer per connection keeps its
    deadline: it is moved only when it fires early, so a request costs no timer of its own.
    """

    def __init__(self, server: Server):
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: tuple = ()
        self.local: tuple = ()
        self.scheme = "http"
        #: Not being answered (between requests, or still reading one): may be closed to make room for another client.
        self.idle = True
        self.buffered = 0  # body bytes of the request being read
        self.evicted = False  # closed to make room: counted once, as such
        self.idle_since = time.monotonic()
        self.closed = False  # closed by the server, or lost
        self._registered = False
        # The request being read (the parser's callbacks fill them in).
        self._in_message = self._in_head = False
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0  # its request line and headers
        self._head_fed = 0  # bytes given to the parser while its head is incomplete
        self._body = bytearray()
        self._chunks = 0
        self._refusal: tuple[Any, ...] | None = None  # what a callback refused it with
        self._ready: collections.deque[Request] = collections.deque()  # whole, waiting for their answers
        self._held = bytearray()  # received while a task answers
        self._eof = False  # the client has sent all it will
        self._no_more = False  # an upgrade was asked for: the connection ends after its answer
        self._keep_alive = True  # of the answer being sent
        #: What the deadline ends: "idle" (waiting for a keep-alive request's first byte), "request" (a request must
        #: be whole by then), or None (a task is answering under deadlines of its own).
        self._deadline_kind: str | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None  # what answers (or shakes hands) now
        self._paused = False  # reading paused: the client sent too much ahead
        self._writing_paused = False
        self._drained: asyncio.Future | None = None

    # ------------------------------------------------------------------ the loop's callbacks

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or ()
        self.local = transport.get_extra_info("sockname") or ()
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _keepalive(sock)
        server = self.server
        if len(server.connections) >= self.limits.max_connections and not server._make_room():
            STATS.refused[503] += 1
            STATS.closed["too-many-connections"] += 1
            transport.write(_plain(503, "503 Service Unavailable: too many connections, retry later",
                                   (("Retry-After", "5"),)))
            self._close()
            return
        server.connections.add(self)
        STATS.open_connections += 1
        self._registered = True
        if server.ssl_context is not None:  # the handshake, counted and under the request deadline
            self._task = self.loop.create_task(self._handshake(server.ssl_context))
            self._task.add_done_callback(self._task_done)
        else:
            self._expect("request", self.limits.request_timeout)  # the first request: from the accept

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._task is not None:  # sent ahead of its answer: kept until the answer is out
            self._held += data
            # Agents never send ahead: beyond a head's worth, the kernel's buffers hold the rest (not this process).
            if len(self._held) > self.limits.max_header_bytes and not self._paused:
                self.transport.pause_reading()
                self._paused = True
            return
        self._feed(data)
        self._go_on()

    def eof_received(self) -> bool:
        self._eof = True
        if self._task is None:
            self._go_on()
        # The answer being made may still be written (the connection is closed when it is); TLS cannot half-close.
        return self.scheme != "https"

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.closed and not self.evicted:
            STATS.closed["reset"] += 1
        self.closed = True
        self._forget()
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("the client went away"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # ------------------------------------------------------------------ deadlines

    def _expect(self, kind: str, seconds: float) -> None:
        self._deadline_kind, self._deadline = kind, self.loop.time() + seconds
        if self._timer is not None and self._timer.when() > self._deadline:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        if self.closed or self._deadline_kind is None:
            return
        if self.loop.time() < self._deadline:  # moved on since the timer was set
            self._timer = self.loop.call_at(self._deadline, self._deadline_passed)
        elif self._deadline_kind == "idle":
            STATS.closed["idle"] += 1
            self._close()
        else:
            self._refuse(408, f"408 Request Timeout: send a whole request within {self.limits.request_timeout:g} s",
                         reason="request-timeout")

    # ------------------------------------------------------------------ reading

    def _feed(self, data: bytes) -> None:
        """Parse ``data``: each whole request joins :attr:`_ready`; a request broken or over a cap is refused."""
        if self._no_more:
            return  # after an upgrade request: nothing more is read
        if self._in_head or not self._in_message:
            self._head_fed += len(data)  # httptools holds a head's pieces itself: bounded here
        if self._deadline_kind == "idle":  # the next request began: it has the request deadline now
            self._expect("request", self.limits.request_timeout)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._no_more = True  # answered (the request is whole), never upgraded: the connection ends after it
        except httptools.HttpParserError as exc:
            refusal = self._refusal or (400, f"400 Bad Request: {exc}")
            self._ready.clear()
            self._refuse(*refusal)
            return
        if not self._in_message or not self._in_head:
            self._head_fed = 0
        elif self._head_fed > self.limits.max_header_bytes:
            self._refuse(431, self._too_large_head())

    def _too_large_head(self) -> str:
        return (f"431 Request Header Fields Too Large: at most {self.limits.max_header_bytes} bytes of request line "
                "and headers")

    def _refuse_within(self, status: int, message: str) -> NoReturn:
        """From a parser callback: stop parsing, and refuse."""
        self._refusal = (status, message)
        raise _Close()

    # The parser's callbacks (httptools calls them from feed_data).

    def on_message_begin(self) -> None:
        self._in_message, self._in_head = True, True
        self._url, self._headers, self._head_size = [], [], 0
        self._body, self._chunks = bytearray(), 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_bytes:
            self._refuse_within(431, self._too_large_head())

    def on_headers_complete(self) -> None:
        self._in_head = False
        limits = self.limits
        declared = next((value for name, value in self._headers if name == b"content-length"), None)
        if declared is not None and int(declared) > limits.max_body_bytes:  # the parser has checked it is a number
            self._refuse_within(413, f"413 Content Too Large: at most {limits.max_body_bytes} bytes")
        expects = any(name == b"expect" and value.lower() == b"100-continue" for name, value in self._headers)
        chunked = any(name == b"transfer-encoding" for name, _ in self._headers)  # the parser allows only chunked
        if expects and (chunked or declared not in (None, b"0")):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_chunk_header(self) -> None:
        self._chunks += 1
        if self._chunks > self.limits.max_chunks:
            self._refuse_within(400, f"400 Bad Request: a body in more than {self.limits.max_chunks} chunks")

    def on_body(self, data: bytes) -> None:
        limits = self.limits
        self._body += data
        self.buffered += len(data)
        self.server.buffered += len(data)
        if len(self._body) > limits.max_body_bytes:
            self._refuse_within(413, f"413 Content Too Large: at most {limits.max_body_bytes} bytes")
        if self.server.buffered > limits.max_buffered_bytes:
            self._refusal = (503, "503 Service Unavailable: busy, retry later", "", (("Retry-After", "5"),))
            raise _Close()

    def on_message_complete(self) -> None:
        parser = self._parser
        self._ready.append(Request(parser.get_method(), b"".join(self._url), self._headers,
                                   parser.get_http_version().encode("ascii"), parser.should_keep_alive(),
                                   bytes(self._body)))
        self._in_message = self._in_head = False
        self._body = bytearray()
        self._release_buffer()
        if len(self._ready) > PIPELINED_MAX:
            self._refuse_within(400, f"400 Bad Request: more than {PIPELINED_MAX} requests sent ahead of their "
                                "answers")

    def _go_on(self) -> None:
        """Answer the whole requests read, in turn, until one waits for a task; then see whether the client is done."""
        while self._task is None and not self.closed:
            if self._ready:
                self._answer(self._ready.popleft())
                continue
            if self._eof:
                if self._in_message:  # the client went away in the middle of its request
                    STATS.closed["truncated"] += 1
                    self._refuse(400, "400 Bad Request: the connection ended before the request was whole")
                else:
                    self._close()
            return

    # ------------------------------------------------------------------ answering

    def _quick(self, request: Request) -> QuickAnswer | Callable[[], QuickAnswer] | Batched | None:
        quick = self.server.quick
        if quick is None or len(request.body) > QUICK_BODY_BYTES:
            return None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in request.headers}
        host = headers.get("host") or (f"{self.local[0]}:{self.local[1]}" if self.local else "")
        target, _, query = request.target.partition(b"?")
        path = unquote_to_bytes(target).decode("latin-1")
        try:
            return quick(QuickRequest(request.method.decode("ascii"), path, headers, request.body,
                                      str(self.peer[0]) if self.peer else "", self.scheme, host,
                                      int(self.local[1]) if self.local else 0, query.decode("latin-1")))
        except Exception:  # noqa: BLE001 - the WSGI app answers (and logs) what the quick path could not
            log.exception("quick answer failed on %s %r; answered in a thread", request.method.decode("ascii"), path)
            return None

    def _answer(self, request: Request) -> None:
        """Answer a whole request: now when the application can, else in a task."""
        self.idle = False
        self._deadline_kind = None
        began = self.loop.time()
        quick = self._quick(request)
        if isinstance(quick, QuickAnswer):
            head = self._head(request, _from_quick(quick))
            if head is not None:
                self.transport.write(head if request.method == b"HEAD" else head + quick.body)
                self._answered(request, quick.status, len(quick.body), began)
                self._next_request()
            return
        if self.server.pending >= self.limits.max_pending:
            self._refuse(503, "503 Service Unavailable: busy, retry later", extra=(("Retry-After", "5"),))
            return
        self._run(self._answer_later(request, quick, began))

    def _run(self, work: Any) -> None:
        """Run ``work`` (a coroutine) as this connection's task; what the client sends meanwhile waits for it."""
        self._task = self.loop.create_task(work)
        self._task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._task = None
        if task.cancelled():
            self._close()
            return
        error = task.exception()
        if isinstance(error, (ConnectionError, OSError, ssl.SSLError)):
            if not self.closed and not self.evicted:
                STATS.closed["reset"] += 1
            self._close()
        elif error is not None and not isinstance(error, _Close):
            log.error("a connection's answer failed", exc_info=error)
            self._close()
        elif error is not None or self.closed:
            self._close()
        else:
            if self._paused:
                self._paused = False
                with contextlib.suppress(RuntimeError):  # a transport closed meanwhile
                    self.transport.resume_reading()
            held, self._held = bytes(self._held), bytearray()
            if held:
                self._feed(held)
            self._go_on()

    async def _answer_later(self, request: Request, quick: Callable[[], QuickAnswer] | Batched | None,
                            began: float) -> None:
        server = self.server
        what = f"{request.method.decode('ascii')} {request.target.partition(b'?')[0].decode('latin-1')}"
        server.pending += 1
        try:
            if isinstance(quick, Batched):
                answer = _from_quick(await server.batched(quick))
            elif quick is not None:
                answer = _from_quick(await self.loop.run_in_executor(server.pool, quick))
            else:
                environ = _environ(request, request.body, self.peer, self.local, self.scheme)
                answer = await self.loop.run_in_executor(server.pool, _run_app, server.app, environ)
        except Exception:  # noqa: BLE001 - an application bug must not end the server
            log.exception("the application failed on %r", what)
            self._refuse(500, "500 Internal Server Error")
            raise _Close() from None
        finally:
            server.pending -= 1
        if self.closed:  # the client went away while it was made
            if isinstance(answer.body, FileSpan):
                answer.body.close()
            raise _Close()
        head = self._head(request, answer)
        if head is None:
            raise _Close()
        if isinstance(answer.body, FileSpan):
            try:
                await self._send(head)
            except BaseException:
                answer.body.close()  # its transfer slot goes back whatever ended the connection
                raise
            await self._send_file(answer.body, request.method == b"HEAD")
            sent = answer.body.sent
        else:
            await self._send(head if request.method == b"HEAD" else head + answer.body)
            sent = len(answer.body)
        self._answered(request, answer.status, sent, began)
        self._next_request()

    def _head(self, request: Request, answer: _Answer) -> bytes | None:
        """The answer's status line and headers, framed by the length of its body; None once refused as not valid
        HTTP (a header with a line break in it would split the answer in two)."""
        self._keep_alive = (request.keep_alive and request.http_version == b"1.1" and not self.server.stopping
                            and not self._no_more)
        body = answer.body
        length = body.length if isinstance(body, FileSpan) else len(body)
        bodiless = answer.status < 200 or answer.status in (204, 304)
        valid = 100 <= answer.status <= 999 and _VALID_TEXT.fullmatch(answer.reason)
        lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, answer.reason)]
        for name, value in answer.headers:
            lower = name.lower()
            if lower in _FRAMING or (lower == b"content-length" and request.method != b"HEAD"):
                continue  # framed here, from the body itself
            valid = valid and _VALID_NAME.fullmatch(name) and _VALID_TEXT.fullmatch(value)
            lines += (name, b": ", value, b"\r\n")
        if not valid:
            if isinstance(body, FileSpan):
                body.close()
            log.error("the application's answer is not valid HTTP: %r", b"".join(lines)[:300])
            self._refuse(500, "500 Internal Server Error")
            return None
        if not bodiless and request.method != b"HEAD":
            lines.append(b"content-length: %d\r\n" % length)
        if not self._keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def _answered(self, request: Request, status: int, sent: int, began: float) -> None:
        if self.server.access_log:
            # The path only: a download URL carries its signature in the query.
            event(access_log, logging.INFO, "access", address=str(self.peer[0]) if self.peer else "",
                  method=request.method.decode("ascii"),
                  path=unquote_to_bytes(request.target.partition(b"?")[0]).decode("latin-1"), status=status,
                  bytes=sent, seconds=round(self.loop.time() - began, 3))

    def _next_request(self) -> None:
        """After an answer: wait for the client's next request, or close."""
        if self.closed or not self._keep_alive:
            self._close()
            return
        self.idle, self.idle_since = True, time.monotonic()
        self._expect("idle", self.limits.keepalive_timeout)
        if self._writing_paused and self._task is None:  # the client has not taken the answer yet: wait for it
            self._run(self._send(b""))

    # ------------------------------------------------------------------ writing

    async def _send(self, data: bytes) -> None:
        """Write ``data``; returns once the client has taken enough of it (``send_timeout`` without: closed)."""
        if data:
            self.transport.write(data)
        if not self._writing_paused:
            return
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        try:
            async with asyncio.timeout(self.limits.send_timeout):
                await asyncio.shield(self._drained)
        except TimeoutError:
            STATS.closed["send-timeout"] += 1
            raise _Close() from None

    async def _send_file(self, span: FileSpan, head_only: bool) -> None:
        loop = self.loop
        STATS.transfers += 1
        try:
            if not head_only and span.length:
                transport = self.transport
                sock = transport.get_extra_info("socket")
                moved, queued_before = loop.time(), -1
                while span.sent < span.length:
                    if self.closed:
                        raise _Close()
                    queued, capacity = _unsent(sock), _send_buffer(sock)
                    queued += transport.get_write_buffer_size()
                    # A quarter of the buffer at most in flight: how much the kernel takes of a full one varies
                    # with the client's window, and a piece that does not fit would wait on the client.
                    room = capacity // 4 - queued
                    if room < SENDFILE_MIN:  # the client has not taken what it was given: look again soon
                        if 0 <= queued < queued_before:
                            moved = loop.time()
                        queued_before = queued
                        if loop.time() - moved > self.limits.send_timeout:
                            STATS.closed["send-timeout"] += 1
                            raise _Close()
                        await asyncio.sleep(SENDFILE_LOOK)
                        continue
                    size = min(room, SENDFILE_MAX, span.length - span.sent)
                    try:
                        async with asyncio.timeout(self.limits.send_timeout):
                            sent = await loop.sendfile(transport, span.file, span.offset + span.sent, size)
                    except TimeoutError:
                        STATS.closed["send-timeout"] += 1
                        raise _Close() from None
                    if not sent:
                        raise _Close()  # the file shrank under us
                    span.sent += sent
                    moved, queued_before = loop.time(), -1
        finally:
            STATS.transfers -= 1
            span.close()

    # ------------------------------------------------------------------ TLS, refusals, closing

    async def _handshake(self, context: ssl.SSLContext) -> None:
        plain = self.transport
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                secure = await self.loop.start_tls(plain, self, context, server_side=True)
        except (TimeoutError, ssl.SSLError, ConnectionError, OSError):
            secure = None
        if secure is None:
            STATS.closed["tls-handshake"] += 1
            plain.close()
            self.closed = True
            self._forget()  # the TLS layer never tells this protocol of a connection it did not make
            raise _Close()
        self.transport, self.scheme = secure, "https"
        self._expect("request", self.limits.request_timeout)

    def _refuse(self, status: int, message: str, reason: str = "", extra: tuple[tuple[str, str], ...] = ()) -> None:
        """Answer with a short plain message and close the connection."""
        if self.closed:
            return
        STATS.refused[status] += 1
        STATS.closed[reason or f"refused-{status}"] += 1
        with contextlib.suppress(Exception):
            self.transport.write(_plain(status, message, extra))
        self._close()

    def _close(self) -> None:
        """Close once what was written is sent; a client that does not take it within seconds is cut."""
        self.closed = True
        self._deadline_kind = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            self.loop.call_later(min(5.0, self.limits.send_timeout), transport.abort)

    def _release_buffer(self) -> None:
        self.server.buffered -= self.buffered
        self.buffered = 0

    def _forget(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._release_buffer()
        if self._registered:
            self._registered = False
            self.server.connections.discard(self)
            STATS.open_connections -= 1


def _from_quick(answer: QuickAnswer) -> _Answer:
    headers = [(b"content-type", answer.content_type.encode("latin-1")),
               (b"content-length", str(len(answer.body)).encode())]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    return _Answer(answer.status, _REASONS.get(answer.status, "OK" if answer.status == 200 else "").encode(), headers,
                   answer.body)


def _unsent(sock: Any) -> int:
    """Bytes the kernel holds for the peer that it has not taken yet (Linux: TIOCOUTQ); 0 where unknown."""
    try:
        import fcntl
        import termios

        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (OSError, AttributeError, ImportError, ValueError):
        return 0


def _send_buffer(sock: Any) -> int:
    """Room of the socket's send buffer for data (the kernel reports twice what it holds of it)."""
    try:
        return max(SENDFILE_MIN * 2, sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) // 2)
    except (OSError, AttributeError):
        return SENDFILE_MAX


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive: a peer that vanished (a switch that reloaded mid-download) is noticed by the kernel."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


# --------------------------------------------------------------------------- the server


class Server:
    """Serves a WSGI app on already bound, listening sockets until :meth:`stop`."""

    def __init__(self, app: WsgiApp, limits: Limits | None = None, ssl_context: ssl.SSLContext | None = None,
                 access_log: bool = False):
        self.app = app
        #: What the application answers on the loop (:class:`Application`), when it says.
        self.quick = app.quick if isinstance(app, Application) else None
        self.limits = limits or Limits()
        #: A line per answer (method, path without its query, status, bytes, seconds) on ``pnp_service.access``.
        self.access_log = access_log
        self.ssl_context = ssl_context
        self.pool = concurrent.futures.ThreadPoolExecutor(self.limits.threads, thread_name_prefix="pnp-app")
        self.connections: set[Connection] = set()
        self.pending = 0
        self.buffered = 0  # request body bytes held by all connections
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._batch: list[tuple[Batched, asyncio.Future]] = []  # waiting for a batch
        self._batches = 0  # running

    def batched(self, work: Batched) -> asyncio.Future:
        """Run ``work`` in a thread with the other batched work waiting when a batch starts; its answer."""
        future = asyncio.get_running_loop().create_future()
        self._batch.append((work, future))
        self._start_batches()
        return future

    def _start_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._batch and self._batches < BATCHES_IN_FLIGHT:
            run_many = self._batch[0][0].run_many
            batch = [entry for entry in self._batch if entry[0].run_many is run_many][:BATCH_MAX]
            taken = {id(entry) for entry in batch}
            self._batch = [entry for entry in self._batch if id(entry) not in taken]
            self._batches += 1
            done = loop.run_in_executor(self.pool, run_many, [work.item for work, _ in batch])
            done.add_done_callback(functools.partial(self._batch_done, batch))

    def _batch_done(self, batch: list[tuple[Batched, asyncio.Future]], done: asyncio.Future) -> None:
        self._batches -= 1
        cancelled = done.cancelled()
        error = None if cancelled else done.exception()
        answers = done.result() if not cancelled and error is None else []
        for index, (_, future) in enumerate(batch):
            if future.done():  # its connection went away meanwhile
                continue
            if cancelled:
                future.cancel()
            elif error is not None:
                future.set_exception(error)
            elif index < len(answers):
                future.set_result(answers[index])
            else:
                future.set_exception(RuntimeError("a batch answered fewer items than it was given"))
        self._start_batches()

    async def serve(self, sockets: Iterable[socket.socket], started: Callable[[], None] | None = None) -> None:
        self._stop = asyncio.Event()
        asyncio.get_running_loop().set_exception_handler(_QuietLoopErrors())
        # TLS is started by each connection itself (Connection._handshake): a client in its handshake is counted and
        # evicted like any other, and a failed handshake is a counter, not a log line.
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(lambda: Connection(self), sock=sock) for sock in sockets]
        if started is not None:
            started()
        try:
            await self._stop.wait()
        finally:
            self.stopping = True
            for listening in servers:
                listening.close()
            await self._drain()
            self.pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Stop taking connections; answers and downloads in flight get ``graceful_timeout`` to finish."""
        self.stopping = True
        if self._stop is not None:
            self._stop.set()

    async def _drain(self) -> None:
        for connection in list(self.connections):
            if connection.idle:
                connection._close()
        deadline = time.monotonic() + self.limits.graceful_timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()

    def _make_room(self) -> bool:
        """Close the longest idle keep-alive connection; False when every connection is busy."""
        idle = [c for c in self.connections if c.idle]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c.idle_since)
        oldest.idle = False
        oldest.evicted = True
        oldest._close()
        STATS.closed["idle-evicted"] += 1
        return True


class _QuietLoopErrors:
    """The event loop's error reports, at most one line a minute per kind: asyncio writes a traceback for each
    accept() that fails (out of file descriptors), thousands a second under a flood."""

    def __init__(self, every: float = 60.0):
        self.every = every
        self._said: dict[str, float] = {}
        self._since: collections.Counter[str] = collections.Counter()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exception = context.get("exception")
        kind = f"{context.get('message', '')} {type(exception).__name__ if exception else ''}".strip()
        self._since[kind] += 1
        now = time.monotonic()
        if now - self._said.get(kind, float("-inf")) < self.every:
            return
        self._said[kind] = now
        count, self._since[kind] = self._since[kind], 0
        event(log, logging.ERROR, "event-loop-error", what=kind, detail=str(exception or ""), times=count)


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (at most the hard limit); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


# --------------------------------------------------------------------------- in a thread (tests, benchmark)


class Running:
    """A server running in a thread of its own on a loopback port."""

    def __init__(self, server: Server, sock: socket.socket):
        self.server = server
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="pnp-http", daemon=True)
        self.thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the HTTP server did not start")

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self.server.serve([self._sock], self._ready.set)

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self.thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.stop)
        self.thread.join(timeout=self.server.limits.graceful_timeout + 5)
        self._sock.close()


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 1024) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def start_in_thread(app: WsgiApp, host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None,
                    ssl_context: ssl.SSLContext | None = None, access_log: bool = False) -> Running:
    """Serve ``app`` from a thread of this process (tests, the benchmark); ``.stop()`` ends it."""
    return Running(Server(app, limits, ssl_context, access_log), listening_socket(host, port))


__all__ = ["Application", "Batched", "Connection", "FileSpan", "Limits", "QuickAnswer", "QuickRequest", "RangeNotSatisfiable", "Running", "STATS", "Server", "Stats",
           "byte_range", "listening_socket", "raise_open_files_limit", "start_in_thread"]
