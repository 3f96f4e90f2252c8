"""Shared test helpers: a controllable clock, datastore files, a listener on a loopback port."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import time

import pytest
from pnp_service import httpserver
from pnp_service.app import create_app, served
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.provisioner import Settings
from pnp_service.stores.embedded import EmbeddedStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_DATASTORE = os.path.join(REPO, "pnp_service", "examples", "declarations.xml")
SECRET = b"test-secret-0123456789abcdef"


class FakeClock:
    """Seconds since the epoch that move only when a test (or the simulator's sleep) says so."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def datastore_xml(*devices: str) -> str:
    """A declarations file with the given ``<pnp-device>`` bodies declared."""
    declared = "".join(f'<pnp-device xmlns="urn:pnp-service:pnp">{body}</pnp-device>' for body in devices)
    return (
        "<?xml version='1.0' encoding='UTF-8'?>\n<config>\n"
        f'  <services xmlns="http://clicon.org/controller">{declared}</services>\n</config>\n'
    )


def answers_hello(port: int) -> bool:
    """True when something on the loopback ``port`` answers ``GET /pnp/HELLO`` with 200."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/pnp/HELLO")
        return connection.getresponse().status == 200
    except OSError:
        return False


def wait_until(predicate, timeout: float = 30.0, what: str = "condition", every: float = 0.2):
    """``predicate()``'s first true value within ``timeout`` seconds, else an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def image_in_folder(tmp_path, file_name: str, version: str, size: int = 50_000) -> str:
    """An image file in ``tmp_path/images`` and the ``<image>`` of a declaration that installs it."""
    image = b"IMAGE" * (size // 5)
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "images" / file_name).write_bytes(image)
    return (f"<image><version>{version}</version><url>{file_name}</url>"
            f"<md5>{hashlib.md5(image).hexdigest()}</md5></image>")


def open_store(path: str, **kwargs) -> EmbeddedStore:
    """An embedded store that looks at the declarations file on every call (tests edit it and poll at once)."""
    kwargs.setdefault("check_seconds", 0)
    return EmbeddedStore(path, **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def example_path(tmp_path) -> str:
    path = tmp_path / "datastore.xml"
    shutil.copy(EXAMPLE_DATASTORE, path)
    return str(path)


class RunningListener:
    """The listener on the server ``serve`` runs (pnp_service.httpserver), in a thread, on a loopback port."""

    def __init__(self, store: EmbeddedStore, clock: FakeClock, settings: ListenerSettings, ssl_context=None,
                 limits: httpserver.Limits | None = None):
        self.store = store
        self.listener = Listener(store, settings, clock=clock)
        self.app = create_app(store, settings, listener=self.listener)
        limits = limits or httpserver.Limits(graceful_timeout=1.0)
        self.server = httpserver.start_in_thread(served(self.app), limits=limits, ssl_context=ssl_context)
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self.server.port}"

    def stop(self) -> None:
        self.server.stop()
        self.listener.close()


@pytest.fixture
def serve(clock):
    """Start a real HTTP listener on a loopback port over a datastore file."""
    started = []

    def start(path: str, image_dir: str = "", **provisioning) -> RunningListener:
        settings = ListenerSettings(provisioning=Settings(**provisioning), secret=SECRET, image_dir=image_dir)
        running = RunningListener(open_store(path), clock, settings)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        running.store.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say how many server message builders Cisco's XSDs validated (counted from the reports: xdist-proof)."""
    prefix = "tests/test_schemas.py::test_server_message_is_valid_against_ciscos_schema["
    validated = sorted({report.nodeid[len(prefix):].split("[", 1)[0]
                        for report in terminalreporter.stats.get("passed", []) if report.nodeid.startswith(prefix)})
    if validated:
        terminalreporter.write_line(f"Cisco XSDs: {len(validated)} server message builders validated ({', '.join(validated)})")
    elif os.environ.get("PNP_XSD_DIR") is None:
        terminalreporter.write_line("Cisco XSDs: not validated (PNP_XSD_DIR not set; see tests/test_schemas.py)")


def state_dump(declarations_path: str) -> list:
    """Every row of the state database beside a declarations file: what 'changes nothing' is checked against."""
    import sqlite3

    from pnp_service.stores.embedded import default_state_path

    path = default_state_path(declarations_path)
    if not os.path.exists(path):
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return [(table, *row) for table in ("status", "unclaimed", "work")
                for row in connection.execute(f"SELECT * FROM {table} ORDER BY serial")]


def pytest_collection_modifyitems(config, items):
    """Files marked ``heavy`` (a roll-out under load: half a minute each) first, so two workers take one each."""
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_xdist_make_scheduler(config, log):
    """Files go to workers whole (``--dist loadfile``); the integration files all to one worker (they share one
    controller, whose candidate two CLI sessions would fight over), and with them the documentation's own
    commands (tests/test_docs.py), which bind the documented port 8080 as the controller walkthrough does."""
    from xdist.scheduler import LoadFileScheduling

    class OneControllerAtATime(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            together = scope.startswith("tests/integration/") or scope == "tests/test_docs.py"
            return "tests/integration" if together else scope

    return OneControllerAtATime(config, log) if config.getvalue("dist") == "loadfile" else None
