"""A PnP agent simulator that answers like an IOS-XE switch, for demos, tests and the benchmark.

Owns the client side of the protocol: HELLO, then WORK-REQUEST / WORK-RESPONSE
rounds until the device is configured (a config-upgrade with reload), is told
to terminate, is told to back off for longer than ``max_wait`` seconds (an
unclaimed or failed device), or ``max_polls`` runs out.  A simulated device can
be a stack of several switches (the active member's UDI in its requests, every
member in device-info, ``show switch`` with a V-Mismatch member), run in
install or bundle mode, have too little flash, lack the agent's installer,
take its time to reload (and poll once more before it does, as real agents do),
fail a service or answer it with a fault.  After a reload its work request
carries the reason block; the version it then runs is the one in the name of
the image it was told to install (as a real switch boots what it copied),
never anything read from a URL's query.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import itertools
import logging
import re
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
    flash: str = "flash"  # bootflash on a C9500 or a CSR
    #: install (boots packages.conf, as Catalyst 9000s usually do) or bundle (boots a .bin).
    mode: str = "install"
    #: Bytes ``install remove inactive`` frees (old packages of install mode).
    inactive_bytes: int = 0
    #: The agent drives the installer for image-install in install mode; without it: error 1827.
    installer: bool = True
    auth_required: bool = False
    #: Other switches of its stack: (serial, pid); this device is the active member, slot ``active_slot``.
    stack: tuple[tuple[str, str], ...] = ()
    active_slot: int = 1
    #: Serials of stack members that run another version (``show switch`` says V-Mismatch).
    mismatched: tuple[str, ...] = ()
    #: Seconds a reload takes; the agent polls once more (with the old version) before it reloads when set.
    reload_seconds: float = 0.0
    poll_before_reload: bool = False
    #: Its SUDI certificate and key (PEM); without them a device-auth request gets error 3407.
    sudi_cert: bytes = b""
    sudi_key: bytes = b""
    #: The SSH host key (OpenSSH line) of the NETCONF server this device stands for.
    ssh_host_key: str = ""
    #: A spoofer's trick: answer every challenge with this signature (one captured earlier).
    replay_signature: bytes = b""
    #: A PnP service (e.g. ``config-upgrade``) this device always fails, with ``fail_code``.
    fail_service: str = ""
    fail_code: str = "PnP Service Error 1410"
    #: A PnP service this device answers with a fault.
    fault_service: str = ""
    #: Where it is cabled: (upstream device, its port), one uplink each (TenGigabitEthernet1/1/1, 1/1/2, ...).
    neighbors: tuple[tuple[str, str], ...] = ()
    #: Whether its agent answers the topology service (else a fault: it is asked by CLI instead).
    topology: bool = True
    # What happened to it:
    config: str | None = None
    trustpool: str = ""
    reconnect: str = ""
    last_signature: bytes = b""
    credentials: tuple[str, str] | None = None
    installs: int = 0
    files: dict[str, int] = dataclasses.field(default_factory=dict)
    pending_version: str = ""
    reloaded: str = ""
    reload_polls: int = 0

    @property
    def udi(self) -> protocol.Udi:
        return protocol.Udi(self.pid, "V01", self.serial)

    @property
    def uplinks(self) -> list[messages.Uplink]:
        return [messages.Uplink(f"TenGigabitEthernet1/1/{n}", device, port)
                for n, (device, port) in enumerate(self.neighbors, start=1)]

    @property
    def image_file(self) -> str:
        return f"{self.flash}:packages.conf" if self.mode == "install" else f"{self.flash}:cat9k_iosxe.{self.version}.SPA.bin"

    def members(self) -> list[tuple[int, protocol.Udi]]:
        if not self.stack:
            return []
        others = iter(self.stack)
        slots = []
        for slot in range(1, len(self.stack) + 2):
            if slot == self.active_slot:
                slots.append((slot, self.udi))
            else:
                serial, pid = next(others)
                slots.append((slot, protocol.Udi(pid, "V01", serial)))
        return slots


@dataclasses.dataclass
class SimulationResult:
    serial: str
    outcome: str  # configured | failed | terminated | backed-off | max-polls | http-error
    polls: int
    reason: str = ""
    trace: list[str] = dataclasses.field(default_factory=list)


class _Http:
    """One keep-alive connection to the listener (per simulated device)."""

    def __init__(self, base_url: str, timeout: float, verify_tls: bool, cadata: str = "", source: str = "",
                 timed: Callable[[str, float], None] | None = None):
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.timeout = timeout
        self.timed = timed
        self.source = (source, 0) if source else None
        self.context = None
        if parts.scheme == "https":
            # A device trusts what is in its trustpool: the bundle it was told to install, when it was.
            self.context = ssl.create_default_context(cadata=cadata or None)
            if not verify_tls:
                self.context.check_hostname = False
                self.context.verify_mode = ssl.CERT_NONE
        self._connections: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, netloc: str, scheme: str) -> http.client.HTTPConnection:
        key = f"{scheme}://{netloc}"
        if key not in self._connections:
            if scheme == "https":
                self._connections[key] = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self.context,
                                                                     source_address=self.source)
            else:
                self._connections[key] = http.client.HTTPConnection(netloc, timeout=self.timeout, source_address=self.source)
        return self._connections[key]

    def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        parts = urlsplit(urljoin(self.base_url, url))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "application/xml"} if body is not None else {}
        for attempt in (1, 2):  # a kept-alive connection the server closed is retried once
            connection = self._connection(parts.netloc, parts.scheme)
            try:
                began = time.perf_counter()
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.status, response.read()
                if self.timed is not None:
                    self.timed(f"{method} {parts.path}", time.perf_counter() - began)
                return answer
            except (http.client.HTTPException, ConnectionError, OSError):
                connection.close()
                self._connections.pop(f"{parts.scheme}://{parts.netloc}", None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()


#: Progress callback: (serial, what happened).
Progress = Callable[[str, str], None]


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
        progress: Progress | None = None,
        source_address: str = "",
        timed: Callable[[str, float], None] | None = None,
        finished: Callable[[SimulationResult], None] | None = None,
    ):
        self.base_url = base_url.rstrip("/") + "/"
        self.max_polls = max_polls
        self.max_wait = max_wait
        self.sleep = sleep
        self.time_scale = time_scale
        self.timeout = timeout
        self.verify_tls = verify_tls
        self.progress = progress or (lambda serial, text: None)
        #: The address the devices call from (a loopback one, e.g. 127.0.0.2 to play a second host).
        self.source_address = source_address
        #: Told each exchange and how long it took: ``timed("POST /pnp/WORK-REQUEST", seconds)``.
        self.timed = timed
        #: Told each device's result as soon as it has one.
        self.finished = finished or (lambda result: None)
        self._counter = itertools.count(1)

    def run(self, device: SimulatedDevice) -> SimulationResult:
        client = _Http(self.base_url, self.timeout, self.verify_tls, source=self.source_address, timed=self.timed)
        result = SimulationResult(device.serial, "max-polls", 0)
        try:
            self._run(device, client, result)
        except (OSError, HttpError, http.client.HTTPException, protocol.ProtocolError) as exc:
            result.outcome, result.reason = "http-error", str(exc)
        finally:
            client.close()
        self.finished(result)
        return result

    def run_many(self, devices: Iterable[SimulatedDevice], concurrency: int = 10) -> list[SimulationResult]:
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            return list(pool.map(self.run, devices))

    # ------------------------------------------------------------------ the agent loop

    def _run(self, device: SimulatedDevice, http: _Http, result: SimulationResult) -> None:
        status, _ = http.request("GET", "pnp/HELLO")
        if status != 200:
            raise HttpError(f"HELLO answered {status}")
        connection = [http]  # the device may be told to reconnect elsewhere: the one in use is closed at the end
        try:
            self._rounds(device, connection, result)
        finally:
            connection[0].close()

    def _rounds(self, device: SimulatedDevice, connection: list[_Http], result: SimulationResult) -> None:
        http = connection[0]
        told = ""  # the last backoff, as a line: told again at once means the listener insists
        while result.polls < self.max_polls:
            result.polls += 1
            self._maybe_reload(device)
            correlator = f"CiscoPnP-1.0-{next(self._counter)}-{uuid.uuid4().hex[:12]}"
            message = self._post(http, "pnp/WORK-REQUEST", messages.work_request(
                device.udi, correlator, device.hostname, device.auth_required, device.reloaded))
            device.reloaded = ""
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
                if device.pending_version:
                    continue  # it reloads before any backoff ends (the reload takes reload_seconds)
                if wait > self.max_wait:
                    if reason == "provisioned" and device.config is not None:  # applied to running, no reload
                        result.outcome, result.reason = "configured", "provisioned, configuration applied"
                        return
                    failed = "failed" in reason
                    result.outcome, result.reason = ("failed" if failed else "backed-off"), f"{reason} ({wait:.0f}s)"
                    return
                # A backoff the listener repeats at once (a retry after a failure, a reload wait) is waited out
                # in real time whatever the time scale: nothing changes for the device before that.
                insists = reason == told
                told = reason
                if insists and wait * self.time_scale < wait:
                    self.progress(device.serial, f"waiting {wait:.0f}s: {reason}")
                    self.sleep(wait)
                elif not insists:
                    self.progress(device.serial, f"backoff {wait:.0f}s: {reason}")
                    self.sleep(wait * self.time_scale)
                else:
                    self.sleep(wait * self.time_scale)
                continue
            told = ""
            if request.username is not None:
                device.credentials = (request.username, request.password or "")
            self.progress(device.serial, _describe(request))
            reply, done = self._perform(device, http, request)
            if reply is not None:
                self._respond(http, device, reply)
            if device.reconnect:  # a certificate-install said: call that server, over HTTPS, from now on
                http.close()
                http = connection[0] = _Http(device.reconnect, self.timeout, True, device.trustpool, self.source_address, self.timed)
                self.progress(device.serial, f"reconnecting to {device.reconnect}")
                device.reconnect = ""
                status, _ = http.request("GET", "pnp/HELLO")
            if done:
                result.outcome, result.reason = "configured", "configuration applied, reloading"
                return

    def _maybe_reload(self, device: SimulatedDevice) -> None:
        """A pending reload happens now (after one more poll with the old version, when the agent does that)."""
        if not device.pending_version:
            return
        if device.poll_before_reload and device.reload_polls == 0:
            device.reload_polls += 1
            return
        self.sleep(device.reload_seconds * self.time_scale)
        device.version, device.pending_version, device.reload_polls = device.pending_version, "", 0
        device.reloaded = "reload-command"
        self.progress(device.serial, f"reloaded, now runs {device.version}")

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

    # ------------------------------------------------------------------ what the device does

    def _error(self, device: SimulatedDevice, request: messages.ServerMessage, code: int, text: str) -> bytes:
        error = protocol.ErrorInfo("ERROR", f"PnP Service Error {code}", text)
        return messages.response(device.udi, request.service, request.correlator, False, error)

    def _fetch(self, http: _Http, location: str, checksum: str = "") -> tuple[bool, bytes, str]:
        """Copy a file: from the listener for real (checked against its MD5); elsewhere only pretended."""
        host = urlsplit(urljoin(self.base_url, location)).hostname or ""
        if host not in ("127.0.0.1", "::1", "localhost", urlsplit(self.base_url).hostname):
            return True, b"", ""  # never fetched from a non-loopback host: the copy is simulated
        status, body = http.request("GET", location)
        if status != 200:
            return False, b"", f"copy {urlsplit(location).path} failed: HTTP {status}"
        if checksum and hashlib.md5(body).hexdigest() != checksum.lower():
            return False, b"", "copy failed: checksum mismatch"
        return True, body, ""

    def _perform(self, device: SimulatedDevice, http: _Http, request: messages.ServerMessage) -> tuple[bytes | None, bool]:
        """Do what the request asks; the response (None: the device reloaded without answering), and whether done."""
        service, correlator, udi = request.service, request.correlator, device.udi
        if service == device.fault_service:
            return messages.fault(udi, "Client", f"simulated fault for {service}"), False
        if service == device.fail_service:
            return self._error(device, request, int(device.fail_code.rsplit(" ", 1)[-1]), f"simulated failure of {service}"), False
        if service == "device-info":
            fs = messages.FileSystem(name=device.flash, size=device.flash_free * 2 + 1, free=device.flash_free)
            reply = messages.device_info(
                udi, correlator, platform=device.pid, version=device.version, hostname=device.hostname,
                image_file=device.image_file, file_systems=[fs], members=device.members())
            return reply, False
        if service == "image-install":
            return self._image_install(device, http, request), False
        if service == "config-upgrade":
            location = request.find_text("config/copy/source/location")
            ok, body, why = self._fetch(http, location)
            if not ok:
                return self._error(device, request, 1404, why), False
            device.config = body.decode("utf-8", "replace")
            reloads = request.find("reload") is not None
            return messages.response(udi, service, correlator), reloads
        if service == "cli-exec":
            return self._cli(device, http, request)
        if service == "device-auth":
            return self._device_auth(device, request), False
        if service == "certificate-install":
            ok, body, why = self._fetch(http, request.find_text("certificateInstall/cert/install/trustpool/copy/source/location"))
            if not ok or b"BEGIN CERTIFICATE" not in body:
                return self._error(device, request, 2200, why or "not a certificate bundle"), False
            device.trustpool = body.decode("ascii", "replace")
            server = request.find("certificateInstall/reconnect/primary-server/server-address")
            if server is not None:
                host = next((child.text for child in server if etree_local(child) != "port"), "")
                port = request.find_text("certificateInstall/reconnect/primary-server/server-address/port") or "443"
                device.reconnect = f"https://{'[' + host + ']' if ':' in (host or '') else host}:{port}/"
            return messages.response(udi, service, correlator), False
        if service == "topology":
            if not device.topology:
                return messages.fault(udi, "Client", "unknown service topology"), False
            return messages.topology_response(udi, correlator, device.uplinks), False
        if service in ("cli-config", "capability"):
            return messages.response(udi, service, correlator), False
        return messages.fault(udi, "Client", f"unknown service {service}"), False

    def _device_auth(self, device: SimulatedDevice, request: messages.ServerMessage) -> bytes:
        if not device.sudi_cert or not device.sudi_key:
            return self._error(device, request, 3407, "SUDI not available")
        challenge = request.find_text("deviceAuth/challenge-request")
        hashing = "SHA512" if "SHA256" not in request.find_text("deviceAuth/hash-method") else "SHA256"
        signature, method = messages.sign_challenge(device.sudi_key, challenge, hashing)
        device.last_signature = signature
        return messages.device_auth_response(device.udi, request.correlator, device.sudi_cert,
                                             device.replay_signature or signature, method, hashing)

    def _image_install(self, device: SimulatedDevice, http: _Http, request: messages.ServerMessage) -> bytes:
        location = request.find_text("image/copy/source/location")
        name = _file_name(location)
        if device.mode == "install" and not device.installer:
            return self._error(device, request, 1827, "installer API missing")
        if name.endswith("packages.conf"):
            return self._error(device, request, 1806, "invalid image format")
        destination = request.find_text("image/copy/destination/location") or f"{device.flash}:"
        if destination.rstrip(":") != device.flash:
            return self._error(device, request, 1824, f"invalid destination file system {destination}")
        ok, body, why = self._fetch(http, location, request.find_text("image/copy/source/checksum"))
        if not ok:
            return self._error(device, request, 1803, why)
        size = len(body) or 1_000_000_000
        if size > device.flash_free:
            return self._error(device, request, 1825, "no space on destination file system")
        device.flash_free -= size
        device.installs += 1
        if request.find("reload") is not None:
            device.pending_version = _version_from_image(name) or device.version
        return messages.response(device.udi, "image-install", request.correlator)

    def _cli(self, device: SimulatedDevice, http: _Http, request: messages.ServerMessage) -> tuple[bytes | None, bool]:
        command = request.find_text("execCLI/cmd")
        udi, correlator = device.udi, request.correlator

        def output(text: str) -> tuple[bytes, bool]:
            return messages.cli_exec_output(udi, correlator, command, text), False

        if command == "show switch":
            lines = ["Switch/Stack Mac Address : 0011.2233.4455 - Local Mac Address",
                     "Switch#   Role    Mac Address     Priority Version  State",
                     "-" * 60]
            for slot, member in device.members() or [(1, device.udi)]:
                role = "Active" if member.serial == device.serial else "Member"
                state = "V-Mismatch" if member.serial in device.mismatched else "Ready"
                marker = "*" if member.serial == device.serial else " "
                lines.append(f"{marker}{slot}       {role:<7} 0011.2233.44{slot:02d}     15     V01      {state}")
            return output("\n".join(lines))
        if command == "show cdp neighbors detail":
            return output(messages.cdp_neighbors_detail(device.uplinks))
        if command == "show lldp neighbors detail":
            return output(messages.lldp_neighbors_detail(device.uplinks))
        if command.startswith("show crypto key mypubkey"):
            return output(_ios_key_data(device.ssh_host_key) if device.ssh_host_key else "% Key pair was not found")
        if command.startswith("crypto key generate"):
            return output("The name for the keys will be: pnp-ssh\n% The key modulus size is 2048 bits\n[OK]")
        if command == "install remove inactive":
            device.flash_free += device.inactive_bytes
            device.inactive_bytes = 0
            return output("install_remove: Removing INACTIVE files\nSUCCESS: install_remove")
        match = re.fullmatch(r"copy (\S+) (\w+):(\S+)", command)
        if match:
            ok, body, why = self._fetch(http, match.group(1))
            size = len(body) or 1_000_000_000
            if not ok or size > device.flash_free:
                error = protocol.ErrorInfo("ERROR", "PnP Service Error 1300", why or "%Error copying (No space left on device)")
                return messages.response(udi, "cli-exec", correlator, False, error), False
            device.flash_free -= size
            device.files[match.group(3)] = size
            return output(f"{size} bytes copied")
        match = re.fullmatch(r"install add file (\w+):(\S+) activate commit prompt-level none", command)
        if match:
            if match.group(2) not in device.files:
                error = protocol.ErrorInfo("ERROR", "PnP Service Error 1300", f"file {match.group(2)} not found")
                return messages.response(udi, "cli-exec", correlator, False, error), False
            device.installs += 1
            device.pending_version = _version_from_image(match.group(2)) or device.version
            return None, False  # install activate reloads the switch before the agent answers
        text = f"Cisco IOS XE Software, Version {device.version}\n{device.hostname} uptime is 1 minute"
        return output(text)


def _ios_key_data(openssh: str) -> str:
    """``show crypto key mypubkey`` as IOS-XE prints it: the key's DER in hex, in groups."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(openssh.encode())
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex().upper()
    groups = [der[i : i + 8] for i in range(0, len(der), 8)]
    lines = ["  " + " ".join(groups[i : i + 8]) for i in range(0, len(groups), 8)]
    return "\n".join(["% Key pair was generated at: 09:00:00 UTC Dec 1 2026", "Key name: pnp-ssh",
                      "Key type: RSA KEYS", " Storage Device: private-config", " Usage: General Purpose Key",
                      " Key is not exportable.", " Key Data:", *lines])


def _describe(request: messages.ServerMessage) -> str:
    if request.service == "cli-exec":
        return f"cli-exec: {request.find_text('execCLI/cmd')}"
    if request.service == "image-install":
        return f"image-install: {_file_name(request.find_text('image/copy/source/location'))}"
    if request.service == "device-auth":
        return "device-auth: proving its SUDI identity"
    return request.service


class HttpError(RuntimeError):
    pass


def etree_local(element) -> str:
    return element.tag.rpartition("}")[2]


def _file_name(location: str) -> str:
    """The file a device names its copy after: the last segment of the URL's path."""
    return urlsplit(location).path.rsplit("/", 1)[-1]


def _version_from_image(name: str) -> str:
    """IOS-XE image names carry the version: cat9k_iosxe.17.09.04a.SPA.bin -> 17.09.04a."""
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit() and index + 2 < len(parts):
            return ".".join(parts[index : index + 3])
    return ""


def simulated_fleet(prefix: str, count: int, **kwargs) -> list[SimulatedDevice]:
    width = max(4, len(str(count)))
    return [SimulatedDevice(serial=f"{prefix}{index:0{width}d}", **kwargs) for index in range(1, count + 1)]
