"""The benchmark's baseline: a bare Flask app that answers every WORK-REQUEST with a fixed bye."""

from flask import Flask, Response

BYE = (
    b"<?xml version='1.0' encoding='UTF-8'?>\n"
    b'<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:X,VID:V01,SN:X">'
    b'<info xmlns="urn:cisco:pnp:work-info" correlator="c"><workInfo><bye/></workInfo></info></pnp>'
)


def create_app() -> Flask:
    app = Flask("baseline")

    @app.post("/pnp/WORK-REQUEST")
    def work_request() -> Response:
        return Response(BYE, content_type="application/xml")

    @app.route("/pnp/HELLO", methods=["GET", "HEAD", "POST"])
    def hello() -> Response:
        return Response(b"", content_type="text/plain")

    return app
