"""The roll-out page (pnp_service/ui): what its JSON says, who may read it, that it never shares a port with PnP,
that it holds no secret, and, in headless chromium, that it follows a roll-out of 20 devices without a reload."""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import REPO, SECRET, FakeClock, answers_hello, datastore_xml, open_store, wait_until
from pnp_service import httpserver
from pnp_service.app import create_app, served
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.timeline import TimelineDb, TimelineWriter
from pnp_service.ui import create_ui
from test_loop import cli
from test_rollout_load import free_port, start_serve, stop

PASSWORD = "pa55-n0t-on-the-page"
COMMUNITY = "c0mmunity-n0t-on-the-page"


def declarations(count: int) -> str:
    return datastore_xml(*(
        f"<serial>FOC2500X{n:03d}</serial><pid>C9300-24P</pid><hostname>acc-{n:02d}</hostname>"
        "<config><template>hostname {{ hostname }}\nsnmp-server community {{ community }}</template></config>"
        f"<variable><name>community</name><value>{COMMUNITY}</value></variable>"
        f"<credentials><username>netops</username><password>{PASSWORD}</password></credentials>"
        for n in range(count)))


@pytest.fixture
def lab(tmp_path):
    """Five declared devices, two of them provisioned, one stranger; the listener in a thread; the page's app."""
    path = tmp_path / "ds.xml"
    path.write_text(declarations(5))
    store = open_store(str(path))
    clock = FakeClock()
    settings = ListenerSettings(secret=SECRET)
    timeline = TimelineWriter(TimelineDb(str(tmp_path / "ds.timeline.db")))
    listener = Listener(store, settings, clock=clock, timeline=timeline)
    server = httpserver.start_in_thread(served(create_app(store, settings, listener=listener)))
    simulator = AgentSimulator(f"http://127.0.0.1:{server.port}", sleep=clock.advance)
    for serial in ("FOC2500X000", "FOC2500X001"):
        assert simulator.run(SimulatedDevice(serial, auth_required=True)).outcome == "configured"
    assert simulator.run(SimulatedDevice("STRANGER9")).outcome == "backed-off"
    listener.close()
    yield store, timeline.db, path
    server.stop()
    store.close()


def test_the_rollout_counts_filters_and_searches(lab):
    store, timeline, path = lab
    page = create_ui(store, timeline, claim="pnp-service claim {serial} --datastore {site}.xml").test_client()
    told = page.get("/api/rollout").json
    assert told["totals"] == {"declared": 5, "by_state": {"provisioned": 2, "planned": 3}, "unclaimed": 1, "removed": 0}
    assert told["progress"] == pytest.approx(0.4) and told["matched"] == 5
    # Only {serial} is filled in: a path with braces of its own stays as the operator wrote it.
    assert told["unclaimed"][0]["claim"] == "pnp-service claim STRANGER9 --datastore {site}.xml"
    provisioned = page.get("/api/rollout?state=provisioned").json
    assert sorted(d["serial"] for d in provisioned["devices"]) == ["FOC2500X000", "FOC2500X001"]
    assert [d["serial"] for d in page.get("/api/rollout?q=ACC-03").json["devices"]] == ["FOC2500X003"]
    limited = page.get("/api/rollout?limit=2").json
    assert limited["matched"] == 5 and len(limited["devices"]) == 2
    assert page.get("/api/rollout?limit=x").status_code == 400


def test_a_device_page_is_its_row_and_its_timeline(lab):
    store, timeline, path = lab
    page = create_ui(store, timeline).test_client()
    shown = page.get("/api/device/FOC2500X000").json
    assert shown["device"]["state"] == "provisioned"
    assert [e["event"] for e in shown["timeline"]][0] == "request" and shown["timeline"][-1]["event"] == "provisioned"
    assert page.get("/api/device/STRANGER9").json["device"]["state"] == "unclaimed"
    assert page.get("/api/device/NOBODY1").status_code == 404
    assert page.get("/api/device/not%20a%20serial").status_code == 404


def test_no_page_or_resource_holds_a_secret(lab):
    store, timeline, path = lab
    page = create_ui(store, timeline).test_client()
    served_texts = [page.get(url).get_data(as_text=True) for url in (
        "/", "/static/app.js", "/static/style.css", "/api/rollout", "/api/rollout?limit=2000",
        *(f"/api/device/FOC2500X{n:03d}" for n in range(5)), "/api/device/STRANGER9")]
    for text in served_texts:
        assert PASSWORD not in text and COMMUNITY not in text and "/pnp/download/" not in text and "signature" not in text
    headers = page.get("/").headers
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"


