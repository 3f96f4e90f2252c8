"""The YANG module and instance files, checked by real YANG tools (pyang, yanglint)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

import pytest
from lxml import etree

from conftest import EXAMPLE_DATASTORE, REPO, SECRET, FakeClock
from pnp_service import httpserver, views
from pnp_service.app import create_app, served
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.stores.embedded import EmbeddedStore

(MODULE,) = glob.glob(os.path.join(REPO, "yang", "pnp-service@*.yang"))
PATHS = ["-p", os.path.join(REPO, "yang"), "-p", os.path.join(REPO, "pnp_service", "yang")]


def tool(name):
    """A YANG tool: the one beside this Python first (pyang is in the virtualenv), then PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.access(beside, os.X_OK) else shutil.which(name)
    if not found:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; CI must run every YANG check (./install.sh --dev installs it)")
        pytest.skip(f"{name} is not installed (./install.sh --dev installs it)")
    return found


def data_file(datastore: str, out) -> str:
    """yanglint reads top-level data nodes: unwrap the datastore's <config>."""
    root = etree.parse(datastore).getroot()
    out.write_bytes(b"".join(etree.tostring(child) for child in root if isinstance(child.tag, str)))
    return str(out)


def yanglint(data: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("yanglint"), *PATHS, "-t", "config", MODULE, data], capture_output=True, text=True)


def test_pyang_strict_lint():
    result = subprocess.run([tool("pyang"), "--strict", "--lint", *PATHS, MODULE], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_yanglint_module():
    result = subprocess.run([tool("yanglint"), *PATHS, MODULE], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_example_declarations_are_valid(tmp_path):
    result = yanglint(data_file(EXAMPLE_DATASTORE, tmp_path / "d.xml"))
    assert result.returncode == 0, result.stderr


def test_state_the_listener_writes_is_valid_in_the_yangs_shape(tmp_path):
    """Status and unclaimed as the software records them (status --format xml) must match the YANG."""
    path = tmp_path / "ds.xml"
    shutil.copy(EXAMPLE_DATASTORE, path)
    store = EmbeddedStore(str(path))
    settings = ListenerSettings(secret=SECRET)
    clock = FakeClock()
    listener = Listener(store, settings, clock=clock)
    server = httpserver.start_in_thread(served(create_app(store, settings, listener=listener)))
    try:
        sim = AgentSimulator(f"http://127.0.0.1:{server.port}", sleep=clock.advance, max_polls=30)
        sim.run(SimulatedDevice("FOC2001X0AB", pid="WRONG-PID"))  # a refused claim, in the status
        sim.run(SimulatedDevice("FOC2001X0AB"))
        sim.run(SimulatedDevice("FOC2001X0CD", pid="C9300-48P", fail_service="config-upgrade"))
        sim.run(SimulatedDevice("UNKNOWN9"))
    finally:
        server.stop()
        listener.close()  # the stranger's sighting, written behind its answer
    out = tmp_path / "state.xml"
    out.write_text(views.xml(store.snapshot()))
    assert "<unclaimed>" in out.read_text() and "<state>error</state>" in out.read_text()
    result = yanglint(str(out))
    assert result.returncode == 0, result.stderr


def test_yanglint_rejects_a_bad_instance(tmp_path):
    """The check above can fail: a bad enumeration value is caught."""
    bad = tmp_path / "bad.xml"
    bad.write_text('<pnp xmlns="urn:pnp-service:pnp"><device><serial>S</serial><status><state>bogus</state></status></device></pnp>')
    assert yanglint(str(bad)).returncode != 0
    bad.write_text('<services xmlns="http://clicon.org/controller"><pnp-device xmlns="urn:pnp-service:pnp">'
                   "<serial>bad serial!</serial></pnp-device></services>")
    assert yanglint(str(bad)).returncode != 0
