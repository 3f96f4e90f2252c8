"""The PnP HTTP listener as a Flask application (factory: :func:`create_app`).

Owns HTTP only: routes, body size limit, content types, status codes.  What a
message means is decided by :class:`pnp_service.listener.Listener`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable
from urllib.parse import parse_qsl

from flask import Flask, Response, request
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.http import http_date

from .httpserver import Application, Batched, FileSpan, QuickAnswer, QuickRequest, RangeNotSatisfiable, byte_range
from .listener import Listener, ListenerSettings, Reply
from .logs import event
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import health
from .stores.base import Store
from .xmlsafe import decimal

log = logging.getLogger("pnp_service.listener")

#: What agents send (and no content type at all); text/plain is tolerated for hand-made requests.
ACCEPTED_TYPES = {"", "application/xml", "text/xml", "text/plain"}


def _respond(reply: Reply) -> Response:
    if reply.file_path:
        return _respond_file(reply)
    response = Response(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers:
        response.headers[name] = value
    return response

def _respond_file(reply: Reply) -> Response:
    """An image: whole, or the one range a resuming device asks for; sent with sendfile by our server."""
    def done(sent: int, complete: bool) -> None:
        if reply.on_close is not None:
            reply.on_close(sent, complete)

    try:
        handle = open(reply.file_path, "rb")
    except FileNotFoundError:
        done(0, True)
        return Response("404 Not Found: no such image here\n", status=404, content_type="text/plain")
    except OSError:  # out of file descriptors, say: a moment's trouble, not a missing image
        done(0, True)
        return Response("503 Service Unavailable: retry later\n", status=503, content_type="text/plain",
                        headers={"Retry-After": "60"})
    info = os.fstat(handle.fileno())
    size = info.st_size
    validator = f'"{size:x}-{info.st_mtime_ns:x}"'
    headers = {"Accept-Ranges": "bytes", "ETag": validator, "Last-Modified": http_date(info.st_mtime)}
    if_range = request.headers.get("If-Range")
    try:
        # A resumed transfer of a file that changed since gets the whole new file (If-Range).
        wanted = byte_range(request.headers.get("Range"), size) \
            if if_range is None or if_range in (validator, headers["Last-Modified"]) else None
    except RangeNotSatisfiable:
        handle.close()
        done(0, False)
        return Response(f"416 Range Not Satisfiable: the image has {size} bytes\n", status=416,
                        content_type="text/plain", headers={"Content-Range": f"bytes */{size}"})
    offset, length = wanted or (0, size)
    if request.method == "HEAD":
        handle.close()
        done(0, True)  # a look, not a transfer: it took no slot
        span_body: FileSpan | bytes = b""
    else:
        span_body = FileSpan(handle, offset, length, on_close=lambda sent: done(sent, offset + sent == size))
    response = Response(span_body, status=206 if wanted else 200, mimetype=reply.content_type,
                        headers=headers, direct_passthrough=True)
    response.headers["Content-Length"] = str(length)
    if wanted:
        response.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
    return response


def _address() -> str:
    return request.remote_addr or ""


def _host_url() -> str:
    return request.host_url


def _unacceptable_type(listener: Listener) -> Response | None:
    """Agents send XML (application/xml or text/xml); refuse bodies that say they are something else."""
    if request.environ.get("CONTENT_TYPE", "") in ACCEPTED_TYPES:
        return None  # the common case, without parsing the header
    mimetype = request.mimetype
    if mimetype in ACCEPTED_TYPES or mimetype.endswith("+xml"):
        return None
    listener.metrics.refused.labels("bad-content-type").inc()
    event(log, logging.WARNING, "bad-content-type", address=_address(), path=request.path, content_type=mimetype)
    return Response(f"415 Unsupported Media Type: send XML, not {mimetype}\n", status=415, content_type="text/plain")

def _body(listener: Listener) -> bytes:
    """The request body; read straight from the server's input when its length is declared and allowed."""
    environ = request.environ
    length = decimal(environ.get("CONTENT_LENGTH"))
    try:
        if length is not None and length <= listener.settings.max_body_bytes and "wsgi.input" in environ:
            data = environ["wsgi.input"].read(length)
            if len(data) < length:
                raise BadRequest(f"the body ended after {len(data)} of {length} bytes")
            return data
        return request.get_data(cache=False)  # chunked, or too large: werkzeug answers 413
    except (OSError, ValueError) as exc:  # a broken chunked body under another WSGI server
        raise BadRequest(f"unreadable body: {exc}") from None


