"""The whole loop over real HTTP: a listener on a loopback port, the agent simulator as the client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, datastore_xml
from pnp_service import protocol
from pnp_service.simulator import messages
from pnp_service.simulator import AgentSimulator, SimulatedDevice

BASE = "<serial>{sn}</serial><pid>C9300-24P</pid><hostname>{host}</hostname><config><template>hostname {{{{ hostname }}}}\n</template></config>"


def declare(tmp_path, *bodies) -> str:
    path = str(tmp_path / "ds.xml")
    with open(path, "w") as handle:
        handle.write(datastore_xml(*bodies))
    return path


def simulator(running, clock, **kwargs) -> AgentSimulator:
    return AgentSimulator(running.url, sleep=clock.advance, max_polls=kwargs.pop("max_polls", 40), **kwargs)


def test_declared_device_provisioned_and_unknown_unclaimed(serve, clock, example_path):
    running = serve(example_path)
    sim = simulator(running, clock)
    device = SimulatedDevice("FOC2001X0AB")
    result = sim.run(device)
    assert result.outcome == "configured", result
    assert result.trace == ["device-info", "config-upgrade"]
    assert "hostname access-sw-01" in device.config and "ip address 192.0.2.21" in device.config
    assert running.store.load("FOC2001X0AB").status.state == "provisioned"

    stranger = sim.run(SimulatedDevice("STRANGER1", pid="C9200L-24T-4G"))
    assert stranger.outcome == "backed-off" and "not declared" in stranger.reason
    entry = running.store.load("STRANGER1").unclaimed
    assert entry.pid == "C9200L-24T-4G" and entry.address == "127.0.0.1"


def test_image_upgrade_over_http_is_proven_by_the_device(serve, clock, example_path):
    running = serve(example_path)
    device = SimulatedDevice("FOC2001X0CD", pid="C9300-48P", version="17.3.1", mode="bundle")
    result = simulator(running, clock).run(device)
    assert result.outcome == "configured", result
    # After the install the device reloads and says so; the very next poll asks it what it runs.
    assert result.trace == ["device-info", "image-install", "device-info", "config-upgrade"]
    assert device.version == "17.09.04a" and device.installs == 1
    status = running.store.load("FOC2001X0CD").status
    assert status.state == "provisioned" and status.facts.version == "17.09.04a" and status.facts.mode == "bundle"


def test_a_pid_mismatch_over_http_is_refused_and_the_genuine_switch_provisions(serve, clock, tmp_path):
    running = serve(declare(tmp_path, BASE.format(sn="SN1", host="a")))
    stranger = SimulatedDevice("SN1", pid="C9500-24Y4C")
    result = simulator(running, clock).run(stranger)
    assert result.outcome == "backed-off" and "not the declared device" in result.reason and stranger.config is None
    status = running.store.load("SN1").status
    assert status.state == "planned" and status.error.code == "pid-mismatch" and "C9500-24Y4C" in status.error.message
    genuine = SimulatedDevice("SN1", pid="C9300-24P")
    assert simulator(running, clock).run(genuine).outcome == "configured" and genuine.config
    assert running.store.load("SN1").status.state == "provisioned"


def test_step_that_keeps_failing_ends_in_error(serve, clock, tmp_path):
    running = serve(declare(tmp_path, BASE.format(sn="SN2", host="b")), max_attempts=3, retry_base_seconds=30)
    result = simulator(running, clock).run(SimulatedDevice("SN2", fail_service="config-upgrade"))
    assert result.outcome == "failed"
    assert result.trace.count("config-upgrade") == 3
    status = running.store.load("SN2").status
    assert status.state == "error" and status.attempts == 3
    assert status.error.code == "PnP Service Error 1410" and "gave up after 3" in status.error.message


def post(url, body) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/xml"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_stale_correlator_and_hostile_xml_over_http(serve, tmp_path):
    path = declare(tmp_path, BASE.format(sn="SN3", host="c"))
    running = serve(path)
    udi = protocol.Udi("C9300-24P", "V01", "SN3")
    status, body = post(running.url + "/pnp/WORK-REQUEST", messages.work_request(udi, "good-1"))
    assert status == 200 and messages.parse_server_message(body).service == "device-info"
    before = open(path, "rb").read()

    stale = messages.device_info(udi, "old-0", platform="C9300-24P", version="1", hostname="x", flash_free=1)
    status, body = post(running.url + "/pnp/WORK-RESPONSE", stale)
    assert status == 200 and messages.parse_server_message(body).service == "bye"
    bomb = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]><pnp>&b;</pnp>'
    status, _ = post(running.url + "/pnp/WORK-RESPONSE", bomb)
    assert status == 400
    assert open(path, "rb").read() == before
    assert running.store.load("SN3").status.correlator == "good-1"


def test_many_devices_at_once(serve, clock, tmp_path):
    bodies = [BASE.format(sn=f"MANY{i:03d}", host=f"h{i}") for i in range(20)]
    running = serve(declare(tmp_path, *bodies))
    devices = [SimulatedDevice(f"MANY{i:03d}") for i in range(20)]
    results = simulator(running, clock).run_many(devices, concurrency=8)
    assert [r.outcome for r in results] == ["configured"] * 20
    assert all(running.store.load(d.serial).status.state == "provisioned" for d in devices)
    assert [d.config for d in devices] == [f"hostname h{i}\n" for i in range(20)]


# ----------------------------------------------------------------- the command line, as a newcomer runs it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pnp_service.cli", *args], capture_output=True, text=True, timeout=60, cwd=REPO, **kwargs)


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_serve_agent_status_from_the_command_line(example_path, mode):
    port = free_port()
    command = [sys.executable, "-m", "pnp_service.cli", "serve", "--datastore", example_path, "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command + (["--dev"] if mode == "dev" else []), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/pnp/HELLO", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        agent = cli("agent", "--url", f"http://127.0.0.1:{port}", "--serial", "FOC2001X0AB", "--serial", "NEWBIE1", "--time-scale", "0")
        assert agent.returncode == 0, agent.stdout + agent.stderr
        assert "FOC2001X0AB: configured" in agent.stdout and "NEWBIE1: backed-off" in agent.stdout
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=20)
    assert 'event=request serial="FOC2001X0AB"' in output
    status = cli("status", "--datastore", example_path)
    assert status.returncode == 0, status.stderr
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:-1]}
    assert lines["FOC2001X0AB"] == "provisioned" and lines["NEWBIE1"] == "unclaimed"
    assert lines["FOC2001X0CD"] == "planned"
    assert status.stdout.splitlines()[-1] == "2 declared: 1 provisioned, 1 planned; 1 unclaimed"


def test_status_of_a_missing_datastore_says_so(tmp_path):
    result = cli("status", "--datastore", str(tmp_path / "missing.xml"))
    assert result.returncode == 1 and "no such file" in result.stderr and "pnp-service init" in result.stderr
    assert "Traceback" not in result.stderr and os.listdir(tmp_path) == []


def test_option43_points_at_the_port_serve_listens_on():
    assert cli("option43", "192.0.2.10").stdout.strip() == "5A1N;B2;K4;I192.0.2.10;J8080"
    assert cli("option43", "pnp.example.net", "--https", "--port", "443").stdout.strip() == "5A1N;B1;K5;Ipnp.example.net;J443"


@pytest.mark.parametrize("args, message", [
    (["option43", "not an ip!"], "is not an IP address or a host name"),
    (["option43", "192.0.2.1", "--port", "70000"], "70000 is not a port"),
    (["serve", "--port", "99999"], "99999 is not a port"),
    (["serve", "--datastore", "/nowhere/typo.xml", "--port", "8"], "no such file"),
    (["status", "--format", "yaml"], "invalid choice"),
])
def test_bad_values_are_one_line_errors_without_a_traceback(args, message):
    result = cli(*args)
    assert result.returncode in (1, 2) and message in result.stderr and "Traceback" not in result.stderr


def test_credentials_reach_an_agent_that_asks(serve, clock, tmp_path):
    body = BASE.format(sn="SN9", host="i") + "<credentials><username>netops</username><password>s3cret</password></credentials>"
    running = serve(declare(tmp_path, body))
    asking = SimulatedDevice("SN9", auth_required=True)
    assert simulator(running, clock).run(asking).outcome == "configured"
    assert asking.credentials == ("netops", "s3cret")
