"""Several listeners on one embedded state database, behind a balancer that sends every request to the other one:
every device provisions, each step is sent once, and when one listener dies halfway the devices finish on the
other. (docs/operations.md, "Several listeners".)"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import signal
import subprocess
import threading
import time
from typing import Callable

import pytest

from balancer import RoundRobin
from conftest import answers_hello, datastore_xml
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from test_rollout_load import free_port, start_serve, stop

pytestmark = pytest.mark.heavy

IMAGE = "cat9k_iosxe.17.12.04.SPA.bin"


def declare(tmp_path, count: int = 20) -> list[str]:
    """``count`` devices; every fourth also installs an image from the listeners' shared image folder."""
    images = tmp_path / "images"
    images.mkdir()
    data = os.urandom(512 * 1024)
    (images / IMAGE).write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    serials = [f"FOC2400X{n:03d}" for n in range(count)]
    bodies = [f"<serial>{serial}</serial><pid>C9300-24P</pid><hostname>sw{n}</hostname>"
              "<config><template>hostname {{ hostname }}</template></config>"
              # The shortest reload wait: an install lost with a killed listener is found out (and sent again) in 10 s.
              + (f"<image><version>17.12.04</version><url>{IMAGE}</url><md5>{md5}</md5><reload-wait>10</reload-wait>"
                 "</image>" if n % 4 == 0 else "")
              for n, serial in enumerate(serials)]
    (tmp_path / "ds.xml").write_text(datastore_xml(*bodies))
    return serials


def provision(url: str, serials: list[str]):
    simulator = AgentSimulator(url, time_scale=0, max_polls=60)
    return simulator.run_many([SimulatedDevice(serial, version="17.09.04") for serial in serials], concurrency=10)


#: What one listener sends a device, each once: with an image, its install and the device-info that verifies it.
PLAIN = ["device-info", "config-upgrade"]
WITH_IMAGE = ["device-info", "image-install", "device-info", "config-upgrade"]


def assert_each_step_sent_once(results) -> None:
    assert [r.outcome for r in results] == ["configured"] * len(results), [
        (r.serial, r.outcome, r.reason, r.trace) for r in results if r.outcome != "configured"]
    for n, result in enumerate(results):
        sent = [entry.split(":")[0] for entry in result.trace]
        assert sent == (WITH_IMAGE if n % 4 == 0 else PLAIN), " ".join([result.serial, *result.trace])


def assert_installed_and_configured_once(results) -> None:
    """When a listener dies mid-exchange: a request it recorded but never delivered is found out (a lost install is
    verified by device-info, then sent again), so questions may repeat; what changes a switch never does."""
    assert [r.outcome for r in results] == ["configured"] * len(results), [
        (r.serial, r.outcome, r.reason, r.trace) for r in results if r.outcome != "configured"]
    for n, result in enumerate(results):
        sent = [entry.split(":")[0] for entry in result.trace]
        assert sent.count("config-upgrade") == 1, " ".join([result.serial, *result.trace])
        assert sent.count("image-install") == (1 if n % 4 == 0 else 0), " ".join([result.serial, *result.trace])


def test_two_listener_processes_on_one_state_database_behind_a_per_request_balancer(tmp_path):
    serials = declare(tmp_path)
    extra = ("--image-dir", str(tmp_path / "images"))
    first, first_port, _ = start_serve(tmp_path, *extra, log_name="first.log")
    second, second_port, _ = start_serve(tmp_path, *extra, log_name="second.log")
    balancer = RoundRobin([first_port, second_port])
    try:
        results = provision(balancer.url, serials)
        assert_each_step_sent_once(results)
        assert min(balancer.sent.values()) >= 0.4 * sum(balancer.sent.values())  # both took a full share
        downloads = sum(count for path, count in balancer.paths.items() if "WORK" not in path and "HELLO" not in path)
        assert downloads >= 5, balancer.paths  # the images went through the balancer too
        assert not balancer.down
    finally:
        balancer.close()
        stop(first)
        stop(second)