def create_app(store: Store, settings: ListenerSettings | None = None, listener: Listener | None = None) -> Flask:
    listener = listener or Listener(store, settings)
    app = Flask("pnp_service")
    # Werkzeug answers 413 for larger bodies before the view reads them.
    app.config["MAX_CONTENT_LENGTH"] = listener.settings.max_body_bytes
    app.extensions["pnp_listener"] = listener

    @app.route("/pnp/HELLO", methods=["GET", "HEAD", "POST"])
    def hello() -> Response:
        return Response(b"", status=200, content_type="text/plain")

    @app.get("/healthz")
    def healthz() -> Response:
        """200 when the store answers, the declarations are valid and the controller is connected; else 503."""
        ok, body = health(listener.store)
        return Response(json.dumps(body) + "\n", status=200 if ok else 503, content_type="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(listener.metrics.render(), status=200, content_type=METRICS_TYPE)

    @app.post("/pnp/WORK-REQUEST")
    def work_request() -> Response:
        refused = _unacceptable_type(listener)
        if refused is not None:
            return refused
        return _respond(listener.work_request(_body(listener), _address(), _host_url, request.scheme == "https"))

    @app.post("/pnp/WORK-RESPONSE")
    def work_response() -> Response:
        refused = _unacceptable_type(listener)
        if refused is not None:
            return refused
        return _respond(listener.work_response(_body(listener), _address(), _host_url, request.scheme == "https"))

    @app.route("/pnp/download/<kind>/<serial>/<revision>", methods=["GET", "HEAD"])
    @app.route("/pnp/download/<kind>/<serial>/<revision>/<name>", methods=["GET", "HEAD"])
    def download(kind: str, serial: str, revision: str, name: str = "") -> Response:
        args = request.args
        return _respond(listener.download(kind, serial, revision, name, args.get("expires", ""), args.get("sig", ""), _address(),
                                         args.get("bound") == "1", head=request.method == "HEAD"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Plain text, no HTML page: agents and curl users read this.
        if error.code and error.code >= 400:
            # Scanners probe every path: a 404 is not worth a warning.
            level = logging.DEBUG if error.code == 404 else logging.WARNING
            listener.metrics.refused.labels(f"http-{error.code}").inc()
            event(log, level, f"http-{error.code}", address=_address(), method=request.method, path=request.path)
        return Response(f"{error.code} {error.name}: {error.description}\n", status=error.code, content_type="text/plain")

    return app


#: What /pnp/HELLO answers (the agent's check that the server is there), as the Flask route does.
HELLO = QuickAnswer(200, b"", "text/plain; charset=utf-8")


def served(app: Flask, ui: Flask | None = None, ui_port: int = 0) -> Application:
    """The app as the listener's HTTP server runs it: polls that change nothing are answered on its event loop
    (no thread hand-off, no Flask request), everything else by the Flask app in a thread.  With ``ui``: what
    arrives on ``ui_port`` is the roll-out page's, and nothing else is."""
    listener: Listener = app.extensions["pnp_listener"]
    handlers = {"/pnp/WORK-REQUEST": listener.quick_work_request, "/pnp/WORK-RESPONSE": listener.quick_work_response}

    def answer(reply: Reply) -> QuickAnswer:
        return QuickAnswer(reply.status, reply.body, reply.content_type, reply.headers)

    def finish_many(laters: list) -> list[QuickAnswer]:
        return [answer(reply) for reply in listener.finish_many(laters)]

    batched = listener.finishes_many_at_once

    def quick_download(request: QuickRequest) -> QuickAnswer | None:
        """A configuration download (text in memory) on the loop; anything else by the Flask route, in a thread."""
        parts = request.path.split("/")[3:]  # "", "pnp", "download", kind, serial, revision[, name]
        if len(parts) not in (3, 4) or not all(parts):
            return None
        args: dict[str, str] = {}
        for key, value in parse_qsl(request.query, keep_blank_values=True):
            args.setdefault(key, value)  # the first, as Flask's request.args.get
        kind, serial, revision = parts[:3]
        reply = listener.quick_download(kind, serial, revision, parts[3] if len(parts) == 4 else "",
                                        args.get("expires", ""), args.get("sig", ""), request.address,
                                        args.get("bound") == "1")
        return answer(reply) if reply is not None else None

    def quick(request: QuickRequest) -> QuickAnswer | Callable[[], QuickAnswer] | Batched | None:
        if ui is not None and request.port == ui_port:
            return None
        if request.path == "/pnp/HELLO" and request.method in ("GET", "HEAD", "POST"):
            return HELLO
        if request.path.startswith("/pnp/download/") and request.method == "GET":
            return quick_download(request)
        handler = handlers.get(request.path)
        if handler is None or request.method != "POST":
            return None
        if request.headers.get("content-type", "") not in ACCEPTED_TYPES:
            return None  # the Flask app reads the media type and answers 415 when it must
        reply = handler(request.body, request.address, lambda: request.host_url, request.scheme == "https")
        if isinstance(reply, Reply):
            return answer(reply)
        if batched:  # the write: in a thread, with the others waiting then (one commit)
            return Batched(reply, finish_many)
        return lambda: answer(reply())  # the write: in a thread

    if ui is None:
        return Application(app, quick, on_close=listener.close)
    from .ui import dispatch

    return Application(dispatch(app, ui, ui_port), quick, on_close=listener.close)

