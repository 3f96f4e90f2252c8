"""The roll-out page: how far along a roll-out is, which switches need the operator, what happened to one.

Owns the management web app ``serve --ui [HOST:]PORT`` serves on its own address (127.0.0.1 unless told otherwise,
never on the PnP port: the listener's dispatcher hands a request to it only when it arrived on the UI's socket).
A page (plain HTML, CSS and a little JavaScript from this package: no CDN, no build step) that polls two JSON
resources and redraws itself without a reload:

* ``GET /api/rollout?state=S&q=TEXT&limit=N``: counts by state, the progress, the devices (filtered by state and by
  a search in serial, hostname, PID, address and last error; at most ``limit``), the unclaimed devices with the
  command that claims each;
* ``GET /api/device/SERIAL``: one device and its timeline (timeline.py).

What it shows is what ``pnp-service status`` shows: no password, no rendered configuration, no signed URL.  A bind
that is not loopback needs a token (``--ui-token-file``): ``/?token=T`` once sets a cookie, or send
``Authorization: Bearer T``.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from typing import Any, Callable

from flask import Flask, Response, jsonify, request, send_from_directory

from .. import model, views
from ..stores.base import Snapshot, Store
from ..timeline import TimelineDb

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: A snapshot serves every page poll for this long (many open pages cost one read of the store).
SNAPSHOT_SECONDS = 1.0
LIMIT_MAX = 2000
UNCLAIMED_SHOWN = 200
COOKIE = "pnp_ui_token"
HEADERS = {
    # Nothing but this package's own files; no frame may hold the page.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Snapshots:
    """The store's snapshot, taken at most every SNAPSHOT_SECONDS (one read for every open page)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic):
        self.store, self.clock = store, clock
        self._lock = threading.Lock()
        self._taken = float("-inf")
        self._snapshot: Snapshot | None = None

    def get(self) -> Snapshot:
        with self._lock:
            if self._snapshot is None or self.clock() - self._taken >= SNAPSHOT_SECONDS:
                self._snapshot, self._taken = self.store.snapshot(), self.clock()
            return self._snapshot


def device_row(record: model.DeviceRecord, declarations_known: bool = True) -> dict[str, str]:
    """``status``'s row, with the hand-off."""
    shown = views.row(record, declarations_known)
    status = record.status
    shown["handoff"] = str(status.handoff.state) if status is not None and status.handoff.state else ""
    shown["handoff-message"] = status.handoff.message if status is not None else ""
    return shown


def rollout(snapshot: Snapshot, state: str = "", query: str = "", limit: int = 500, claim: str = "") -> dict[str, Any]:
    """What the page shows: counts, progress, the matching devices, the unclaimed ones."""
    rows = [device_row(record, snapshot.declarations_known) for record in snapshot.devices]
    declared = [row for row, record in zip(rows, snapshot.devices) if record.declaration is not None]
    by_state: dict[str, int] = {}
    for row in declared:
        by_state[row["state"]] = by_state.get(row["state"], 0) + 1
    needle = query.strip().lower()
    matching = [row for row in rows if (not state or row["state"] == state)
                and (not needle or any(needle in row[field].lower()
                                       for field in ("serial", "hostname", "pid", "address", "last-error")))]
    unclaimed = [{"serial": entry.serial, "pid": entry.pid, "hostname": entry.hostname, "address": entry.address,
                  "last-seen": model.format_time(entry.last_seen),
                  "claim": claim.replace("{serial}", entry.serial)} for entry in snapshot.unclaimed[:UNCLAIMED_SHOWN]]
    return {
        "totals": {"declared": len(declared), "by_state": by_state, "unclaimed": len(snapshot.unclaimed),
                   "removed": len(rows) - len(declared)},
        "progress": (by_state.get("provisioned", 0) / len(declared)) if declared else 0.0,
        "matched": len(matching),
        "devices": matching[:limit],
        "unclaimed": unclaimed,
        "problems": list(snapshot.problems),
        "summary": views.totals(snapshot),
        "states": [shown.value for shown in views.Shown],
    }


def create_ui(store: Store, timeline: TimelineDb | None = None, token: str = "", claim: str = "") -> Flask:
    """The roll-out page's app.  ``claim``: the command that claims an unclaimed device, with ``{serial}``."""
    app = Flask("pnp_service.ui", static_folder=None)
    snapshots = Snapshots(store)

    def allowed() -> bool:
        if not token:
            return True
        given = request.cookies.get(COOKIE, "")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            given = header[len("Bearer "):]
        return hmac.compare_digest(given.encode(), token.encode())

    @app.before_request
    def check_token() -> Response | None:
        if token and request.path == "/" and "token" in request.args:
            answer = Response(status=303, headers={"Location": "/"})
            if hmac.compare_digest(request.args["token"].encode(), token.encode()):
                answer.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure)
            return answer
        if not allowed():
            return Response("401 Unauthorized: open /?token=TOKEN once, or send Authorization: Bearer TOKEN\n",
                            status=401, content_type="text/plain")
        return None

    @app.after_request
    def harden(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    @app.get("/")
    def page() -> Response:
        return send_from_directory(STATIC, "index.html", max_age=0)

    @app.get("/static/<name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC, name, max_age=0)

    @app.get("/api/rollout")
    def api_rollout() -> Response:
        try:
            limit = max(1, min(int(request.args.get("limit", "500")), LIMIT_MAX))
        except ValueError:
            return Response("400 Bad Request: limit is a number\n", status=400, content_type="text/plain")
        return jsonify(rollout(snapshots.get(), request.args.get("state", ""), request.args.get("q", "")[:100],
                               limit, claim))

    @app.get("/api/device/<serial>")
    def api_device(serial: str) -> Response:
        if not model.is_serial(serial):
            return Response("404 Not Found: not a serial number\n", status=404, content_type="text/plain")
        snapshot = snapshots.get()
        record = next((r for r in snapshot.devices if r.serial == serial), None)
        entries = timeline.of(serial) if timeline is not None else []
        stranger = next((u for u in snapshot.unclaimed if u.serial == serial), None)
        if record is None and stranger is None and not entries:
            return Response(f"404 Not Found: {serial} is not declared and never called in\n", status=404,
                            content_type="text/plain")
        shown = device_row(record, snapshot.declarations_known) if record is not None else {
            "serial": serial, "state": "unclaimed" if stranger is not None else "unknown"}
        return jsonify({"device": shown, "timeline": [entry.as_dict() for entry in entries],
                        "claim": claim.replace("{serial}", serial) if record is None and stranger is not None else ""})

    return app


def dispatch(pnp: Callable, ui: Callable, ui_port: int) -> Callable:
    """One WSGI app for both sockets: a request that arrived on the UI's port goes to the UI, any other to PnP.

    The local port of the accepted connection decides (``SERVER_PORT``), not a Host header a device could set."""

    def app(environ: dict, start_response: Callable) -> Any:
        chosen = ui if environ.get("SERVER_PORT") == str(ui_port) else pnp
        return chosen(environ, start_response)

    return app
