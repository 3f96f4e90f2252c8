"""The whole loop on a real Clixon controller: CLI set and commit, service module, listener, agent.

Needs a running controller with pnp-service installed into it (``./install.sh --controller``), found
through ``PNP_CLIXON_CONFIG`` (its config file, e.g. /usr/local/etc/clixon/controller.xml) and, optionally,
``PNP_CLIXON_SOCKET`` (default: CLICON_SOCK of that file) and ``PNP_CLIXON_RESTART`` (a shell command that
restarts the controller and reconnects its devices; default: clixon_backend -z / -s running, connection open).
Skipped, with the reason, when they are absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid

import pytest
from lxml import etree

from pnp_service import httpserver

CONFIG = os.environ.get("PNP_CLIXON_CONFIG", "")

pytestmark = pytest.mark.skipif(
    not CONFIG or not os.path.exists(CONFIG) or not shutil.which("clixon_cli"),
    reason="no Clixon controller: set PNP_CLIXON_CONFIG to a running controller's config file "
    "(with clixon_cli on PATH and pnp-service installed into it by ./install.sh --controller)",
)


def socket_path() -> str:
    if os.environ.get("PNP_CLIXON_SOCKET"):
        return os.environ["PNP_CLIXON_SOCKET"]
    found = etree.parse(CONFIG).getroot().findtext("{http://clicon.org/config}CLICON_SOCK")
    return found or "/usr/local/var/run/controller/controller.sock"


def cli(*words: str, configure: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    command = ["clixon_cli", "-f", CONFIG, "-1"] + (["-m", "configure"] if configure else []) + list(words)
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"{' '.join(words)}: {result.stdout}{result.stderr}"
    return result


def commit() -> str:
    """Commit; the CLI exits 0 even when a service fails, so the verdict is on stderr."""
    result = cli("commit", configure=True, check=False)
    return result.stdout + result.stderr


def show_pnp(serial: str, entry: str = "device") -> etree._Element | None:
    """The serial's ``/pnp/device`` (or ``/pnp/unclaimed``) entry in running, as ``show configuration`` prints it."""
    result = cli("show", "configuration", "pnp", check=False)
    if result.returncode != 0 or "<pnp" not in result.stdout:
        return None
    root = etree.fromstring(result.stdout.strip().encode())
    for device in root.iter(f"{{urn:pnp-service:pnp}}{entry}"):
        if device.findtext("{urn:pnp-service:pnp}serial") == serial:
            return device
    return None


def text(element, path):
    if element is None:
        return None
    return element.findtext("/".join(f"{{urn:pnp-service:pnp}}{p}" for p in path.split("/")))


def wait_for(predicate, timeout=20.0, what="condition"):
    from conftest import wait_until

    return wait_until(predicate, timeout, what, every=0.3)


