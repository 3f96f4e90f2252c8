"""A roll-out under load, on ``pnp-service serve`` with its default settings (a real process, a real port).

While 300 idle, 100 slow-header and 50 slow-body connections are held and 32 devices pull a large image at about
128 KiB/s, 20 other declared devices provision fully, every exchange answered well under a second; the connections
that never sent a whole request are closed within about a minute, and the slow downloads keep flowing.
(test_strangers_load.py: what a flood of made-up serials leaves behind.)
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import pytest


from conftest import REPO, datastore_xml
from pnp_service import protocol
from pnp_service.simulator import AgentSimulator, SimulatedDevice, messages

IMAGE_NAME = "cat9k_iosxe.17.12.04.SPA.bin"
IMAGE_BYTES = 96 * 1024 * 1024


pytestmark = pytest.mark.heavy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(tmp_path, *extra: str, env: dict[str, str] | None = None, log_name: str = "serve.log",
                store: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int, str]:
    """``serve`` on a free loopback port (``store``: its store options; default the embedded tmp_path/ds.xml)."""
    port = free_port()
    log = tmp_path / log_name
    command = [sys.executable, "-m", "pnp_service.cli", "serve", *(store or ("--datastore", str(tmp_path / "ds.xml"))),
               "--host", "127.0.0.1", "--port", str(port), *extra]
    server = subprocess.Popen(command, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                              env={**os.environ, "PYTHONPATH": REPO, **(env or {})})
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/pnp/HELLO")
            if connection.getresponse().status == 200:
                connection.close()
                return server, port, str(log)
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError(f"serve did not start: {log.read_text()}")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()


class SlowDownload(threading.Thread):
    """A device that was sent an image-install and pulls the image at about 128 KiB/s, as over a branch's WAN link."""

    def __init__(self, port: int, serial: str):
        super().__init__(daemon=True)
        self.port, self.serial = port, serial
        self.received = 0
        self.stop = threading.Event()
        self.error = ""

    def install_url(self) -> str:
        udi = protocol.Udi("C9300-24P", "V01", self.serial)
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

        def post(path: str, body: bytes) -> messages.ServerMessage:
            connection.request("POST", path, body=body, headers={"Content-Type": "application/xml"})
            return messages.parse_server_message(connection.getresponse().read())

        assert post("/pnp/WORK-REQUEST", messages.work_request(udi, "c1")).service == "device-info"
        post("/pnp/WORK-RESPONSE", messages.device_info(udi, "c1", platform="C9300-24P", version="17.3.1",
                                                        hostname="Switch", image_file="flash:x.bin"))
        install = post("/pnp/WORK-REQUEST", messages.work_request(udi, "c2"))
        assert install.service == "image-install", install
        connection.close()
        return install.find_text("image/copy/source/location")

    def run(self) -> None:
        try:
            url = self.install_url()
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
            path = url.split(f":{self.port}", 1)[1]
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            while not self.stop.is_set():
                chunk = sock.recv(16 * 1024)
                if not chunk:
                    self.error = f"closed after {self.received} bytes"
                    return
                self.received += len(chunk)
                time.sleep(0.125)
            sock.close()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = repr(exc)


def test_a_roll_out_is_served_while_slow_idle_and_downloading_clients_hang_on(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(images / IMAGE_NAME, "wb") as image:
        image.truncate(IMAGE_BYTES)  # sparse: a large image without the disk
    md5 = hashlib.md5(b"\0" * IMAGE_BYTES).hexdigest()
    quick = [f"<serial>QUICK{n:02d}</serial><pid>C9300-24P</pid><hostname>q{n}</hostname>"
             "<config><template>hostname {{ hostname }}</template></config>" for n in range(20)]
    slow = [f"<serial>SLOW{n:02d}</serial><pid>C9300-24P</pid><hostname>s{n}</hostname>"
            f"<config><template>hostname {{{{ hostname }}}}</template></config><image><version>17.12.04</version>"
            f"<url>{IMAGE_NAME}</url><md5>{md5}</md5></image>" for n in range(32)]
    (tmp_path / "ds.xml").write_text(datastore_xml(*quick, *slow))
    server, port, log = start_serve(tmp_path, "--image-dir", str(images))
    held: list[socket.socket] = []
    downloads = [SlowDownload(port, f"SLOW{n:02d}") for n in range(32)]
    try:
        for download in downloads:
            download.start()
        opened = time.monotonic()
        held += [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]  # idle
        for _ in range(100):  # half a request head
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        for _ in range(50):  # a whole head, part of the body
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /pnp/WORK-REQUEST HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
                         b"Content-Length: 2000\r\n\r\n<pnp ")
            held.append(sock)
        stop_trickle = threading.Event()

        def trickle() -> None:  # the slow ones keep sending a byte every few seconds
            while not stop_trickle.wait(3):
                for sock in held[300:]:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1)

        timings: list[float] = []
        lock = threading.Lock()

        def timed(what: str, seconds: float) -> None:
            with lock:
                timings.append(seconds)

        simulator = AgentSimulator(f"http://127.0.0.1:{port}", time_scale=0, max_polls=30, timed=timed)
        results = simulator.run_many([SimulatedDevice(f"QUICK{n:02d}") for n in range(20)], concurrency=20)
        assert [r.outcome for r in results] == ["configured"] * 20, [r for r in results if r.outcome != "configured"]
        assert len(timings) >= 20 * 6
        p99 = statistics.quantiles(timings, n=100)[98]
        assert p99 < 1.0, f"p99 {p99:.3f} s over {len(timings)} exchanges"

        flowing = [d.received for d in downloads]
        assert all(not d.error for d in downloads), [d.error for d in downloads if d.error]
        time.sleep(3)
        assert all(d.received > before for d, before in zip(downloads, flowing)), "a slow download stalled"

        # Every connection that never sent a whole request is closed within about a minute.
        deadline = opened + 65
        closed = 0
        for sock in held:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                while sock.recv(4096):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            except socket.timeout:
                pass
        assert closed == len(held), f"{len(held) - closed} of {len(held)} still open after a minute"
        stop_trickle.set()
        assert all(not d.error for d in downloads), [d.error for d in downloads if d.error]
    finally:
        for download in downloads:
            download.stop.set()
        for sock in held:
            sock.close()
        stop(server)
