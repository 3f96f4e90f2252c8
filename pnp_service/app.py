"""The PnP HTTP listener as a Flask application (factory: :func:`create_app`).

Owns HTTP only: routes, body size limit, content types, status codes.  What a
message means is decided by :class:`pnp_service.listener.Listener`.
"""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .listener import Listener, ListenerSettings, Reply
from .stores.base import Store


def create_app(store: Store, settings: ListenerSettings | None = None, listener: Listener | None = None) -> Flask:
    listener = listener or Listener(store, settings)
    app = Flask("pnp_service")
    # Werkzeug answers 413 for larger bodies before the view reads them.
    app.config["MAX_CONTENT_LENGTH"] = listener.settings.max_body_bytes
    app.extensions["pnp_listener"] = listener

    def respond(reply: Reply) -> Response:
        response = Response(reply.body, status=reply.status, content_type=reply.content_type)
        for name, value in reply.headers:
            response.headers[name] = value
        return response

    def address() -> str:
        return request.remote_addr or ""

    @app.route("/pnp/HELLO", methods=["GET", "HEAD", "POST"])
    def hello() -> Response:
        return Response(b"", status=200, content_type="text/plain")

    @app.post("/pnp/WORK-REQUEST")
    def work_request() -> Response:
        return respond(listener.work_request(request.get_data(cache=False), address(), request.host_url))

    @app.post("/pnp/WORK-RESPONSE")
    def work_response() -> Response:
        return respond(listener.work_response(request.get_data(cache=False), address(), request.host_url))

    @app.get("/pnp/download/<kind>/<serial>/<revision>")
    def download(kind: str, serial: str, revision: str) -> Response:
        args = request.args
        return respond(listener.download(kind, serial, revision, args.get("expires", ""), args.get("sig", ""), address()))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        # Plain text, no HTML page: agents and curl users read this.
        return Response(f"{error.code} {error.name}: {error.description}\n", status=error.code, content_type="text/plain")

    return app