@pytest.fixture(scope="module", autouse=True)
def yang_loaded():
    result = cli("show", "configuration", "services", check=False)
    if result.returncode != 0:
        pytest.skip(f"controller not usable: {result.stderr.strip()}")
    probe = cli("set", "services", "pnp-device", "PROBE0", "hostname", "probe", configure=True, check=False)
    cli("discard", configure=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the pnp-service YANG is not loaded in the controller (./install.sh --controller, then restart it)")


@pytest.fixture
def serial():
    value = "IT" + uuid.uuid4().hex[:8].upper()
    yield value
    cli("discard", configure=True, check=False)
    for words in (("services", "pnp-device", value), ("pnp", "device", value), ("pnp", "unclaimed", value)):
        cli("delete", *words, configure=True, check=False)
    commit()


def declare(serial: str, hostname: str = "it-switch", template_line: str = "hostname {{ hostname }}") -> None:
    cli("set", "services", "pnp-device", serial, "pid", "C9300-24P", configure=True)
    cli("set", "services", "pnp-device", serial, "hostname", hostname, configure=True)
    cli("set", "services", "pnp-device", serial, "config", "line", "10", "text", f'"{template_line}"', configure=True)
    cli("set", "services", "pnp-device", serial, "config", "line", "20", "text", '"ip domain name {{ domain }}"', configure=True)
    cli("set", "services", "pnp-device", serial, "variable", "domain", "value", "campus.example.net", configure=True)


@pytest.fixture
def listener(tmp_path):
    from pnp_service.app import create_app, served
    from pnp_service.listener import ListenerSettings
    from pnp_service.stores.clixon import ClixonStore

    store = ClixonStore(socket_path(), journal_path=str(tmp_path / "journal"), retry_max_seconds=2)
    from pnp_service.provisioner import Settings

    # One attempt: a failure is final at once (the simulator does not wait out retry backoffs in real time).
    app = create_app(store, ListenerSettings(secret=b"integration-secret-0123456789",
                                             provisioning=Settings(max_attempts=1)))
    server = httpserver.start_in_thread(served(app))
    yield store, f"http://127.0.0.1:{server.port}"
    server.stop()
    store.close()


def run_agent(url: str, serial: str, **kwargs):
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    return AgentSimulator(url, time_scale=0, max_polls=30).run(SimulatedDevice(serial, **kwargs))


def test_declare_commit_provision_delete(serial, listener):
    store, url = listener
    declare(serial)
    assert "Failed" not in commit()
    device = show_pnp(serial)
    assert text(device, "work/revision"), "work not planned into the controller"
    configs = [s for s in device.iter("{urn:pnp-service:pnp}value") if "hostname it-switch" in (s.text or "")]
    assert configs and configs[0].text == "hostname it-switch\nip domain name campus.example.net\n"

    wait_for(lambda: store.load(serial).work, what="the listener to see the work")
    device_sim = run_agent(url, serial)
    assert device_sim.outcome == "configured", device_sim
    assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="status in the CLI")

    cli("delete", "services", "pnp-device", serial, configure=True)
    assert "Failed" not in commit()
    device = show_pnp(serial)
    assert text(device, "work/revision") is None
    assert text(device, "status/state") == "provisioned"  # the listener's status stays, the work is gone


def test_changed_declaration_replaces_work(serial):
    declare(serial)
    commit()
    first = text(show_pnp(serial), "work/revision")
    cli("set", "services", "pnp-device", serial, "hostname", "renamed", configure=True)
    commit()
    device = show_pnp(serial)
    assert text(device, "work/revision") not in (None, first)
    assert len(device.findall("{urn:pnp-service:pnp}work")) == 1


def test_commit_diff_commits_nothing(serial):
    declare(serial)
    result = cli("commit", "diff", configure=True, check=False)
    assert "Failed" not in result.stderr
    assert show_pnp(serial) is None or text(show_pnp(serial), "work/revision") is None


def test_template_error_fails_the_commit_with_its_message(serial):
    declare(serial, template_line="hostname {{ no_such_variable }}")
    output = commit()
    assert "Failed" in output and "no_such_variable" in output and serial in output
    cli("discard", configure=True)
    assert show_pnp(serial) is None


def test_unknown_device_is_unclaimed_in_the_controller(serial, listener):
    _, url = listener
    assert run_agent(url, serial).outcome == "backed-off"

    def unclaimed():
        result = cli("show", "configuration", "pnp", check=False)
        return serial in result.stdout and "<unclaimed>" in result.stdout

    wait_for(unclaimed, what="the unclaimed entry in the CLI")


def test_writes_wait_while_an_operator_has_uncommitted_edits(serial, listener):
    store, url = listener
    declare(serial)
    commit()
    wait_for(lambda: store.load(serial).work, what="work")
    cli("set", "services", "pnp-device", serial, "hostname", "pending-edit", configure=True)  # not committed
    assert run_agent(url, serial).outcome == "configured"
    time.sleep(2)
    assert text(show_pnp(serial), "status/state") is None, "status committed the operator's edits too"
    assert "candidate" in store.last_error or store.last_error
    cli("discard", configure=True)
    assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="status after discard")
    assert "pending-edit" not in cli("show", "configuration", "services").stdout


def restart_controller():
    command = os.environ.get("PNP_CLIXON_RESTART")
    if command:
        subprocess.run(command, shell=True, check=True, timeout=120, capture_output=True)
        return
    subprocess.run(["clixon_backend", "-f", CONFIG, "-z"], capture_output=True, timeout=30)
    time.sleep(1)
    subprocess.run(["clixon_backend", "-f", CONFIG, "-s", "running"], check=True, capture_output=True, timeout=30)
    wait_for(lambda: cli("show", "version", check=False).returncode == 0, what="the controller to start")
    cli("connection", "open", check=False)


