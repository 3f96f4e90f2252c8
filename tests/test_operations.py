"""An operator's day: health and metrics, logs that tell one device's story, a command line without tracebacks,
a simulator that tells the truth."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO, SECRET, FakeClock, datastore_xml, open_store
from pnp_service import protocol
from pnp_service.app import create_app
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice, messages

UDI = protocol.Udi("C9300-24P", "V01", "FOC2001X0AB")


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pnp_service.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, **kwargs)


@pytest.fixture
def client(example_path):
    store = open_store(example_path)
    settings = ListenerSettings(secret=SECRET)
    listener = Listener(store, settings, clock=FakeClock())
    return create_app(store, settings, listener=listener).test_client(), example_path


def test_healthz_says_ok_and_names_what_is_wrong(client):
    http, path = client
    response = http.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok", "store": "EmbeddedStore", "problems": []}
    with open(path, "a") as handle:
        handle.write("<broken")  # an invalid live edit
    response = http.get("/healthz")  # it serves the last valid declarations: a balancer keeps it, an operator looks
    assert response.status_code == 200 and response.json["status"] == "degraded"
    assert "not well-formed" in response.json["problems"][0]


def test_healthz_is_503_only_when_the_store_cannot_be_read(client):
    http, path = client
    listener = http.application.extensions["pnp_listener"]
    listener.store.load = lambda serial: (_ for _ in ()).throw(OSError("disk gone"))
    response = http.get("/healthz")
    assert response.status_code == 503 and "disk gone" in " ".join(response.json["problems"])


def test_metrics_count_messages_refusals_writes_and_devices(client):
    http, _ = client
    http.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c1"), content_type="text/xml")
    http.post("/pnp/WORK-REQUEST", data=b"<not-pnp/>", content_type="text/xml")
    http.post("/pnp/WORK-REQUEST", data=b"x", content_type="application/json")
    http.post("/pnp/WORK-REQUEST", data=messages.work_request(protocol.Udi("X", "", "STRANGER1"), "c2"))
    text = http.get("/metrics").data.decode()
    assert 'pnp_messages_total{event="request"} 1.0' in text and 'pnp_messages_total{event="unclaimed"} 1.0' in text
    assert 'pnp_refused_inputs_total{reason="bad-work-request"} 1.0' in text
    assert 'pnp_refused_inputs_total{reason="bad-content-type"} 1.0' in text
    assert 'pnp_devices{state="onboarding"} 1.0' in text and 'pnp_devices{state="unclaimed"} 1.0' in text
    assert "pnp_store_write_seconds_count 2.0" in text


def test_a_scanners_404_is_not_a_warning(client, caplog):
    http, _ = client
    with caplog.at_level(logging.DEBUG):
        assert http.get("/wp-login.php").status_code == 404
    assert [r.levelno for r in caplog.records if "http-404" in r.getMessage()] == [logging.DEBUG]


def test_the_log_tells_one_devices_story(tmp_path, serve, clock, caplog):
    image = b"IMAGE" * 10_000
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat9k_iosxe.17.09.04a.SPA.bin").write_bytes(image)
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(
        "<serial>SN1</serial><pid>C9300-48P</pid><hostname>access-7</hostname><config><template>hostname {{ hostname }}"
        f"</template></config><image><version>17.09.04a</version><url>cat9k_iosxe.17.09.04a.SPA.bin</url>"
        f"<md5>{hashlib.md5(image).hexdigest()}</md5></image>"))
    running = serve(str(path), image_dir=str(tmp_path / "images"))
    caplog.set_level(logging.INFO, logger="pnp_service")
    result = AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN1", pid="C9300-48P", mode="bundle"))
    assert result.outcome == "configured"
    from pnp_service.logs import TextFormatter

    # A web server's request line (Flask's development server writes them) carries the signature...
    logging.getLogger("werkzeug").warning('127.0.0.1 "GET /pnp/download/image/SN1/r/x.bin?expires=1&sig=0123abcd9876 '
                                          'HTTP/1.1" 200')
    formatter = TextFormatter()
    every = "\n".join(formatter.format(r) for r in caplog.records)
    assert "sig=" in "\n".join(r.getMessage() for r in caplog.records)
    assert "&sig=..." in every and not __import__("re").search(r"sig=[0-9a-f]{8}", every)  # ...the log never does
    lines = [r.getMessage() for r in caplog.records if 'serial="SN1"' in r.getMessage()]
    assert all('hostname="access-7"' in line for line in lines)
    install = next(line for line in lines if "image-install request" in line)
    assert "cat9k_iosxe.17.09.04a.SPA.bin (17.09.04a)" in install and "running 17.3.1" in install
    assert "hostname access-7" not in "\n".join(lines)  # never the configuration
    assert lines[-1].startswith("event=provisioned") and " -> provisioned in " in lines[-1]
    assert not any("backoff-ack" in r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)


def test_json_logs_are_one_object_per_line(example_path, tmp_path):
    result = cli("--log-format", "json", "serve", "--datastore", example_path, "--port", "70000")
    assert result.returncode == 2  # (argparse refuses the port before logging starts)
    result = cli("serve", "--log-format", "json", "--datastore", str(tmp_path / "missing.xml"))
    assert result.returncode == 1 and "no such file" in result.stderr


# --------------------------------------------------------------------------- the command line


def test_global_flags_work_after_the_command_too(example_path):
    before = cli("--log-level", "debug", "check", "--datastore", example_path)
    after = cli("check", "--datastore", example_path, "--log-level", "debug")
    assert before.returncode == after.returncode == 0


def test_help_shows_the_real_defaults():
    text = cli("serve", "--help").stdout
    assert "(default: None)" not in text
    assert "default: pnp-datastore.xml" in text and "default: 8080" in text


@pytest.mark.parametrize("args, message", [
    (["agent", "--device", "bad serial!"], "is not a serial number"),
    (["agent", "--url", "http://127.0.0.1:9"], "give --device SERIAL[:PID]"),
    (["serve", "--port", "0"], "0 is not a port"),
    (["serve", "--workers", "0"], "must be at least 1"),
    (["serve", "--write-through"], "--write-through is for --clixon-socket"),
    (["option43", "192.0.2.1:80"], "is not an IPv6 address"),
])
def test_bad_flags_are_one_line_errors(args, message):
    result = cli(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the simulator


def test_the_simulator_prints_each_step_as_it_happens_and_fails_when_a_device_fails(serve, example_path):
    running = serve(example_path, max_attempts=1)
    ok = cli("agent", "--url", running.url, "--device", "FOC2001X0AB", "--time-scale", "0")
    running.store.reset("FOC2001X0AB")
    lines = ok.stdout.splitlines()
    assert ok.returncode == 0 and lines[:2] == ["FOC2001X0AB: device-info", "FOC2001X0AB: config-upgrade"]
    assert lines[-1] == "1 configured"
    failed = cli("agent", "--url", running.url, "--device", "FOC2001X0AB", "--fail-service", "config-upgrade",
                 "--time-scale", "0")
    assert failed.returncode == 1 and "1 failed" in failed.stdout


def test_a_fleet_gets_a_counter_not_a_line_per_step(serve, tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(*[f"<serial>SIM{i:04d}</serial><hostname>h{i}</hostname><config><template>x</template>"
                                    "</config>" for i in range(1, 6)]))
    running = serve(str(path))
    result = cli("agent", "--url", running.url, "--count", "5", "--time-scale", "0")
    assert result.returncode == 0 and result.stdout.strip() == "5 configured"
    assert "5/5 devices done" in result.stderr


def test_the_simulated_device_runs_the_version_in_the_image_name_never_one_from_a_query():
    device = SimulatedDevice("SN1", mode="bundle")
    sim = AgentSimulator("http://127.0.0.1:9")
    request = messages.parse_server_message(protocol.image_install(
        protocol.Envelope(device.udi, "c"), "http://images.example.invalid/cat9k_iosxe.17.12.01.SPA.bin?v=99.9.9",
        "a" * 32))
    sim._image_install(device, None, request)
    assert device.pending_version == "17.12.01"


def test_at_time_scale_0_a_failing_device_reaches_error_and_each_result_is_printed_once(tmp_path):
    from test_rollout_load import start_serve, stop

    (tmp_path / "ds.xml").write_text(datastore_xml(
        "<serial>SN1</serial><hostname>h1</hostname><config><template>hostname x</template></config>"))
    server, port, _ = start_serve(tmp_path, "--retry-seconds", "1", "--max-attempts", "2")
    try:
        result = cli("agent", "--url", f"http://127.0.0.1:{port}", "--device", "SN1", "--fail-service", "config-upgrade",
                     "--time-scale", "0")
    finally:
        stop(server)
    lines = result.stdout.splitlines()
    assert result.returncode == 1 and lines[-1] == "1 failed", result.stdout
    assert sum(line.startswith("SN1: failed after") for line in lines) == 1  # once, not twice
    assert len([line for line in lines if "backoff" in line or "waiting" in line]) <= 4  # not 98 identical lines


def test_a_stack_can_be_played_from_the_command_line(serve, tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>TOP1</serial><pid>C9300-48P</pid><hostname>stack1</hostname>"
                                  "<stack><member>MEM2</member><members>2</members></stack>"
                                  "<config><template>hostname {{ hostname }}</template></config>"))
    running = serve(str(path))
    result = cli("agent", "--url", running.url, "--stack", "TOP1:C9300-48P,MEM2:C9300-24P", "--time-scale", "0")
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "1 configured", result.stdout
    members = running.store.load("TOP1").status.facts.members
    assert [(slot, serial) for slot, serial, _, _ in members] == [(1, "TOP1"), (2, "MEM2")]


def test_a_url_without_a_scheme_is_a_usage_error():
    result = cli("agent", "--url", "127.0.0.1:8080", "--serial", "SN1")
    assert result.returncode == 2 and "http://127.0.0.1:8080" in result.stderr and "Name or service" not in result.stderr


def test_status_json_has_every_devices_state_and_the_hostname_the_table_shows_and_totals_add_up(serve, tmp_path, clock):
    body = "<serial>{sn}</serial><hostname>{host}</hostname><config><template>hostname x</template></config>"
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(body.format(sn="SN1", host="access-1"), body.format(sn="SN2", host="access-2"),
                                  body.format(sn="SN3", host="access-3")))
    running = serve(str(path))
    AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN1"))  # reports hostname "Switch"
    AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN3"))
    AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("STRANGER1"))
    path.write_text(datastore_xml(body.format(sn="SN1", host="access-1"), body.format(sn="SN2", host="access-2")))
    result = cli("status", "--datastore", str(path), "--format", "json")
    data = json.loads(result.stdout)
    shown = {row["serial"]: row for row in data["devices"]}
    assert shown["SN1"]["state"] == "provisioned" and shown["SN1"]["hostname"] == "access-1"
    assert shown["SN2"]["state"] == "planned" and shown["SN2"]["hostname"] == "access-2"
    assert shown["SN3"]["state"] == "removed" and [u["serial"] for u in data["unclaimed"]] == ["STRANGER1"]
    assert data["totals"] == "2 declared: 1 provisioned, 1 planned; 1 removed; 1 unclaimed"
    table = cli("status", "--datastore", str(path)).stdout.splitlines()
    assert table[-1] == data["totals"]
    tree = json.loads(cli("status", "--datastore", str(path), "--format", "rfc7951").stdout)["pnp-service:pnp"]
    states = {device["serial"]: device.get("status", {}).get("state") for device in tree["device"]}
    assert states["SN2"] == "planned" and states["SN1"] == "provisioned"


def test_a_template_that_stops_rendering_for_a_provisioned_device_is_shown_not_hidden(serve, tmp_path, clock, caplog):
    path = tmp_path / "ds.xml"
    good = "<serial>SN1</serial><hostname>h1</hostname><config><template>hostname {{ hostname }}</template></config>"
    path.write_text(datastore_xml(good))
    running = serve(str(path))
    AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN1"))
    path.write_text(datastore_xml(good.replace("{{ hostname }}", "{{ missing }}")))
    caplog.set_level(logging.DEBUG)
    for n in range(5):
        running.listener.work_request(messages.work_request(protocol.Udi("C9300-24P", "V01", "SN1"), f"c{n}"),
                                      "192.0.2.1", "http://x")
    assert not [r for r in caplog.records if r.levelno == logging.INFO and "not-planned" in r.getMessage()]
    table = cli("status", "--datastore", str(path)).stdout
    assert "planning-error" in table and "missing" in table
    health = running.app.test_client().get("/healthz")
    assert health.status_code == 200 and health.json["status"] == "degraded"
    assert "cannot be planned" in health.json["problems"][0] and "missing" in health.json["problems"][0]


def test_status_and_reset_work_when_the_declarations_file_is_broken(serve, tmp_path, clock):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN1</serial><hostname>h1</hostname><config><template>x</template></config>"))
    running = serve(str(path), max_attempts=1)
    AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN1", fail_service="config-upgrade"))
    path.write_text(path.read_text().replace("<hostname>", "<hostnam>"))  # a typo
    status = cli("status", "--datastore", str(path))
    assert status.returncode == 0 and "SN1" in status.stdout and " error " in status.stdout
    assert "warning:" in status.stderr and "hostnam" in status.stderr
    assert "declarations unreadable" in status.stdout.splitlines()[-1]
    reset = cli("reset", "--datastore", str(path), "SN1")
    assert reset.returncode == 0 and "status cleared" in reset.stdout and "hostnam" in reset.stderr
    assert running.store.load("SN1").status is None
    render = cli("render", "--datastore", str(path), "SN1")
    assert render.returncode == 1 and "hostnam" in render.stderr and "Traceback" not in render.stderr


def test_two_listeners_of_one_user_do_not_share_or_remove_a_control_socket(tmp_path):
    import http.client

    from test_rollout_load import start_serve, stop

    (tmp_path / "ds.xml").write_text(datastore_xml(
        "<serial>SN1</serial><hostname>h1</hostname><config><template>x</template></config>"))
    home = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": ""}
    first, _, _ = start_serve(tmp_path, "--state", str(tmp_path / "a.db"), env=home, log_name="a.log")
    second, port, _ = start_serve(tmp_path, "--state", str(tmp_path / "b.db"), env=home, log_name="b.log")
    try:
        stop(first)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/pnp/HELLO")
        assert connection.getresponse().status == 200
        assert not (tmp_path / "home" / ".gunicorn").exists()  # no gunicorn.ctl to share
    finally:
        stop(second)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc arenas")
def test_the_listener_caps_malloc_arenas_unless_the_user_chose():
    probe = "from pnp_service.serving import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    capped = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "MALLOC_ARENA_MAX": "4"}, capture_output=True,
                            text=True, check=True)
    assert (capped.stdout.strip(), chosen.stdout.strip()) == ("True", "False")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_gunicorn_master_keeps_none_of_what_the_listener_loads(tmp_path):
    """The master only watches its workers: the state database (SQLite) and cryptography (SUDI, signatures) are
    loaded by the worker that serves, never by the master, whose memory would be held for nothing."""
    from test_rollout_load import start_serve, stop

    loaded_by_the_listener = ("/_sqlite3.", "cryptography/hazmat/bindings/_rust")
    (tmp_path / "ds.xml").write_text(datastore_xml(
        "<serial>SN1</serial><hostname>h1</hostname><config><template>x</template></config>"))
    server, _, _ = start_serve(tmp_path)
    try:
        workers = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        assert workers, "no worker found"

        def mapped(pid) -> list[str]:
            with open(f"/proc/{pid}/maps") as maps:
                text = maps.read()
            return [library for library in loaded_by_the_listener if library in text]

        assert mapped(workers[0]) == list(loaded_by_the_listener)
        assert mapped(server.pid) == []
    finally:
        stop(server)
