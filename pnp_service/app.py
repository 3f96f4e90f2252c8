"""The PnP HTTP listener as a Flask application (factory: :func:`create_app`).

Owns HTTP only: routes, body size limit, content types, status codes.  What a
message means is decided by :class:`pnp_service.listener.Listener`.
"""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, request, send_file
from werkzeug.exceptions import HTTPException

from .listener import Listener, ListenerSettings, Reply
from .logs import event
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import health
from .stores.base import Store
from .xmlsafe import decimal

log = logging.getLogger("pnp_service.listener")

#: What agents send (and no content type at all); text/plain is tolerated for hand-made requests.
ACCEPTED_TYPES = {"", "application/xml", "text/xml", "text/plain"}


def create_app(store: Store, settings: ListenerSettings | None = None, listener: Listener | None = None) -> Flask:
    listener = listener or Listener(store, settings)
    app = Flask("pnp_service")
    # Werkzeug answers 413 for larger bodies before the view reads them.
    app.config["MAX_CONTENT_LENGTH"] = listener.settings.max_body_bytes
    app.extensions["pnp_listener"] = listener

    def respond(reply: Reply) -> Response:
        if reply.file_path:
            return send_file(reply.file_path, mimetype=reply.content_type, conditional=True)
        response = Response(reply.body, status=reply.status, content_type=reply.content_type)
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    def address() -> str:
        return request.remote_addr or ""

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

    def unacceptable_type() -> Response | None:
        """Agents send XML (application/xml or text/xml); refuse bodies that say they are something else."""
        if request.environ.get("CONTENT_TYPE", "") in ACCEPTED_TYPES:
            return None  # the common case, without parsing the header
        mimetype = request.mimetype
        if mimetype in ACCEPTED_TYPES or mimetype.endswith("+xml"):
            return None
        listener.metrics.refused.labels("bad-content-type").inc()
        event(log, logging.WARNING, "bad-content-type", address=address(), path=request.path, content_type=mimetype)
        return Response(f"415 Unsupported Media Type: send XML, not {mimetype}\n", status=415, content_type="text/plain")

    def host_url() -> str:
        return request.host_url

    def body() -> bytes:
        """The request body; read straight from the server's input when its length is declared and allowed."""
        environ = request.environ
        length = decimal(environ.get("CONTENT_LENGTH"))
        if length is not None and length <= listener.settings.max_body_bytes and "wsgi.input" in environ:
            return environ["wsgi.input"].read(length)
        return request.get_data(cache=False)  # chunked, or too large: werkzeug answers 413

    @app.post("/pnp/WORK-REQUEST")
    def work_request() -> Response:
        refused = unacceptable_type()
        if refused is not None:
            return refused
        return respond(listener.work_request(body(), address(), host_url, request.scheme == "https"))

    @app.post("/pnp/WORK-RESPONSE")
    def work_response() -> Response:
        refused = unacceptable_type()
        if refused is not None:
            return refused
        return respond(listener.work_response(body(), address(), host_url, request.scheme == "https"))

    @app.get("/pnp/download/<kind>/<serial>/<revision>")
    @app.get("/pnp/download/<kind>/<serial>/<revision>/<name>")
    def download(kind: str, serial: str, revision: str, name: str = "") -> Response:
        args = request.args
        return respond(listener.download(kind, serial, revision, name, args.get("expires", ""), args.get("sig", ""), address(),
                                         args.get("bound") == "1"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Plain text, no HTML page: agents and curl users read this.
        if error.code and error.code >= 400:
            # Scanners probe every path: a 404 is not worth a warning.
            level = logging.DEBUG if error.code == 404 else logging.WARNING
            listener.metrics.refused.labels(f"http-{error.code}").inc()
            event(log, level, f"http-{error.code}", address=address(), method=request.method, path=request.path)
        return Response(f"{error.code} {error.name}: {error.description}\n", status=error.code, content_type="text/plain")

    return app