def test_listener_survives_a_controller_restart(serial, listener):
    store, url = listener
    declare(serial)
    commit()
    wait_for(lambda: store.load(serial).work, what="work")
    subprocess.run(["clixon_backend", "-f", CONFIG, "-z"], capture_output=True, timeout=30)
    try:
        # The controller is down: the device is still served from memory, its progress journaled.
        assert run_agent(url, serial).outcome == "configured"
        assert store.load(serial).status.state == "provisioned"
    finally:
        restart_controller()
    assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", timeout=40,
                    what="journaled status committed after the restart")


def drive_into_error(store, url: str, serial: str) -> None:
    """Declared from the CLI, then an agent that fails its config-upgrade every time: the device ends in error in
    running (a wrong PID no longer does: that is a refused claim, which leaves the declaration serviceable)."""
    declare(serial)
    commit()
    wait_for(lambda: store.load(serial).work, what="work")
    assert run_agent(url, serial, fail_service="config-upgrade").outcome == "failed"
    assert wait_for(lambda: text(show_pnp(serial), "status/state") == "error", what="error state")


def test_operator_reset_of_a_device_in_error(serial, listener):
    store, url = listener
    drive_into_error(store, url, serial)
    cli("delete", "pnp", "device", serial, "status", configure=True)
    assert "Failed" not in commit()
    wait_for(lambda: store.load(serial).status is None, what="reset seen by the listener")
    assert run_agent(url, serial).outcome == "configured"


def test_status_command_shows_the_controller(serial, listener):
    import sys

    store, url = listener
    declare(serial)
    commit()
    wait_for(lambda: store.load(serial).work, what="work")
    run_agent(url, serial)
    wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="status")
    result = subprocess.run([sys.executable, "-m", "pnp_service.cli", "status", "--clixon-socket", socket_path()],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith(serial))
    assert row.split()[1] == "provisioned"


# --------------------------------------------------------------------------- nothing a device sends stalls the others


def post(url: str, body: bytes) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/xml"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def stranger_request(serial_text: str) -> bytes:
    return (f'<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:C9300-24P,VID:V01,SN:{serial_text}">'
            '<info xmlns="urn:cisco:pnp:work-info" correlator="CiscoPnP-1.0-1"><deviceId>'
            f"<udi>PID:C9300-24P,VID:V01,SN:{serial_text}</udi><hostname>Switch</hostname>"
            "<authRequired>false</authRequired></deviceId></info></pnp>").encode()


def test_a_stranger_with_an_impossible_serial_stalls_nobody(serial, listener, tmp_path):
    store, url = listener
    assert post(url + "/pnp/WORK-REQUEST", stranger_request("BAD$SERIAL!")) == 400  # refused at the edge
    declare(serial)
    assert "Failed" not in commit()
    wait_for(lambda: store.load(serial).work, what="the listener to see the work")
    assert run_agent(url, serial).outcome == "configured"
    assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", timeout=10,
                    what="provisioned in running")
    assert "BAD$SERIAL" not in cli("show", "configuration", "pnp").stdout


def test_a_journal_poisoned_by_an_older_version_heals_on_start(serial, tmp_path):
    """Listener 0.1 journaled BAD$SERIAL! and retried it forever; now it is set aside and the rest is committed."""
    import json

    from pnp_service.app import create_app, served
    from pnp_service.listener import ListenerSettings
    from pnp_service.stores.clixon import ClixonStore

    declare(serial)
    assert "Failed" not in commit()
    journal = tmp_path / "journal"
    journal.write_text(json.dumps({"kind": "unclaimed", "serial": "BAD$SERIAL!",
                                   "value": {"serial": "BAD$SERIAL!", "pid": "C9300-24P"}}) + "\n")
    store = ClixonStore(socket_path(), journal_path=str(journal), retry_max_seconds=2)
    app = create_app(store, ListenerSettings(secret=b"integration-secret-0123456789"))
    server = httpserver.start_in_thread(served(app))
    try:
        url = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: store.load(serial).work, what="work")
        assert run_agent(url, serial).outcome == "configured"
        assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", timeout=10,
                        what="provisioned in running")
    finally:
        server.stop()
        store.close()
    assert "BAD$SERIAL!" in (tmp_path / "journal.rejected").read_text()
    assert journal.read_text() == ""


