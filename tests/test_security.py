"""Hostile input, signed downloads, HTTPS, concurrency and durability: the listener on a hostile network."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import open_store, state_dump, REPO, SECRET, FakeClock, datastore_xml
from pnp_service import protocol
from pnp_service.simulator import messages
from pnp_service.app import create_app
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.stores.embedded import EmbeddedStore

UDI = protocol.Udi("C9300-24P", "V01", "FOC2001X0AB")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def valid_messages() -> list[bytes]:
    return [
        messages.work_request(UDI, "c1", "sw", True),
        messages.device_info(UDI, "c1", platform="C9300-24P", version="17", hostname="h", flash_free=5),
        messages.response(UDI, "config-upgrade", "c1", False, protocol.ErrorInfo("E", "1410", "x")),
        messages.fault(UDI, "Client", "bad"),
    ]


def parse_any(data: bytes):
    for parse in (protocol.parse_work_request, protocol.parse_work_response):
        try:
            parse(data)
        except protocol.ProtocolError:
            pass


# --------------------------------------------------------------------------- the parser


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data):
    parse_any(data)


@FUZZ
@given(st.sampled_from(valid_messages()), st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=64))
def test_mutated_messages_only_ever_raise_protocol_error(message, position, insert):
    position %= len(message)
    parse_any(message[:position] + insert + message[position:])


XML_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"), max_size=200)


@FUZZ
@given(XML_TEXT)
def test_text_in_server_messages_is_escaped_never_injected(text):
    # Whatever a command holds (<, &, quotes, markup), the reply carries it as text, not as XML.
    parsed = messages.parse_server_message(protocol.cli_exec(protocol.Envelope(UDI, "c"), text))
    assert parsed.find_text("execCLI/cmd") == text.strip()
    assert len(parsed.body) == 1


HOSTILE = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [' + b"".join(
        b'<!ENTITY l%d "&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;&l%d;">' % ((i,) + (i - 1,) * 10) for i in range(1, 10)
    ) + b'<!ENTITY l0 "lol">]><pnp>&l9;</pnp>',
    "quadratic-blowup": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "' + b"A" * 50_000 + b'">]><pnp>' + b"&a;" * 50_000 + b"</pnp>",
    "deep-nesting": b"<a>" * 100_000 + b"</a>" * 100_000,
    "huge-attribute": b'<pnp xmlns="urn:cisco:pnp" udi="' + b"A" * 250_000 + b'"/>',
    "many-attributes": b"<pnp " + b" ".join(b'a%d="x"' % i for i in range(20_000)) + b"/>",
    "external-dtd": b'<?xml version="1.0"?><!DOCTYPE pnp SYSTEM "http://127.0.0.1:9/evil.dtd"><pnp/>',
    "xinclude": b'<pnp xmlns="urn:cisco:pnp" xmlns:xi="http://www.w3.org/2001/XInclude" udi="SN:1">'
    b'<xi:include href="file:///etc/passwd" parse="text"/></pnp>',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_documents_are_refused_within_bounded_memory(name):
    tracemalloc.start()
    try:
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_work_request(HOSTILE[name][: protocol.MAX_MESSAGE_BYTES * 2])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"{name} used {peak} bytes"


# --------------------------------------------------------------------------- the HTTP endpoints


@pytest.fixture
def app_setup(example_path, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "cat9k_iosxe.17.09.04a.SPA.bin").write_bytes(b"IMAGE" * 1000)
    clock = FakeClock()
    store = open_store(example_path)
    config = ListenerSettings(secret=SECRET, max_body_bytes=64 * 1024, image_dir=str(images))
    listener = Listener(store, config, clock=clock)
    return create_app(store, config, listener=listener), example_path, clock, images


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


@FUZZ
@given(body=st.binary(max_size=4096), path=st.sampled_from(["/pnp/WORK-REQUEST", "/pnp/WORK-RESPONSE"]))
def test_fuzzed_bodies_get_4xx_and_change_nothing(app_setup, body, path):
    app, datastore, _, _ = app_setup
    before = state_dump(datastore)
    response = app.test_client().post(path, data=body, content_type="application/xml")
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert state_dump(datastore) == before


@pytest.mark.parametrize("content_type", ["application/json", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"])
def test_wrong_content_type_gets_415_with_a_log_line(app_setup, content_type, caplog):
    app, datastore, _, _ = app_setup
    before = state_dump(datastore)
    response = app.test_client().post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c"), content_type=content_type)
    assert response.status_code == 415
    assert "event=bad-content-type" in caplog.text
    assert state_dump(datastore) == before


def test_bad_request_is_logged_with_the_reason(app_setup, caplog):
    app, _, _, _ = app_setup
    app.test_client().post("/pnp/WORK-REQUEST", data=HOSTILE["external-dtd"], content_type="text/xml")
    assert "event=bad-work-request" in caplog.text and "DTD" in caplog.text


def test_unknown_service_and_unsolicited_responses_get_a_bye_and_change_nothing(app_setup):
    app, datastore, _, _ = app_setup
    client = app.test_client()
    before = state_dump(datastore)
    unsolicited = messages.response(UDI, "config-upgrade", "never-sent")
    reply = client.post("/pnp/WORK-RESPONSE", data=unsolicited, content_type="text/xml")
    assert reply.status_code == 200 and messages.parse_server_message(reply.data).service == "bye"
    client.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c9"), content_type="text/xml")
    after_request = state_dump(datastore)
    assert after_request != before
    stale = messages.response(UDI, "made-up-service", "c8")
    reply = client.post("/pnp/WORK-RESPONSE", data=stale, content_type="text/xml")
    assert messages.parse_server_message(reply.data).service == "bye"
    assert state_dump(datastore) == after_request
    made_up = messages.response(UDI, "made-up-service", "c9")  # the owed correlator, another service: a failed attempt
    reply = client.post("/pnp/WORK-RESPONSE", data=made_up, content_type="text/xml")
    assert messages.parse_server_message(reply.data).service == "bye"
    assert open_store(datastore).load(UDI.serial).status.error.code == "wrong-service"


def image_url(client) -> tuple[str, str]:
    udi = protocol.Udi("C9300-48P", "V01", "FOC2001X0CD")
    client.post("/pnp/WORK-REQUEST", data=messages.work_request(udi, "c1"))
    info = messages.device_info(udi, "c1", platform="C9300-48P", version="16.12.1", hostname="s", flash_free=10**9)
    client.post("/pnp/WORK-RESPONSE", data=info)
    reply = messages.parse_server_message(client.post("/pnp/WORK-REQUEST", data=messages.work_request(udi, "c2")).data)
    assert reply.service == "image-install"
    return reply.find_text("image/copy/source/location"), reply.find_text("image/copy/source/checksum")


def local_image_datastore(path, name):
    text = read(path).decode().replace("http://images.example.invalid/cat9k_iosxe.17.09.04a.SPA.bin", name)
    text = text.replace("0123456789abcdef0123456789abcdef", hashlib.md5(b"IMAGE" * 1000).hexdigest())
    with open(path, "w") as handle:
        handle.write(text)


def test_local_image_is_served_under_a_signed_url(app_setup):
    app, datastore, _, _ = app_setup
    local_image_datastore(datastore, "cat9k_iosxe.17.09.04a.SPA.bin")
    client = app.test_client()
    url, checksum = image_url(client)
    assert "/pnp/download/image/FOC2001X0CD/" in url
    response = client.get(url)
    assert response.status_code == 200 and hashlib.md5(response.data).hexdigest() == checksum
    assert client.get(url.replace("FOC2001X0CD", "FOC2001X0AB")).status_code == 403


@pytest.mark.parametrize("name", ["../secret.bin", ".hidden.bin", "missing.bin"])
def test_image_names_outside_the_folder_are_not_served(app_setup, name):
    app, datastore, _, images = app_setup
    (images.parent / "secret.bin").write_bytes(b"secret")
    (images / ".hidden.bin").write_bytes(b"hidden")
    local_image_datastore(datastore, name)
    client = app.test_client()
    url, _ = image_url(client)
    assert client.get(url).status_code == 404


# --------------------------------------------------------------------------- HTTPS


def self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def start_server(args, port):
    server = subprocess.Popen([sys.executable, "-m", "pnp_service.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import ssl

    context = ssl._create_unverified_context()
    for _ in range(100):
        for scheme in ("https", "http"):
            try:
                urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/pnp/HELLO", timeout=1, context=context)
                return server
            except OSError:
                pass
        time.sleep(0.1)
    server.kill()
    raise AssertionError(server.communicate()[0])


def test_https_serving_and_download_urls_follow_the_scheme(example_path, tmp_path):
    from test_loop import free_port

    cert, key = self_signed(tmp_path)
    port = free_port()
    server = start_server(["--datastore", example_path, "--tls-cert", cert, "--tls-key", key, "--access-log"], port)
    try:
        device = SimulatedDevice("FOC2001X0AB")
        result = AgentSimulator(f"https://127.0.0.1:{port}", time_scale=0, verify_tls=False).run(device)
        assert result.outcome == "configured", result
        assert "hostname access-sw-01" in device.config
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    assert "change-me" not in output and "hostname access-sw-01" not in output  # configurations never reach the log
    assert "/pnp/download/config/FOC2001X0AB/" in output and "sig=" not in output  # nor do download signatures


def test_tls_cert_without_key_is_refused(example_path):
    result = subprocess.run([sys.executable, "-m", "pnp_service.cli", "serve", "--datastore", example_path, "--tls-cert", "x.pem"],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--tls-key" in result.stderr


# --------------------------------------------------------------------------- concurrency and durability


def test_the_same_device_twice_at_the_same_moment(serve, clock, example_path):
    running = serve(example_path)
    barrier = threading.Barrier(2)
    replies = {}

    def poll(correlator):
        barrier.wait()
        body = messages.work_request(UDI, correlator)
        request = urllib.request.Request(running.url + "/pnp/WORK-REQUEST", data=body, headers={"Content-Type": "text/xml"})
        replies[correlator] = messages.parse_server_message(urllib.request.urlopen(request, timeout=5).read())

    threads = [threading.Thread(target=poll, args=(c,)) for c in ("twin-a", "twin-b")]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert {r.service for r in replies.values()} == {"device-info"}
    owed = running.store.load("FOC2001X0AB").status.correlator
    assert owed in replies
    other = ({"twin-a", "twin-b"} - {owed}).pop()
    outcomes = []
    for correlator in (other, owed):
        info = messages.device_info(UDI, correlator, platform="C9300-24P", version="17", hostname="h", flash_free=1)
        request = urllib.request.Request(running.url + "/pnp/WORK-RESPONSE", data=info, headers={"Content-Type": "text/xml"})
        urllib.request.urlopen(request, timeout=5).read()
        outcomes.append(running.store.load("FOC2001X0AB").status.step)
    assert outcomes == ["device-info", "config-upgrade"]  # only the owed answer advanced, exactly once


def test_many_agents_at_once_over_gunicorn_workers(tmp_path):
    from test_loop import BASE, free_port

    path = str(tmp_path / "ds.xml")
    with open(path, "w") as handle:
        handle.write(datastore_xml(*[BASE.format(sn=f"W{i:03d}", host=f"w{i}") for i in range(40)]))
    port = free_port()
    server = start_server(["--datastore", path, "--workers", "3", "--threads", "4"], port)
    try:
        devices = [SimulatedDevice(f"W{i:03d}") for i in range(40)] + [SimulatedDevice(f"STRANGE{i}") for i in range(10)]
        results = AgentSimulator(f"http://127.0.0.1:{port}", time_scale=0).run_many(devices, concurrency=16)
    finally:
        server.terminate()
        server.communicate(timeout=20)
    assert [r.outcome for r in results] == ["configured"] * 40 + ["backed-off"] * 10, [r for r in results if r.outcome == "http-error"]
    store = EmbeddedStore(path)
    snapshot = store.snapshot()
    assert sorted(r.status.state for r in snapshot.devices) == ["provisioned"] * 40
    assert len(snapshot.unclaimed) == 10


WRITER = """
import sys
from pnp_service.model import Status
from pnp_service.provisioner import Decision
from pnp_service.stores.embedded import EmbeddedStore
store = EmbeddedStore(sys.argv[1])
for attempt in range(1, 100000):
    store.update("FOC2001X0AB", lambda record: Decision(b"", "t", status=Status(state="onboarding", attempts=attempt)))
    print(attempt, flush=True)  # acknowledged
