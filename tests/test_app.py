"""The Flask listener through its test client: routes, status codes, and that bad input changes nothing."""

from __future__ import annotations

import http.client
import types
from urllib.parse import urlsplit

import pytest

from conftest import open_store, state_dump, SECRET, FakeClock
from pnp_service import protocol
from pnp_service.simulator import messages
from pnp_service import httpserver
from pnp_service.app import create_app, served
from pnp_service.listener import Listener, ListenerSettings

UDI = protocol.Udi("C9300-24P", "V01", "FOC2001X0AB")


class ServedClient:
    """Flask's test client's calls, sent to the server ``serve`` runs: the event loop's quick paths (HELLO, polls,
    configuration downloads, batched writes) answer them, not the Flask routes."""

    def __init__(self, app, store):
        self.running = httpserver.start_in_thread(served(app), limits=httpserver.Limits(graceful_timeout=0.5))
        self.store = store

    def open(self, url: str, method: str = "GET", data: bytes = b""):
        # The declarations file looked at now (a test may have just edited it), and not again for an hour: so the
        # store's copy is current and the quick paths take the requests (open_store's check at every call would
        # send them all to the Flask routes).
        self.store.refresh()
        split = urlsplit(url)
        connection = http.client.HTTPConnection("127.0.0.1", self.running.port, timeout=10)
        try:
            connection.request(method, split.path + (f"?{split.query}" if split.query else ""), body=data or None)
            response = connection.getresponse()
            return types.SimpleNamespace(status_code=response.status, data=response.read(),
                                         content_type=response.getheader("Content-Type", ""))
        finally:
            connection.close()

    def get(self, url: str):
        return self.open(url)

    def post(self, url: str, data: bytes = b""):
        return self.open(url, "POST", data)


@pytest.fixture(params=["flask", "served"])
def setup(example_path, request):
    """The Flask app's test client, and the same requests through the server serve runs: one answer either way."""
    clock = FakeClock()
    store = open_store(example_path, check_seconds=0 if request.param == "flask" else 3600)
    settings = ListenerSettings(secret=SECRET, max_body_bytes=64 * 1024)
    listener = Listener(store, settings, clock=clock)
    app = create_app(store, settings, listener=listener)
    if request.param == "flask":
        yield app.test_client(), example_path, clock
        return
    client = ServedClient(app, store)
    yield client, example_path, clock
    client.running.stop()


def file_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_hello(setup, method):
    client, _, _ = setup
    assert client.open("/pnp/HELLO", method=method).status_code == 200


def test_work_request_gets_xml(setup):
    client, _, _ = setup
    response = client.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c1"))
    assert response.status_code == 200 and response.content_type == "application/xml"
    assert messages.parse_server_message(response.data).service == "device-info"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><pnp xmlns="urn:cisco:pnp" udi="SN:FOC2001X0AB">&a;</pnp>',
        b'<pnp xmlns="urn:cisco:pnp" udi="PID:X,VID:,SN:"><info xmlns="urn:cisco:pnp:work-info" correlator="c"/></pnp>',
        "<pnp>\udc80</pnp>".encode("utf-8", "surrogateescape"),
    ],
)
@pytest.mark.parametrize("path", ["/pnp/WORK-REQUEST", "/pnp/WORK-RESPONSE"])
def test_bad_bodies_get_400_and_change_nothing(setup, body, path):
    client, datastore, _ = setup
    before = state_dump(datastore)
    response = client.post(path, data=body)
    assert response.status_code == 400
    assert b"bad WORK-" in response.data
    assert state_dump(datastore) == before


def test_oversized_body_gets_413_and_changes_nothing(setup, caplog):
    client, datastore, _ = setup
    before = state_dump(datastore)
    response = client.post("/pnp/WORK-REQUEST", data=b"<a>" + b"x" * 70_000 + b"</a>")
    assert response.status_code == 413
    assert state_dump(datastore) == before
    assert "event=http-413" in caplog.text