def test_a_change_the_controller_refuses_is_set_aside_and_the_others_are_committed(serial, listener):
    """A value our own checks let through but the controller refuses: bisected out, nothing else held back."""
    from pnp_service.model import Status, Unclaimed
    from pnp_service.provisioner import Decision, Event

    store, _ = listener
    good = [f"{serial}G{n}" for n in range(3)]
    try:
        for other in good:
            store.update(other, lambda record, s=other: Decision(b"", Event.UNCLAIMED, unclaimed=Unclaimed(s, pid="C9200L")))
        store.update(serial, lambda record: Decision(b"", Event.REQUEST, status=unchecked(Status(), state="bogus-state")))
        assert store.flush() is True
        shown = cli("show", "configuration", "pnp").stdout
        assert all(other in shown for other in good) and "bogus-state" not in shown
        devices = {d.findtext("{urn:pnp-service:pnp}serial")
                   for d in etree.fromstring(shown.strip().encode()).iter("{urn:pnp-service:pnp}device")}
        assert not devices & set(good), "a stranger left an empty /pnp/device entry"
        assert store.quarantined == 1 and "enumeration" in open(store._journal.rejected_path).read()
    finally:
        for other in good:
            cli("delete", "pnp", "unclaimed", other, configure=True, check=False)
        commit()


def test_pnp_service_reset_on_the_controller(serial, listener, monkeypatch):
    import sys

    from pnp_service.stores.clixon import store as clixon_store

    # A device in error polls again after 10 minutes, well beyond the relook interval; this one at once.
    monkeypatch.setattr(clixon_store, "RELOOK_SECONDS", 0.0)
    store, url = listener
    drive_into_error(store, url, serial)
    command = [sys.executable, "-m", "pnp_service.cli", "reset", "--clixon-socket", socket_path()]
    result = subprocess.run(command + [serial], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "starts over" in result.stdout, result.stderr
    assert text(show_pnp(serial), "status/state") is None
    # The listener hears of it at the device's next poll, not at its next refresh (a plain commit announces nothing).
    assert run_agent(url, serial).outcome == "configured"
    unknown = subprocess.run(command + ["NOSUCH" + serial], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 1 and "not declared" in unknown.stderr


def test_devices_due_a_relook_in_one_batch_are_read_in_one_get_config(serial, listener, monkeypatch):
    from pnp_service.provisioner import Decision, Event
    from pnp_service.stores.clixon import store as clixon_store

    monkeypatch.setattr(clixon_store, "RELOOK_SECONDS", 0.0)
    store, url = listener
    serials = [serial + "B", serial + "A"]  # out of the controller's key order (see by_serials)
    try:
        for each in serials:
            drive_into_error(store, url, each)
        assert store.flush() is True  # nothing of this listener's own in flight: the controller answers at once
        reads = []
        original = store._fetch
        monkeypatch.setattr(store, "_fetch", lambda xpath, patience=None: reads.append(xpath) or original(xpath, patience))
        seen = store.update_many([(each, lambda record: Decision(b"", Event.REQUEST, detail=(
            f"{record.declaration is not None} {record.status.state if record.status else None}"))) for each in serials])
        assert reads and all(each in reads[0] for each in serials)  # (with no relook interval, each is read again)
        # The one reply held each device: both still declared and in error, as running has them.
        assert [decision.detail for decision in seen] == ["True error", "True error"]
    finally:
        for each in serials:
            for words in (("services", "pnp-device", each), ("pnp", "device", each)):
                cli("delete", *words, configure=True, check=False)
        commit()


def test_an_extra_step_declared_from_the_cli_is_planned_and_served(serial, listener):
    store, url = listener
    declare(serial)
    cli("set", "services", "pnp-device", serial, "step", "banner", "type", "cli-config", configure=True)
    cli("set", "services", "pnp-device", serial, "step", "banner", "position", "after-device-info", configure=True)
    cli("set", "services", "pnp-device", serial, "step", "banner", "param", "lines", "value",
        '"banner motd ^{{ hostname }}^"', configure=True)
    assert "Failed" not in commit()
    steps = [s.findtext("{urn:pnp-service:pnp}id") for s in show_pnp(serial).iter("{urn:pnp-service:pnp}step")]
    assert steps == ["device-info", "banner", "config-upgrade"]
    wait_for(lambda: store.load(serial).work, what="the listener to see the work")
    result = run_agent(url, serial)
    assert result.outcome == "configured" and result.trace[:3] == ["device-info", "cli-config", "config-upgrade"]


def test_sudi_authentication_set_from_the_cli_is_enforced_on_the_clixon_store(serial, tmp_path):
    from pnp_service import sudi
    from pnp_service.app import create_app, served
    from pnp_service.listener import ListenerSettings
    from pnp_service.provisioner import Settings
    from pnp_service.simulator import AgentSimulator, SimulatedDevice
    from pnp_service.simulator.lab_pki import LabCa
    from pnp_service.stores.clixon import ClixonStore

    declare(serial)
    cli("set", "services", "pnp-device", serial, "authentication", "sudi", configure=True)
    assert "Failed" not in commit()
    ca, rogue = LabCa.create("IT"), LabCa.create("Rogue")
    policy = sudi.Policy(anchors=sudi.load_ca_bundle(ca.bundle()))
    store = ClixonStore(socket_path(), journal_path=str(tmp_path / "journal"), retry_max_seconds=2)
    app = create_app(store, ListenerSettings(secret=b"integration-secret-0123456789", provisioning=Settings(sudi=policy)))
    server = httpserver.start_in_thread(served(app))
    try:
        url = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: store.load(serial).declaration and store.load(serial).declaration.authentication == "sudi",
                 what="the listener to see authentication sudi")
        cert, key = rogue.device(serial, "C9300-24P")
        spoofer = SimulatedDevice(serial, sudi_cert=cert, sudi_key=key)
        result = AgentSimulator(url, time_scale=0, max_polls=4, max_wait=5, source_address="127.0.0.2").run(spoofer)
        assert result.trace[0] == "device-auth" and spoofer.config is None
        cert, key = ca.device(serial, "C9300-24P")
        genuine = SimulatedDevice(serial, sudi_cert=cert, sudi_key=key)
        result = AgentSimulator(url, time_scale=0, max_polls=10).run(genuine)
        assert result.outcome == "configured" and result.trace[:2] == ["device-auth", "device-info"], result
        assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="provisioned in running")
        assert text(show_pnp(serial), "status/sudi/proven-address") == "127.0.0.1"
    finally:
        server.stop()
        store.close()