def test_with_a_token_only_its_holder_reads_the_page(lab):
    store, timeline, path = lab
    token = "t0ken-of-sixteen-or-more"
    page = create_ui(store, timeline, token=token).test_client()
    assert page.get("/api/rollout").status_code == 401 and page.get("/").status_code == 401
    assert page.get("/api/rollout", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert page.get("/api/rollout", headers={"Authorization": "Bearer wrong-token-of-length"}).status_code == 401
    wrong = page.get("/?token=wrong")
    assert wrong.status_code == 303 and page.get("/api/rollout").status_code == 401
    right = page.get(f"/?token={token}")
    assert right.status_code == 303 and "HttpOnly" in right.headers["Set-Cookie"]
    assert page.get("/api/rollout").status_code == 200  # the cookie


@pytest.mark.parametrize("model", ["event", "threads"])
def test_the_pnp_port_never_serves_the_page_and_the_page_port_never_pnp(tmp_path, model):
    (tmp_path / "ds.xml").write_text(declarations(2))
    ui_port = free_port()
    server, port, log = start_serve(tmp_path, "--ui", str(ui_port), "--server", model)
    try:
        import http.client

        def status(at: int, method: str, path: str, body: bytes | None = None) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", at, timeout=5)
            connection.request(method, path, body=body, headers={"Content-Type": "application/xml"})
            return connection.getresponse().status

        assert status(ui_port, "GET", "/api/rollout") == 200 and status(ui_port, "GET", "/") == 200
        assert status(port, "GET", "/api/rollout") == 404 and status(port, "GET", "/") == 404
        assert status(ui_port, "GET", "/pnp/HELLO") == 404
        assert status(ui_port, "POST", "/pnp/WORK-REQUEST", b"<pnp/>") == 404
        assert answers_hello(port)
    finally:
        stop(server)


@pytest.mark.parametrize("args, message", [
    (["--ui", "0.0.0.0:18091"], "reachable from other hosts: give --ui-token-file FILE"),
    (["--ui", "18090", "--port", "18090"], "is the PnP port"),
    (["--ui", "18092", "--dev"], "--ui needs serve's own server"),
])
def test_a_page_others_could_reach_without_a_token_is_refused(tmp_path, args, message):
    (tmp_path / "ds.xml").write_text(declarations(1))
    result = cli("serve", "--datastore", str(tmp_path / "ds.xml"), *args)
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- in a real browser


def chromium():
    """A headless chromium driven by selenium, or a skip that says what to install."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.binary_location = binary
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_follows_a_rollout_of_20_devices_without_a_reload(tmp_path):
    browser = chromium()
    (tmp_path / "ds.xml").write_text(declarations(20))
    ui_port = free_port()
    server, port, log = start_serve(tmp_path, "--ui", str(ui_port))
    try:
        browser.get(f"http://127.0.0.1:{ui_port}/")
        summary = lambda: browser.find_element("id", "summary").text  # noqa: E731
        wait_until(lambda: "20 declared: 20 planned" in summary(), what="20 planned devices")
        assert len(browser.find_elements("css selector", "#devices tbody tr")) == 20
        browser.execute_script("window.sameDocument = true")  # gone if the page reloads
        simulator = AgentSimulator(f"http://127.0.0.1:{port}", time_scale=0)
        half = [SimulatedDevice(f"FOC2500X{n:03d}") for n in range(10)]
        assert [r.outcome for r in simulator.run_many(half)] == ["configured"] * 10
        wait_until(lambda: "10 provisioned, 10 planned" in summary(), what="half of them provisioned")
        rest = [SimulatedDevice(f"FOC2500X{n:03d}") for n in range(10, 20)]
        assert [r.outcome for r in simulator.run_many(rest)] == ["configured"] * 10
        wait_until(lambda: "20 declared: 20 provisioned" in summary(), what="every device provisioned")
        assert browser.execute_script("return window.sameDocument") is True
        assert browser.find_element("id", "bar").get_attribute("style").replace(" ", "") == "width:100%;"
        screenshot(browser, tmp_path, "rollout-page.png")

        browser.find_element("link text", "acc-07").click()  # a device's page: its timeline
        wait_until(lambda: len(browser.find_elements("css selector", "#timeline tbody tr")) >= 4, what="the timeline")
        events = [row.find_elements("css selector", "td")[1].text
                  for row in browser.find_elements("css selector", "#timeline tbody tr")]
        assert events[0] == "request" and events[-1] == "provisioned", events
        assert browser.find_element("id", "device-title").text == "acc-07 FOC2500X007"
        assert browser.execute_script("return window.sameDocument") is True
        screenshot(browser, tmp_path, "device-timeline.png")
        page = browser.page_source
        assert PASSWORD not in page and COMMUNITY not in page
    finally:
        browser.quit()
        stop(server)


def screenshot(browser, tmp_path, name: str) -> None:
    """Into tmp_path; and into docs/img when PNP_UI_SCREENSHOTS=1 (how docs/operations.md's pictures are made)."""
    browser.save_screenshot(str(tmp_path / name))
    if os.environ.get("PNP_UI_SCREENSHOTS") == "1":
        os.makedirs(os.path.join(REPO, "docs", "img"), exist_ok=True)
        shutil.copy(tmp_path / name, os.path.join(REPO, "docs", "img", name))