def killer(process, after: int = 60) -> tuple[threading.Event, Callable[[int], None]]:
    """A balancer's ``on_request`` that kills ``process`` once, at the ``after``-th request (60 of a 20-device
    roll-out: mid-provisioning, about 40% of the exchanges done), and the event that says it did."""
    killed = threading.Event()

    def kill(count: int) -> None:
        if count >= after and not killed.is_set():
            killed.set()
            kill_listener(process)

    return killed, kill


def test_when_one_listener_dies_halfway_the_devices_finish_on_the_other(tmp_path):
    serials = declare(tmp_path)
    extra = ("--image-dir", str(tmp_path / "images"))
    first, first_port, _ = start_serve(tmp_path, *extra, log_name="first.log")
    second, second_port, _ = start_serve(tmp_path, *extra, log_name="second.log")
    killed, kill_halfway = killer(first)
    balancer = RoundRobin([first_port, second_port], on_request=kill_halfway)
    try:
        results = provision(balancer.url, serials)
        assert killed.is_set() and first.wait(10) is not None
        assert_installed_and_configured_once(results)
        assert first_port in balancer.down and balancer.sent[second_port] > balancer.sent[first_port]
    finally:
        balancer.close()
        stop(first)
        stop(second)


def test_several_workers_of_one_listener_behind_a_per_request_balancer(tmp_path):
    serials = declare(tmp_path)
    server, port, _ = start_serve(tmp_path, "--image-dir", str(tmp_path / "images"), "--workers", "3")
    balancer = RoundRobin([port])  # a new connection per request: the kernel hands each to any worker
    try:
        assert_each_step_sent_once(provision(balancer.url, serials))
    finally:
        balancer.close()
        stop(server)


def kill_listener(process) -> None:
    """SIGKILL to the gunicorn master and its workers at once: the listener dies, nothing finishes gracefully."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == process.pid:
                        children.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    for pid in [process.pid, *children]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- the reference deployment: HAProxy

HAPROXY_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deploy", "haproxy-pnp.cfg")
HAPROXY_GLOBAL = """global
    maxconn 4096
defaults
    log stdout format raw local0
"""


def served_messages(port: int) -> float:
    """pnp_messages_total of one listener, summed over its events (0 when it does not answer)."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    except OSError:
        return 0.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("pnp_messages_total{"))


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed (Debian: apt-get install haproxy)")
def test_the_documented_haproxy_deployment_survives_a_listener_killed_mid_provisioning(tmp_path):
    serials = declare(tmp_path, count=60)
    extra = ("--image-dir", str(tmp_path / "images"))
    first, first_port, _ = start_serve(tmp_path, *extra, log_name="first.log")
    second, second_port, _ = start_serve(tmp_path, *extra, log_name="second.log")
    front = free_port()
    config = open(HAPROXY_CFG).read()
    for written, port in (("*:80", f"127.0.0.1:{front}"), ("127.0.0.1:8081", f"127.0.0.1:{first_port}"),
                          ("127.0.0.1:8082", f"127.0.0.1:{second_port}")):
        assert written in config, f"deploy/haproxy-pnp.cfg no longer has {written}: change the test with it"
        config = config.replace(written, port)
    (tmp_path / "global.cfg").write_text(HAPROXY_GLOBAL)
    (tmp_path / "pnp.cfg").write_text(config)
    haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "global.cfg"), "-f", str(tmp_path / "pnp.cfg")],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "haproxy.log", "wb"))
    listeners = {first_port: first, second_port: second}
    killed: list[int] = []

    def kill_the_busy_one() -> None:  # balance source: one listener serves every device of this address
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for port, process in listeners.items():
                if served_messages(port) >= 60:  # about a fifth of the roll-out's messages
                    kill_listener(process)
                    killed.append(port)
                    break

    try:
        for _ in range(100):
            if answers_hello(front):
                break
            time.sleep(0.1)
        killer = threading.Thread(target=kill_the_busy_one)
        killer.start()
        results = provision(f"http://127.0.0.1:{front}", serials)
        killer.join()
        assert killed, "no listener served 60 messages: the balancer did not send the roll-out to one of them"
        assert_installed_and_configured_once(results)
        survivor = next(port for port in listeners if port not in killed)
        assert served_messages(survivor) > 0
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        stop(first)
        stop(second)