# --------------------------------------------------------------------------- day 0 to managed

DEVICE_HOST_KEY = os.environ.get("PNP_CLIXON_DEVICE_HOST_KEY", "")
KNOWN_HOSTS = os.path.expanduser(os.environ.get("PNP_CLIXON_KNOWN_HOSTS", "~/.ssh/known_hosts"))
needs_netconf_device = pytest.mark.skipif(
    not DEVICE_HOST_KEY or not os.path.exists(DEVICE_HOST_KEY),
    reason="set PNP_CLIXON_DEVICE_HOST_KEY to the host key (.pub) of a NETCONF server on 127.0.0.1:830 the controller "
    "can log in to as PNP_CLIXON_DEVICE_USER (default root): the simulator stands in for that device over PnP",
)


def declare_managed(serial: str, hostname: str, address: str = "") -> None:
    lines = ["hostname {{ hostname }}", "netconf-yang", "username {{ netconf_user }} privilege 15",
             "ip ssh pubkey-chain", " username {{ netconf_user }}", "  key-string", "   {{ controller_ssh_key_data }}",
             "   exit"]
    cli("set", "services", "pnp-device", serial, "hostname", hostname, configure=True)
    for number, line in enumerate(lines, 1):
        cli("set", "services", "pnp-device", serial, "config", "line", str(number * 10), "text", f'"{line}"', configure=True)
    cli("set", "services", "pnp-device", serial, "config", "apply-to", "running", configure=True)
    cli("set", "services", "pnp-device", serial, "config", "reload", "false", configure=True)
    cli("set", "services", "pnp-device", serial, "controller", "user", os.environ.get("PNP_CLIXON_DEVICE_USER", "root"),
        configure=True)
    if address:
        cli("set", "services", "pnp-device", serial, "controller", "address", address, configure=True)