def test_wrong_method_gets_405(setup):
    client, _, _ = setup
    assert client.get("/pnp/WORK-REQUEST").status_code == 405


def config_url(client) -> str:
    client.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c1"))
    info = messages.device_info(UDI, "c1", platform="C9300-24P", version="17.3.1", hostname="s", flash_free=1)
    client.post("/pnp/WORK-RESPONSE", data=info)
    reply = messages.parse_server_message(client.post("/pnp/WORK-REQUEST", data=messages.work_request(UDI, "c2")).data)
    assert reply.service == "config-upgrade"
    return reply.find_text("config/copy/source/location")


def test_config_download_with_a_signed_url(setup):
    client, _, _ = setup
    url = config_url(client)
    assert urlsplit(url).path.startswith("/pnp/download/config/FOC2001X0AB/")
    response = client.get(url)
    assert response.status_code == 200 and b"hostname access-sw-01" in response.data


@pytest.mark.parametrize(
    "tamper",
    [
        lambda url: url.replace("FOC2001X0AB", "FOC2001X0CD"),
        lambda url: url[:-3] + ("000" if not url.endswith("000") else "111"),
        lambda url: url.split("?")[0],
    ],
)
def test_altered_download_urls_are_refused(setup, tamper):
    client, _, _ = setup
    assert client.get(tamper(config_url(client))).status_code == 403


def test_an_expiry_of_odd_digits_is_refused_not_a_crash(setup):
    client, _, _ = setup
    url = config_url(client)
    odd = url.replace("expires=", "expires=%C2%B2", 1)  # "²": a digit to str.isdigit(), not to int()
    assert client.get(odd).status_code == 403


def test_expired_download_url_is_refused(setup):
    client, _, clock = setup
    url = config_url(client)
    clock.advance(3601)
    assert client.get(url).status_code == 403


def test_download_for_old_revision_is_gone(setup, example_path):
    client, _, _ = setup
    url = config_url(client)
    text = open(example_path).read().replace("access-sw-01", "access-sw-99")
    with open(example_path, "w") as handle:
        handle.write(text)
    assert client.get(url).status_code == 404


def test_config_text_is_never_logged(setup, caplog):
    client, _, _ = setup
    caplog.set_level("DEBUG")
    client.get(config_url(client))
    assert "change-me" not in caplog.text and "hostname access-sw-01" not in caplog.text
    assert 'event=download serial="FOC2001X0AB" address="127.0.0.1" hostname="access-sw-01" kind="config"' in caplog.text


def test_the_writes_of_several_devices_finish_in_one_commit_each_with_its_own_answer(example_path, monkeypatch):
    from pnp_service.listener import Later
    from pnp_service.stores.base import StoreUnavailable

    store = open_store(example_path, check_seconds=3600)
    listener = Listener(store, ListenerSettings(secret=SECRET), clock=FakeClock())
    assert listener.finishes_many_at_once
    laters = [listener.quick_work_request(messages.work_request(protocol.Udi(pid, "V01", serial), "c1"),
                                          "127.0.0.1", "http://127.0.0.1/")
              for serial, pid in (("FOC2001X0AB", "C9300-24P"), ("FOC2001X0CD", "C9300-48P"))]
    assert all(isinstance(later, Later) for later in laters)  # first contact: a status to record first
    commits = []
    transaction = store.db.transaction
    monkeypatch.setattr(store.db, "transaction", lambda: commits.append(1) or transaction())
    replies = listener.finish_many(laters)
    assert len(commits) == 1 and [r.status for r in replies] == [200, 200]
    assert [messages.parse_server_message(r.body).service for r in replies] == ["device-info", "device-info"]
    assert {store.load(s).status.state for s in ("FOC2001X0AB", "FOC2001X0CD")} == {"onboarding"}

    def busy(updates):
        return [StoreUnavailable("the database is locked")] * len(updates)

    monkeypatch.setattr(store, "update_many", busy)
    assert [r.status for r in listener.finish_many(laters)] == [503, 503]  # told to come back, nothing lost
