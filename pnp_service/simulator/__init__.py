"""A PnP agent simulator that answers like an IOS-XE switch, for demos, tests and the benchmark.

Owns the client side of the protocol: HELLO, then WORK-REQUEST / WORK-RESPONSE
rounds until the device is configured (a config-upgrade with reload), is told
to terminate, or is told to back off for longer than ``max_wait`` seconds (an
unclaimed or failed device), or ``max_polls`` runs out.  Behaviour can be bent
per device: a service that always fails, a fault instead of an answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import itertools
import logging
import ssl
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable
from urllib.parse import urljoin, urlsplit

from .. import protocol
from . import messages

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SimulatedDevice:
    serial: str
    pid: str = "C9300-24P"
    version: str = "17.3.1"
    hostname: str = "Switch"
    flash_free: int = 8_000_000_000
    auth_required: bool = False
    #: A PnP service (e.g. ``config-upgrade``) this device always fails, with ``fail_code``.
    fail_service: str = ""
    fail_code: str = "PnP Service Error 1410"
    #: A PnP service this device answers with a fault.
    fault_service: str = ""
    # What happened to it:
    config: str | None = None
    credentials: tuple[str, str] | None = None

    @property
    def udi(self) -> protocol.Udi:
        return protocol.Udi(self.pid, "V01", self.serial)


@dataclasses.dataclass
class SimulationResult:
    serial: str
    outcome: str  # configured | terminated | backed-off | max-polls | http-error
    polls: int
    reason: str = ""
    trace: list[str] = dataclasses.field(default_factory=list)


class _Http:
    """One keep-alive connection to the listener (per simulated device)."""

    def __init__(self, base_url: str, timeout: float, verify_tls: bool):
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.timeout = timeout
        self.context = None
        if parts.scheme == "https":
            self.context = ssl.create_default_context()
            if not verify_tls:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self._connections: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, netloc: str, scheme: str) -> http.client.HTTPConnection:
        key = f"{scheme}://{netloc}"
        if key not in self._connections:
            if scheme == "https":
                self._connections[key] = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self.context)
            else:
                self._connections[key] = http.client.HTTPConnection(netloc, timeout=self.timeout)
        return self._connections[key]

    def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        parts = urlsplit(urljoin(self.base_url, url))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/xml"} if body is not None else {}
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            connection = self._connection(parts.netloc, parts.scheme)
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except (http.client.HTTPException, ConnectionError, OSError):
                connection.close()
                self._connections.pop(f"{parts.scheme}://{parts.netloc}", None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()


class AgentSimulator:
    def __init__(
        self,
        base_url: str,
        *,
        max_polls: int = 100,
        max_wait: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        time_scale: float = 1.0,
        timeout: float = 10.0,
        verify_tls: bool = True,
    ):
        self.base_url = base_url.rstrip("/") + "/"
        self.max_polls = max_polls
        self.max_wait = max_wait
        self.sleep = sleep
        self.time_scale = time_scale
        self.timeout = timeout
        self.verify_tls = verify_tls
        self._counter = itertools.count(1)

    def run(self, device: SimulatedDevice) -> SimulationResult:
        client = _Http(self.base_url, self.timeout, self.verify_tls)
        result = SimulationResult(device.serial, "max-polls", 0)
        try:
            self._run(device, client, result)
        except (OSError, HttpError, http.client.HTTPException, protocol.ProtocolError) as exc:
            result.outcome, result.reason = "http-error", str(exc)
        finally:
            client.close()
        return result

    def run_many(self, devices: Iterable[SimulatedDevice], concurrency: int = 10) -> list[SimulationResult]:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(self.run, devices))

    # ------------------------------------------------------------------ the agent loop

    def _run(self, device: SimulatedDevice, http: _Http, result: SimulationResult) -> None:
        status, _ = http.request("GET", "pnp/HELLO")
        if status != 200:
            raise HttpError(f"HELLO answered {status}")
        while result.polls < self.max_polls:
            result.polls += 1
            correlator = f"CiscoPnP-1.0-{next(self._counter)}-{uuid.uuid4().hex[:12]}"
            message = self._post(http, "pnp/WORK-REQUEST", messages.work_request(
                device.udi, correlator, device.hostname, device.auth_required))
            request = messages.parse_server_message(message)
            result.trace.append(request.service)
            if request.service == "bye":
                continue
            if request.service == "backoff":
                wait, terminate = self._backoff_seconds(request)
                reason = request.find_text("backoff/reason")
                self._respond(http, device, messages.response(device.udi, "backoff", request.correlator))
                if terminate:
                    result.outcome, result.reason = "terminated", reason
                    return
                if wait > self.max_wait:
                    result.outcome, result.reason = "backed-off", f"{reason} ({wait}s)"
                    return
                self.sleep(wait * self.time_scale)
                continue
            if request.username is not None:
                device.credentials = (request.username, request.password or "")
            reply, done = self._perform(device, http, request)
            self._respond(http, device, reply)
            if done:
                result.outcome, result.reason = "configured", "configuration applied, reloading"
                return

    def _post(self, http: _Http, path: str, body: bytes) -> bytes:
        status, data = http.request("POST", path, body)
        if status != 200:
            raise HttpError(f"{path} answered {status}: {data[:200]!r}")
        return data

    def _respond(self, http: _Http, device: SimulatedDevice, body: bytes) -> None:
        reply = messages.parse_server_message(self._post(http, "pnp/WORK-RESPONSE", body))
        if reply.service != "bye":
            raise HttpError(f"WORK-RESPONSE answered with {reply.service}, expected bye")

    @staticmethod
    def _backoff_seconds(request: messages.ServerMessage) -> tuple[float, bool]:
        if request.find("backoff/terminate") is not None:
            return 0, True
        minutes = request.find_text("backoff/defaultMinutes")
        if minutes:
            return int(minutes) * 60, False
        parts = [request.find_text(f"backoff/callbackAfter/{unit}") or "0" for unit in ("hours", "minutes", "seconds")]
        hours, mins, secs = (int(p) for p in parts)
        return hours * 3600 + mins * 60 + secs, False

    def _perform(self, device: SimulatedDevice, http: _Http, request: messages.ServerMessage) -> tuple[bytes, bool]:
        """Do what the request asks; the response, and whether the device is now configured and reloading."""
        service, correlator, udi = request.service, request.correlator, device.udi
        if service == device.fault_service:
            return messages.fault(udi, "Client", f"simulated fault for {service}"), False
        if service == device.fail_service:
            error = protocol.ErrorInfo("ERROR", device.fail_code, f"simulated failure of {service}")
            return messages.response(udi, service, correlator, False, error), False
        if service == "device-info":
            reply = messages.device_info(
                udi, correlator, platform=device.pid, version=device.version,
                hostname=device.hostname, flash_free=device.flash_free)
            return reply, False
        if service == "image-install":
            location = request.find_text("image/copy/source/location")
            version = _version_from_image(location)
            if "/pnp/download/" in location:  # served by the listener itself: copy and check it
                status, body = http.request("GET", location)
                checksum = request.find_text("image/copy/source/checksum")
                if status != 200 or hashlib.md5(body).hexdigest() != checksum:
                    error = protocol.ErrorInfo("ERROR", "PnP Service Error 1803", f"copy {location} failed: HTTP {status}")
                    return messages.response(udi, service, correlator, False, error), False
            if request.find("reload") is not None and version:
                device.version = version  # the reload boots the new image
            return messages.response(udi, service, correlator), False
        if service == "config-upgrade":
            location = request.find_text("config/copy/source/location")
            status, body = http.request("GET", location)
            if status != 200:
                error = protocol.ErrorInfo("ERROR", "PnP Service Error 1403", f"copy {location} failed: HTTP {status}")
                return messages.response(udi, service, correlator, False, error), False
            device.config = body.decode("utf-8", "replace")
            reloads = request.find("reload") is not None
            return messages.response(udi, service, correlator), reloads
        if service == "cli-exec":
            command = request.find_text("execCLI/cmd")
            output = f"Cisco IOS XE Software, Version {device.version}\n{device.hostname} uptime is 1 minute"
            return messages.cli_exec_output(udi, correlator, command, output), False
        if service in ("cli-config", "capability"):
            return messages.response(udi, service, correlator), False
        return messages.fault(udi, "Client", f"unknown service {service}"), False


class HttpError(RuntimeError):
    pass


def _version_from_image(location: str) -> str:
    """IOS-XE image names carry the version: cat9k_iosxe.17.09.04a.SPA.bin -> 17.09.04a."""
    name = location.rsplit("/", 1)[-1]
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit() and index + 2 < len(parts):
            return ".".join(parts[index : index + 3])
    return name


def simulated_fleet(prefix: str, count: int, **kwargs) -> list[SimulatedDevice]:
    width = max(4, len(str(count)))
    return [SimulatedDevice(serial=f"{prefix}{index:0{width}d}", **kwargs) for index in range(1, count + 1)]