"""


@pytest.mark.parametrize("after", [1, 40, 200])
def test_killed_in_the_middle_of_writes_loses_nothing_acknowledged(example_path, after):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, example_path], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO})
    seen = [writer.stdout.readline() for _ in range(after)]  # killed right after the Nth acknowledgement
    writer.send_signal(signal.SIGKILL)
    output = [int(line) for line in seen + writer.communicate()[0].split() if str(line).strip()]
    status = EmbeddedStore(example_path).load("FOC2001X0AB").status
    assert len(output) >= after
    assert status.attempts >= output[-1]


# --------------------------------------------------------------------------- what a device says cannot forge logs or rows

FORGED = "sw1&#10;2026-12-01 08:00:00,000 INFO pnp_service.listener: event=advance serial=\"FOC2001X0AB\" -&gt; provisioned"


def forged_request(serial="FOC2001X0AB", hostname=FORGED) -> bytes:
    return (f'<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:C9300-24P&#10;INFO forged,VID:V01,SN:{serial}">'
            '<info xmlns="urn:cisco:pnp:work-info" correlator="c&#13;&#10;x"><deviceId>'
            f"<hostname>{hostname}</hostname><authRequired>false</authRequired></deviceId></info></pnp>").encode()


def test_a_device_cannot_forge_a_log_line(app_setup, caplog):
    import logging

    from pnp_service.logs import TextFormatter

    app, _, _, _ = app_setup
    caplog.set_level(logging.INFO)
    response = app.test_client().post("/pnp/WORK-REQUEST", data=forged_request("STRANGER7"))
    assert response.status_code == 200
    formatter = TextFormatter()
    lines = "\n".join(formatter.format(record) for record in caplog.records).splitlines()
    assert len(lines) == len(caplog.records)  # one line per record: nothing a device sent started a new one
    (line,) = [line for line in lines if "STRANGER7" in line]
    assert "event=unclaimed" in line and 'INFO pnp_service.listener: event=advance' not in line.split("event=unclaimed")[0]


def test_the_log_formatter_escapes_control_characters_whatever_the_source():
    import logging

    from pnp_service.logs import Event, JsonFormatter, TextFormatter

    record = logging.LogRecord("x", logging.INFO, __file__, 1, Event("fault", {"hostname": "a\nb\u202e", "n": 3}), None, None)
    text = TextFormatter().format(record)
    assert "\n" not in text and "\u202e" not in text and 'hostname="a\\nb\\u202e"' in text and "n=3" in text
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "raw %s", ("line\nforged",), None)
    assert "\n" not in TextFormatter().format(plain)
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "fault" and data["hostname"] == "a\nb\u202e" and data["n"] == 3
    leaked = logging.LogRecord("x", logging.INFO, __file__, 1, Event("fault", {"detail": "GET /x?expires=1&sig=abcdef12"}),
                               None, None)
    for formatted in (TextFormatter().format(leaked), JsonFormatter().format(leaked)):
        assert "abcdef12" not in formatted and "sig=..." in formatted  # a signature in neither format


def test_the_status_table_shows_no_raw_control_characters(example_path):
    from pnp_service import views
    from pnp_service.model import Unclaimed
    from pnp_service.provisioner import Decision, Event

    store = open_store(example_path)
    store.update("EVIL1", lambda record: Decision(b"", Event.UNCLAIMED, unclaimed=Unclaimed("EVIL1", hostname="x\ny\x1b[2J")))
    table = views.table(store.snapshot())
    assert "\x1b" not in table and all("EVIL1" not in line or "x\\ny" in line for line in table.splitlines())
    assert len(table.splitlines()) == 2 + 2 + 1  # header, two declared, one unclaimed, totals


def test_device_text_is_cleaned_before_it_is_recorded(app_setup):
    app, datastore, _, _ = app_setup
    app.test_client().post("/pnp/WORK-REQUEST", data=forged_request("STRANGER8"))
    entry = open_store(datastore).load("STRANGER8").unclaimed
    assert "\n" not in entry.hostname and "\n" not in entry.udi and entry.pid == "C9300-24P INFO forged"


def test_a_work_response_whose_body_is_not_a_response_is_refused(app_setup):
    app, datastore, _, _ = app_setup
    before = state_dump(datastore)
    body = messages.work_request(UDI, "c1").replace(b"urn:cisco:pnp:work-info", b"urn:cisco:pnp:device-info")
    response = app.test_client().post("/pnp/WORK-RESPONSE", data=body)
    assert response.status_code == 400 and b"expected a PnP service <response>" in response.data
    assert state_dump(datastore) == before


def test_a_store_that_cannot_write_gets_503_with_retry_after(example_path):
    from pnp_service.stores.base import StoreUnavailable

    store = open_store(example_path)

    def unavailable(serial, decide):
        raise StoreUnavailable("state database is busy")

    store.update = unavailable
    settings = ListenerSettings(secret=SECRET, unavailable_retry_seconds=45)
    client = create_app(store, settings, listener=Listener(store, settings)).test_client()
    response = client.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c1"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "45"


def test_the_listener_warns_when_secrets_are_readable_by_others(example_path, tmp_path):
    import socket

    os.chmod(example_path, 0o644)
    secret = tmp_path / "s.secret"
    with socket.socket() as busy:  # a port in use: serve stops right after its checks, with a clear message
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        command = [sys.executable, "-m", "pnp_service.cli", "serve", "--datastore", example_path,
                   "--secret-file", str(secret), "--port", port, "--host", "127.0.0.1"]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert "event=file-readable-by-others" in result.stderr and "chmod 600" in result.stderr
        assert result.returncode == 2 and f"port {port} on 127.0.0.1 is already in use" in result.stderr
        assert "--port" in result.stderr and "Traceback" not in result.stderr
        assert oct(os.stat(secret).st_mode & 0o777) == "0o600"  # the secret it created is private
        os.chmod(example_path, 0o600)
        again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert "readable-by-others" not in again.stderr


def test_init_writes_a_private_example_and_never_overwrites(tmp_path):
    path = tmp_path / "ds.xml"
    first = subprocess.run([sys.executable, "-m", "pnp_service.cli", "init", str(path)], cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0 and oct(os.stat(path).st_mode & 0o777) == "0o600"
    path.write_text("mine")
    second = subprocess.run([sys.executable, "-m", "pnp_service.cli", "init", str(path)], cwd=REPO, capture_output=True, text=True)
    assert second.returncode == 2 and "never overwrites" in second.stderr and path.read_text() == "mine"


def test_the_signing_secret_is_created_once_private_and_a_crash_leaves_nothing_in_the_way(tmp_path):
    from pnp_service.downloads import load_or_create_secret

    path = tmp_path / "secret"
    (tmp_path / f"secret.{os.getpid()}.tmp").write_bytes(b"left by a crashed start")  # the old fixed name
    first = load_or_create_secret(str(path))
    assert len(first) == 64 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_create_secret(str(path)) == first  # a second listener reads it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret", f"secret.{os.getpid()}.tmp"]  # no temp of ours
    path.write_bytes(b"short\n")
    replaced = load_or_create_secret(str(path))
    assert replaced != b"short" and path.read_bytes().strip() == replaced


def test_the_one_parser_factory_itself_resolves_no_entity_and_reads_no_file(tmp_path):
    """Kills the mutant that turns entity resolution and DTD loading on in xmlsafe.parser: every parser it makes,
    the controller-reply one included, leaves a DTD's entities unexpanded and never opens a file."""
    from lxml import etree

    from pnp_service import xmlsafe

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    document = (f'<!DOCTYPE r [<!ENTITY inner "EXPANDED"><!ENTITY outer SYSTEM "file://{secret}">]>'
                "<r>&inner;&outer;</r>").encode()
    for large in (False, True):
        root = etree.fromstring(document, xmlsafe.parser(large=large))
        text = etree.tostring(root).decode()
        assert "EXPANDED" not in text and "TOP-SECRET" not in text
    for _, element in xmlsafe.iterparse(document):
        assert "TOP-SECRET" not in (element.text or "") and "EXPANDED" not in (element.text or "")