def controller_device(name: str) -> tuple[str, str]:
    """(conn-state, logmsg) of a device under /ctrl:devices, from the CLI."""
    result = cli("show", "connections", check=False)
    for line in result.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return fields[1], " ".join(fields[3:])
    return "", ""


@needs_netconf_device
def test_a_provisioned_device_is_handed_to_the_controller_and_managed(serial, tmp_path):
    from pnp_service.app import create_app, served
    from pnp_service.handoff import HandoffWorker
    from pnp_service.listener import Listener, ListenerSettings
    from pnp_service.simulator import AgentSimulator, SimulatedDevice
    from pnp_service.stores.clixon import ClixonStore
    from pnp_service.stores.clixon.handoff import ControllerAction

    good, bad = f"ok-{serial.lower()}", f"bad-{serial.lower()}"
    other = serial[:-1] + ("X" if serial[-1] != "X" else "Y")
    declare_managed(serial, good)
    declare_managed(other, bad, address="127.0.0.3")  # nothing listens there
    assert "Failed" not in commit()
    config = [v.text for v in show_pnp(serial).iter("{urn:pnp-service:pnp}value") if v.text and "key-string" in v.text]
    key_data = open("/usr/local/etc/pnp-service/controller_ssh_key.pub").read().split()[1] \
        if os.path.exists("/usr/local/etc/pnp-service/controller_ssh_key.pub") else ""
    assert config and (not key_data or key_data in config[0]), "the controller's key is not in the rendered configuration"
    saved = open(KNOWN_HOSTS).read() if os.path.exists(KNOWN_HOSTS) else None
    host_key = " ".join(open(DEVICE_HOST_KEY).read().split()[:2])
    # No trust on first use: the device's host key is pinned from what it said over PnP, not found there before.
    with open(KNOWN_HOSTS, "w") as handle:
        handle.writelines(line + "\n" for line in (saved or "").splitlines() if host_key not in line)
    store = ClixonStore(socket_path(), journal_path=str(tmp_path / "journal"), retry_max_seconds=2)
    worker = HandoffWorker(store, ControllerAction(socket_path(), KNOWN_HOSTS), retry_base_seconds=60)
    worker.start()
    settings = ListenerSettings(secret=b"integration-secret-0123456789")
    listener = Listener(store, settings, on_provisioned=worker.notify)
    server = httpserver.start_in_thread(served(create_app(store, settings, listener=listener)))
    try:
        url = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: store.load(serial).work and store.load(other).work, what="the listener to see the work")
        for each in (serial, other):
            result = AgentSimulator(url, time_scale=0, max_polls=15).run(SimulatedDevice(each, ssh_host_key=host_key))
            assert result.outcome == "configured" or result.trace[-1] == "backoff", result
            assert "cli-config" in result.trace and "config-upgrade" in result.trace
        assert wait_for(lambda: text(show_pnp(serial), "status/handoff/state") == "managed", timeout=60,
                        what="hand-off managed in running")
        assert controller_device(good)[0] == "OPEN"
        assert f"[127.0.0.1]:830 {host_key}" in open(KNOWN_HOSTS).read()
        assert wait_for(lambda: text(show_pnp(other), "status/handoff/state") == "failed", timeout=60,
                        what="the failing hand-off recorded")
        message = text(show_pnp(other), "status/handoff/message")
        assert "Connection refused" in message or "127.0.0.3" in message, message
        assert text(show_pnp(serial), "status/handoff/state") == "managed"  # the failure touched nobody else
        # The entry that did not open is gone again: while an enabled device is CLOSED the controller holds every
        # commit in INIT with the candidate locked (reproduced on 1.8.0+5), which would stall the roll-out.
        assert "withdrawn" in message and controller_device(bad) == ("", ""), (message, controller_device(bad))
        cli("set", "services", "pnp-device", other, "hostname", bad + "-2", configure=True)
        started = time.monotonic()
        result = subprocess.run(["clixon_cli", "-f", CONFIG, "-1", "-m", "configure", "commit"],
                                capture_output=True, text=True, timeout=60)
        assert "Failed" not in result.stdout + result.stderr and time.monotonic() - started < 30, result
    finally:
        server.stop()
        worker.stop()
        store.close()
        if saved is not None:
            with open(KNOWN_HOSTS, "w") as handle:
                handle.write(saved)
        for name in (good, bad):
            cli("connection", "close", name, check=False)
            cli("delete", "devices", "device", name, configure=True, check=False)
        cli("commit", "local", configure=True, check=False)
        for words in (("services", "pnp-device", other), ("pnp", "device", other)):  # the fixture removes `serial`
            cli("delete", *words, configure=True, check=False)
        commit()


