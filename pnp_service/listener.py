"""The listener's request handling, independent of the web framework.

Owns the path from an HTTP body to an HTTP answer: parse with the protocol
core, run the provisioner on the store's record under the store's lock, write
the change, log one line per device event, and serve signed downloads.  The
Flask app (``app.py``) only adapts requests and responses to these calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time
from typing import Callable

from . import protocol
from .downloads import UrlSigner
from .model import DeviceRecord
from .provisioner import Contact, Decision, Provisioner, Settings
from .steps import StepRegistry
from .stores.base import Store, StoreUnavailable

log = logging.getLogger("pnp_service.listener")

XML = "application/xml"
TEXT = "text/plain; charset=utf-8"


#: The URL the device called us at (or a function returning it, evaluated only when needed).
BaseUrl = str | Callable[[], str]


@dataclasses.dataclass(frozen=True)
class ListenerSettings:
    provisioning: Settings = Settings()
    max_body_bytes: int = protocol.MAX_MESSAGE_BYTES
    #: Base URL devices use to reach this listener, e.g. ``https://pnp.example.net``;
    #: empty: the URL the device called.
    public_url: str = ""
    secret: bytes = b""
    download_lifetime_seconds: int = 3600
    #: Folder of image files served to devices whose ``image/url`` is a bare file name.
    image_dir: str = ""


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = TEXT
    headers: tuple[tuple[str, str], ...] = ()
    #: A file to stream instead of ``body`` (image downloads).
    file_path: str = ""


def _error(status: int, message: str) -> Reply:
    return Reply(status, (message + "\n").encode(), TEXT)


class Listener:
    def __init__(
        self,
        store: Store,
        settings: ListenerSettings | None = None,
        registry: StepRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.settings = settings or ListenerSettings()
        if not self.settings.secret:
            raise ValueError("ListenerSettings.secret is required to sign download URLs")
        self.provisioner = Provisioner(self.settings.provisioning, registry)
        self.signer = UrlSigner(self.settings.secret, self.settings.download_lifetime_seconds)
        self.clock = clock

    # ------------------------------------------------------------------ PnP endpoints

    def work_request(self, body: bytes, address: str, base_url: BaseUrl) -> Reply:
        try:
            request = protocol.parse_work_request(body)
        except protocol.ProtocolError as exc:
            log.warning("address=%s event=bad-work-request %s", address, exc)
            return _error(400, f"bad WORK-REQUEST: {exc}")
        contact = self._contact(address, base_url)
        return self._decide(
            request.udi.serial,
            lambda record: self.provisioner.on_work_request(record, request, contact),
            address,
        )

    def work_response(self, body: bytes, address: str, base_url: BaseUrl) -> Reply:
        try:
            response = protocol.parse_work_response(body)
        except protocol.ProtocolError as exc:
            log.warning("address=%s event=bad-work-response %s", address, exc)
            return _error(400, f"bad WORK-RESPONSE: {exc}")
        contact = self._contact(address, base_url)
        return self._decide(
            response.udi.serial,
            lambda record: self.provisioner.on_work_response(record, response, contact),
            address,
        )

    def _decide(self, serial: str, decide: Callable[[DeviceRecord], Decision], address: str) -> Reply:
        try:
            decision = self.store.update(serial, decide)
            if decision.event in ("stale", "unexpected"):
                # Another listener may have sent that request: look again at the store, once.
                self.store.reload(serial)
                decision = self.store.update(serial, decide)
        except StoreUnavailable as exc:
            log.error("serial=%s address=%s event=store-unavailable %s", serial, address, exc)
            return Reply(503, b"store unavailable, retry later\n", TEXT, (("Retry-After", "30"),))
        level = logging.WARNING if decision.event in ("stale", "unexpected", "fault", "retry", "fail") else logging.INFO
        log.log(level, "serial=%s address=%s event=%s %s", serial, address, decision.event, decision.detail)
        return Reply(200, decision.reply, XML)

    def _contact(self, address: str, base_url: BaseUrl) -> Contact:
        now = self.clock()

        def download_url(kind: str, serial: str, revision: str) -> str:
            # The base URL is worked out only when a download URL is needed, not on every poll.
            root = self.settings.public_url or (base_url() if callable(base_url) else base_url)
            return root.rstrip("/") + self.signer.path(kind, serial, revision, now)

        return Contact(now=utcnow_from(now), address=address, download_url=download_url)

    # ------------------------------------------------------------------ downloads

    def download(self, kind: str, serial: str, revision: str, expires: str, signature: str, address: str) -> Reply:
        refused = self.signer.check(kind, serial, revision, expires, signature, self.clock())
        if refused:
            log.warning("serial=%s address=%s event=download-refused kind=%s %s", serial, address, kind, refused)
            return _error(403, f"download refused: {refused}")
        work = self.store.load(serial).work
        if work is None or work.revision != revision:
            log.warning("serial=%s address=%s event=download-refused kind=%s revision %s is not current",
                        serial, address, kind, revision)
            return _error(404, "no such download (the work changed; the device will be sent a new URL)")
        if kind == "config":
            for step in work.steps:
                if step.type == "config-upgrade" and "config" in step.params:
                    # The configuration carries secrets: log its size, never its text.
                    config = step.params["config"].encode()
                    log.info("serial=%s address=%s event=download kind=config bytes=%d", serial, address, len(config))
                    return Reply(200, config, TEXT)
        if kind == "image":
            path = self._image_path(work)
            if path:
                log.info("serial=%s address=%s event=download kind=image file=%s", serial, address, os.path.basename(path))
                return Reply(200, content_type="application/octet-stream", file_path=path)
        return _error(404, f"this device's work has no {kind} to download here")

    def _image_path(self, work) -> str:
        """The local file of the work's image, when it is a bare name inside ``image_dir``."""
        if not self.settings.image_dir:
            return ""
        for step in work.steps:
            name = step.params.get("location", "") if step.type == "image-install" else ""
            if name and "://" not in name and os.path.basename(name) == name and not name.startswith("."):
                root = os.path.realpath(self.settings.image_dir)
                path = os.path.realpath(os.path.join(root, name))
                if os.path.dirname(path) == root and os.path.isfile(path):
                    return path
        return ""


def utcnow_from(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), dt.timezone.utc)