def unchecked(status, **fields: object):
    """A status carrying values its types refuse: what an older or buggy writer might have sent the controller."""
    for name, value in fields.items():
        object.__setattr__(status, name, value)
    return status


# --------------------------------------------------------------------------- a device's timeline


def test_a_devices_timeline_is_kept_beside_the_journal_and_shown_by_status(serial, tmp_path):
    import json
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    state = tmp_path / "state"
    serve = subprocess.Popen([sys.executable, "-m", "pnp_service.cli", "serve", "--clixon-socket", socket_path(),
                              "--state-dir", str(state), "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        from conftest import answers_hello

        wait_for(lambda: answers_hello(port), timeout=30, what="serve answering HELLO")
        declare(serial)
        commit()
        time.sleep(1)  # the listener hears of the commit
        assert run_agent(f"http://127.0.0.1:{port}", serial).outcome == "configured"
        wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="status")
    finally:
        serve.terminate()
        serve.wait(30)
    assert (state / "timeline.db").exists()
    result = subprocess.run([sys.executable, "-m", "pnp_service.cli", "status", "--clixon-socket", socket_path(),
                             "--state-dir", str(state), serial, "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    told = json.loads(result.stdout)
    assert told["device"]["state"] == "provisioned"
    events = [(entry["event"], entry["step"]) for entry in told["timeline"]]
    assert events[0] == ("request", "device-info") and events[-1][0] == "provisioned", events


def test_a_declaration_deleted_before_its_device_called_in_leaves_no_entry(serial, listener):
    declare(serial)
    assert "error" not in commit().lower()
    wait_for(lambda: text(show_pnp(serial), "work/revision"), what="work planned")
    cli("delete", "services", "pnp-device", serial, configure=True)
    assert "error" not in commit().lower()
    # The controller removes the work; the listener, told of the transaction, removes the empty entry.
    wait_for(lambda: show_pnp(serial) is None, timeout=40, what="the empty /pnp/device entry removed")


def test_a_switch_declared_by_location_in_clixon_cli_provisions_with_any_serial(serial, listener):
    """issue 25 on a real controller: a pnp-location declared and committed in clixon_cli; a switch reporting that
    neighbour is declared by the listener (its declaration names the location) and provisioned; a second switch
    there is refused."""
    store, url = listener
    port = "Gi1/0/" + str(uuid.uuid4().int % 48 + 1)
    second, third = serial + "B", serial + "C"
    try:
        cli("set", "services", "pnp-location", "it-dist-1", port, "hostname", "it-located", configure=True)
        cli("set", "services", "pnp-location", "it-dist-1", port, "config", "line", "10", "text",
            '"hostname {{ hostname }}"', configure=True)
        assert "Failed" not in commit()
        wait_for(lambda: store.load(serial).locations, what="the location in the listener's copy")
        neighbour = (("IT-DIST-1.campus.example.net", "GigabitEthernet" + port[2:]),)
        from pnp_service.simulator import AgentSimulator, SimulatedDevice

        device = SimulatedDevice(serial, neighbors=neighbour)
        simulator = AgentSimulator(url, time_scale=0, max_polls=60, sleep=lambda seconds: time.sleep(min(seconds, 0.5)))
        played = simulator.run(device)
        assert played.outcome == "configured", played
        assert "hostname it-located" in device.config
        declared = cli("show", "configuration", "services", "pnp-device", serial).stdout
        assert "it-located" in declared and "<located>" in declared and port in declared
        assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="status")
        run_agent(url, second, neighbors=neighbour)
        refused = lambda: store.load(second).unclaimed is not None and serial in store.load(second).unclaimed.note
        assert wait_for(refused, what="the second switch refused, naming the first")
        cli("pnp", "reset", serial)  # the operator frees the location from the controller's own CLI
        assert wait_for(lambda: "<located>" not in cli("show", "configuration", "services", "pnp-device", serial).stdout,
                        what="the bound declaration deleted by the listener")
        replacement = SimulatedDevice(third, neighbors=neighbour)
        assert simulator.run(replacement).outcome == "configured"  # the next switch found there is bound
        assert "<located>" in cli("show", "configuration", "services", "pnp-device", third).stdout
    finally:
        cli("delete", "services", "pnp-location", "it-dist-1", port, configure=True, check=False)
        for stranger in (second, third):
            cli("delete", "pnp", "unclaimed", stranger, configure=True, check=False)
            cli("delete", "pnp", "device", stranger, configure=True, check=False)  # the serial fixture's are its own
        cli("delete", "services", "pnp-device", third, configure=True, check=False)
        commit()


def test_a_location_that_asks_for_sudi_binds_only_a_proven_switch_on_a_real_controller(serial, tmp_path):
    """issue 25's trust rule on a real controller: a pnp-location with authentication sudi declared in clixon_cli; a
    switch that names the right neighbour but cannot prove a genuine SUDI is not bound (the controller's unclaimed
    entry says why), and one that can is bound and provisioned."""
    from pnp_service import sudi
    from pnp_service.app import create_app, served
    from pnp_service.listener import ListenerSettings
    from pnp_service.provisioner import Settings
    from pnp_service.simulator import AgentSimulator, SimulatedDevice
    from pnp_service.simulator.lab_pki import LabCa
    from pnp_service.stores.clixon import ClixonStore

    port = "Gi2/0/" + str(uuid.uuid4().int % 48 + 1)
    impostor = serial + "X"
    ca, rogue = LabCa.create("IT"), LabCa.create("Rogue")
    store = ClixonStore(socket_path(), journal_path=str(tmp_path / "journal"), retry_max_seconds=2)
    app = create_app(store, ListenerSettings(secret=b"integration-secret-0123456789",
                                             provisioning=Settings(sudi=sudi.Policy(anchors=sudi.load_ca_bundle(ca.bundle())))))
    server = httpserver.start_in_thread(served(app))
    neighbour = (("it-dist-2", "GigabitEthernet" + port[2:]),)
    try:
        cli("set", "services", "pnp-location", "it-dist-2", port, "hostname", "it-proven", configure=True)
        cli("set", "services", "pnp-location", "it-dist-2", port, "authentication", "sudi", configure=True)
        cli("set", "services", "pnp-location", "it-dist-2", port, "config", "line", "10", "text",
            '"hostname {{ hostname }}"', configure=True)
        assert "Failed" not in commit()
        url = f"http://127.0.0.1:{server.port}"
        wait_for(lambda: store.load(serial).locations, what="the location in the listener's copy")
        play = lambda device: AgentSimulator(url, time_scale=0, max_polls=40,  # noqa: E731
                                             sleep=lambda seconds: time.sleep(min(seconds, 0.2))).run(device)
        cert, key = rogue.device(impostor, "C9300-24P")
        spoofer = SimulatedDevice(impostor, neighbors=neighbour, sudi_cert=cert, sudi_key=key)
        assert "device-auth" in play(spoofer).trace and spoofer.config is None
        refused = lambda: "refused" in (text(show_pnp(impostor, "unclaimed"), "note") or "")  # noqa: E731
        assert wait_for(refused, what="the impostor's refused proof in the controller")
        assert store.load(impostor).declaration is None
        cert, key = ca.device(serial, "C9300-24P")
        genuine = SimulatedDevice(serial, neighbors=neighbour, sudi_cert=cert, sudi_key=key)
        played = play(genuine)
        assert played.outcome == "configured", played
        assert "hostname it-proven" in genuine.config
        assert wait_for(lambda: text(show_pnp(serial), "status/state") == "provisioned", what="provisioned in running")
    finally:
        server.stop()
        store.close()
        cli("delete", "services", "pnp-location", "it-dist-2", port, configure=True, check=False)
        cli("delete", "pnp", "unclaimed", impostor, configure=True, check=False)
        commit()
