"""docs/controller.md (and the controller lines of README.md, protocol.md, steps.md, operations.md) as written,
on a real controller: install, restart, declare, commit, watch, reset, the hand-off.

Needs what tests/integration/test_clixon_controller.py needs (PNP_CLIXON_CONFIG), run as root, the documented
config path (/usr/local/etc/clixon/controller.xml) and socket, and Debian's /usr/bin/python3 with clixon-pyapi.
The hand-off walkthrough also needs the lab's NETCONF device on 127.0.0.1:830 with the user ``netconf``
(PNP_CLIXON_DEVICE_USER=netconf) and /etc/ssh/ssh_host_ed25519_key.pub as its host key.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import docs_harness as docs  # noqa: E402
from conftest import wait_until  # noqa: E402
from docs_harness import REPO, Sandbox, find_key  # noqa: E402

CONFIG = "/usr/local/etc/clixon/controller.xml"
SOCKET = "/usr/local/var/run/controller/controller.sock"
SERIAL = "FOC2001X0AB"

pytestmark = pytest.mark.skipif(
    os.environ.get("PNP_CLIXON_CONFIG") != CONFIG or not shutil.which("clixon_cli") or os.geteuid() != 0
    or not os.path.exists("/usr/bin/python3"),
    reason="the controller's docs run as written on a controller installed at the documented paths, as root: set "
    f"PNP_CLIXON_CONFIG={CONFIG} (tests/integration/test_clixon_controller.py)",
)


def paste(lines: list[str]) -> str:
    """Paste lines into clixon_cli, as a user does; its whole output."""
    result = subprocess.run(["clixon_cli", "-f", CONFIG], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, timeout=120)
    return result.stdout + result.stderr


def clixon_block(file: str, first: str) -> list[str]:
    return docs.clixon_lines(find_key(file, first))


def shell_block(file: str, first: str) -> list[str]:
    return docs.shell_lines(find_key(file, first))


def forget(*serials: str) -> None:
    lines = ["configure"]
    for serial in serials:
        lines += [f"delete services pnp-device {serial}", f"delete pnp device {serial}", f"delete pnp unclaimed {serial}"]
    paste(lines + ["commit", "exit"])


def wait_open(timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = subprocess.run(["clixon_cli", "-f", CONFIG, "-1", "show", "connections"], capture_output=True,
                               text=True).stdout
        if " OPEN " in shown and " CLOSED " not in shown and "CONNECTING" not in shown:
            return
        time.sleep(0.5)
    raise AssertionError(f"the controller's devices did not open: {shown}")


@pytest.fixture
def box(tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    if not shutil.which("sudo"):  # root already: the docs' sudo does nothing more
        (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (shim / "sudo").chmod(0o755)
    sandbox = Sandbox(tmp_path / "run", link_venv=True)
    sandbox.env["PATH"] = f"{shim}{os.pathsep}{sandbox.env['PATH']}"
    forget(SERIAL)
    yield sandbox
    sandbox.close()
    forget(SERIAL)


def test_install_and_restart_as_written(box):
    (install,) = shell_block("docs/controller.md", "sudo ./install.sh --controller --python /usr/bin/python3")
    readme = shell_block("README.md", "sudo ./install.sh --controller --python /usr/bin/python3     # package, YANG, "
                                      "service module")[0]
    assert readme.split("#")[0].strip() == install  # the same command on both pages
    done = box.run(install, cwd=REPO)
    restart = shell_block("docs/controller.md", f"clixon_backend -f {CONFIG} -z")
    assert all(line in done.stdout for line in restart)  # install.sh prints them, with this controller's config
    for line in restart:
        box.run(line, ok=not line.endswith("-z"))  # stopping reports nothing useful; starting must work
        if line.endswith("-z"):
            time.sleep(1)
    wait_open()
    module = open("/usr/local/share/controller/modules/pnp_service_module.py").read()
    assert "configure(template_dirs=['/usr/local/share/pnp-service/templates']" in module


def test_declare_commit_watch_reset_as_written(box):
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    (serve,) = shell_block("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --port 80")
    box.serve(serve)
    first = paste(clixon_block("docs/controller.md", "configure / set services pnp-device FOC2001X0AB pid C9300-24P"))
    shown = [line for line in docs.find("docs/controller.md", "Transaction 12 failed").lines]
    assert shown[1] in first and "Failed" in first and "Unknown command" not in first
    second = paste(["configure"] + clixon_block("docs/controller.md",
                                                "set services pnp-device FOC2001X0AB variable secret value change-me"))
    assert "Failed" not in second and "Unknown command" not in second and second.count("OK") >= 2
    watch = paste(clixon_block("docs/controller.md", "show configuration pnp device FOC2001X0AB"))
    assert "<revision>" in watch and "Unknown command" not in watch
    (status,) = shell_block("docs/controller.md", f"pnp-service status --clixon-socket {SOCKET}")
    assert f"{SERIAL}  planned" in box.run(status).stdout.replace("   ", "  ")
    device = SimulatedDevice(SERIAL, pid="C9300-24P")
    assert AgentSimulator("http://127.0.0.1:80", time_scale=0).run(device).outcome == "configured"
    assert "hostname access-sw-01" in device.config and "secret change-me" in device.config
    (json_status,) = shell_block("docs/operations.md", f"pnp-service status --clixon-socket {SOCKET} --format json")
    import json

    deadline = time.time() + 15  # the listener commits what its journal holds within a moment, not before answering
    while True:
        rows = {row["serial"]: row for row in json.loads(box.run(json_status).stdout)["devices"]}
        if rows[SERIAL]["state"] == "provisioned" or time.time() > deadline:
            break
        time.sleep(0.5)
    assert rows[SERIAL]["state"] == "provisioned" and rows[SERIAL]["hostname"] == "access-sw-01"
    replan = paste(clixon_block("docs/controller.md", "configure / apply services pnp-service:pnp-device FOC2001X0AB"))
    assert "OK" in replan and "Unknown command" not in replan
    (reset,) = shell_block("docs/controller.md", f"pnp-service reset --clixon-socket {SOCKET} {SERIAL}")
    assert "starts over" in box.run(reset).stdout
    assert AgentSimulator("http://127.0.0.1:80", time_scale=0).run(SimulatedDevice(SERIAL)).outcome == "configured"
    # As the docs say: delete by hand once the listener has committed what the device's last answers recorded.
    wait_until(lambda: "pnp_journal_pending 0.0" in urllib.request.urlopen("http://127.0.0.1:80/metrics").read().decode(),
               30, "the listener's journal committed")
    cli_reset = paste(clixon_block("docs/controller.md", "configure / delete pnp device FOC2001X0AB status"))
    assert "OK" in cli_reset and "Unknown command" not in cli_reset
    assert "<state>" not in paste([f"show configuration pnp device {SERIAL} status"])


def test_the_hand_off_walkthrough_as_written(box):
    if os.environ.get("PNP_CLIXON_DEVICE_USER") != "netconf":
        pytest.skip("the walkthrough hands the device to user netconf: set PNP_CLIXON_DEVICE_USER=netconf for a lab "
                    "device on 127.0.0.1:830 that lets netconf in with the controller's key")
    (serve,) = shell_block("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --known-hosts "
                                                 "/root/.ssh/known_hosts")
    box.serve(serve)
    paste(["configure", "delete devices device access-sw-01", "commit local", "exit"])
    declared = paste(clixon_block("docs/controller.md",
                                  "configure / set services pnp-device FOC2001X0AB controller user netconf"))
    assert "Failed" not in declared and "Unknown command" not in declared
    (agent,) = shell_block("docs/controller.md", "pnp-service agent --url http://127.0.0.1:8080 --device "
                                                 "FOC2001X0AB:C9300-24P --ssh-host-key "
                                                 "/etc/ssh/ssh_host_ed25519_key.pub --time-scale 0")
    played = box.run(agent).stdout
    assert played.splitlines()[-1] == "1 configured", played
    watch = clixon_block("docs/controller.md", "show configuration pnp device FOC2001X0AB status handoff")
    deadline = time.time() + 60
    while time.time() < deadline:
        shown = paste(watch)
        if "managed" in shown and "access-sw-01" in shown and " OPEN " in shown:
            break
        time.sleep(1)
    assert "managed" in shown and " OPEN " in shown, shown
    paste(["configure", "delete devices device access-sw-01", "commit local", "exit"])


def test_a_stack_and_an_extra_step_declared_from_the_cli(box):
    stack = docs.clixon_lines(find_key("docs/protocol.md", "set services pnp-device FOC2201X0T1 stack members 3"))
    step = docs.clixon_lines(find_key("docs/steps.md", "set services pnp-device FOC2001X0AB step banner type cli-config"))
    base = [line for serial in ("FOC2201X0T1", SERIAL) for line in (
        f"set services pnp-device {serial} hostname sw-{serial.lower()}",
        f"set services pnp-device {serial} config line 10 text \"hostname {{{{ hostname }}}}\"")]
    try:
        out = paste(["configure", *base, *stack, *step, "commit", "exit"])
        assert "Failed" not in out and "Unknown command" not in out, out
        shown = paste(["show configuration pnp device FOC2201X0T1", f"show configuration pnp device {SERIAL}"])
        assert "stack-check" in shown and "banner" in shown
    finally:
        forget("FOC2201X0T1")


def shown_until(lines: list[str], *wanted: str, timeout: float = 20) -> str:
    """Paste ``lines`` until their output has every ``wanted`` text (the listener writes the summary every 5 s)."""
    deadline = time.time() + timeout
    while True:
        shown = paste(lines)
        if all(text in shown for text in wanted) or time.time() > deadline:
            assert all(text in shown for text in wanted), f"{wanted} not in:\n{shown}"
            return shown
        time.sleep(0.5)


def test_show_pnp_and_pnp_reset_in_the_controllers_cli_as_written(box):
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    (serve,) = shell_block("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --port 80")
    box.serve(serve)
    paste(clixon_block("docs/controller.md", "configure / set services pnp-device FOC2001X0AB pid C9300-24P"))
    paste(["configure"] + clixon_block("docs/controller.md",
                                       "set services pnp-device FOC2001X0AB variable secret value change-me"))
    show = clixon_block("docs/controller.md", "show pnp")
    assert show[0] == "show pnp" and "Unknown command" not in paste(show)
    shown_until(["show pnp"], "device FOC2001X0AB {", "state planned;", "hostname access-sw-01;")
    play = AgentSimulator("http://127.0.0.1:80", time_scale=0)
    assert play.run(SimulatedDevice(SERIAL, pid="C9300-24P")).outcome == "configured"
    # Counted among the provisioned (the lab controller may hold other tests' devices), and its own row says so.
    assert re.search(r"provisioned [1-9][0-9]*;", shown_until(["show pnp"], "state provisioned;"))
    shown_until([f"show pnp device {SERIAL}"], "state provisioned;")

    reset = paste(clixon_block("docs/controller.md", "pnp reset FOC2001X0AB"))
    assert "Unknown command" not in reset and "error" not in reset.lower(), reset
    time.sleep(1.5)  # the listeners read /pnp/reset every second; a provisioned switch polls every hour
    again = play.run(SimulatedDevice(SERIAL, pid="C9300-24P"))  # its next poll: from the first step
    assert again.outcome == "configured" and again.trace[0].startswith("device-info"), again.trace

    paste(["configure", f"set services pnp-device {SERIAL} hostname access-sw-99", "commit", "exit"])
    shown_until(["show pnp"], "state pending;", "pending 1;", "hostname access-sw-99;")

    # A hand-off that must not go through (the switch shows an SSH host key other than the one known_hosts pins
    # for its address) reads failed in show pnp, with the reason.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other_key = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                        serialization.PublicFormat.OpenSSH).decode()
    declared = paste(clixon_block("docs/controller.md",
                                  "configure / set services pnp-device FOC2001X0AB controller user netconf"))
    assert "Failed" not in declared, declared
    assert play.run(SimulatedDevice(SERIAL, pid="C9300-24P", ssh_host_key=other_key)).outcome == "configured"
    shown = shown_until(["show pnp"], "handoff-failed 1;", 'handoff "failed: ')
    assert "state provisioned;" in shown and "known_hosts" in shown, shown
    paste(["configure", "delete devices device access-sw-01", "commit local", "exit"])


STRANGER = "FOC2001X0CD"


def one(line: str) -> str:
    """One command's output, without prompts (clixon_cli -1)."""
    return subprocess.run(["clixon_cli", "-f", CONFIG, "-1", *line.split()], capture_output=True, text=True,
                          timeout=60).stdout


def test_pnp_claim_of_a_stranger_as_written(box):
    """A switch calls in undeclared; `pnp claim` in the CLI declares it (with the PID it reported), planned; it is
    provisioned at its next poll.  Claims the listener cannot make stay with the reason; `pnp clear` empties."""
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    forget(STRANGER)
    paste(["pnp clear claims"])
    (serve,) = shell_block("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --port 80")
    box.serve(serve)
    play = AgentSimulator("http://127.0.0.1:80", time_scale=0)
    template = "/usr/local/share/pnp-service/templates/access.j2"
    try:
        first = play.run(SimulatedDevice(STRANGER, pid="C9200L-24P"))
        assert first.outcome == "backed-off", first
        shown_until(["show pnp unclaimed"], f"unclaimed {STRANGER} {{", "pid C9200L-24P;")
        (write_template,) = shell_block("docs/controller.md", "printf 'hostname {{ hostname }}\\nend\\n' | sudo tee "
                                                              "/usr/local/share/pnp-service/templates/access.j2")
        box.run(write_template)
        claim = paste(clixon_block("docs/controller.md", f"pnp claim {STRANGER} hostname access-sw-02 "
                                                         "template-file access.j2"))
        assert "error" not in claim.lower() and "Unknown command" not in claim, claim
        declared = shown_until([f"show configuration services pnp-device {STRANGER}"], "access-sw-02",
                               "C9200L-24P", "access.j2")
        assert "Unknown command" not in declared
        shown_until([f"show configuration pnp device {STRANGER}"], "<revision>")  # planned in the same transaction
        device = SimulatedDevice(STRANGER, pid="C9200L-24P")
        assert play.run(device).outcome == "configured" and "hostname access-sw-02" in device.config
        assert one("show pnp claims").strip() == ""  # made: gone

        # Claims the listener refuses stay, with the reason: declared already; a template file not in the folder.
        paste([f"pnp claim {STRANGER} hostname again template-file access.j2", f"pnp claim {SERIAL} hostname x "
               "template-file access.j2"])
        refused = shown_until(clixon_block("docs/controller.md", "show pnp claims"), "is declared already",
                              "has not called in undeclared")
        assert refused.count("error ") == 2, refused
        paste(["pnp clear claims"])
        deadline = time.time() + 10
        while one("show pnp claims").strip() and time.time() < deadline:
            time.sleep(0.5)
        assert one("show pnp claims").strip() == ""

        os.remove(template)
        forget(STRANGER)
        assert play.run(SimulatedDevice(STRANGER, pid="C9200L-24P")).outcome == "backed-off"
        paste([f"pnp claim {STRANGER} hostname access-sw-02 template-file access.j2"])
        shown_until(["show pnp claims"], "the controller refused the declaration", "access.j2", timeout=30)
        assert "access-sw-02" not in paste([f"show configuration services pnp-device {STRANGER}"])

        paste(["pnp clear unclaimed"])
        deadline = time.time() + 10
        while STRANGER in one("show pnp unclaimed") and time.time() < deadline:
            time.sleep(0.5)
        assert STRANGER not in one("show pnp unclaimed")
    finally:
        paste(["pnp clear claims"])
        if os.path.exists(template):
            os.remove(template)
        forget(STRANGER)


def test_a_location_declared_from_the_cli_as_written(box):
    """docs/location.md's clixon_cli lines, then a switch at that port with a serial nobody typed."""
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    located = "FOC2419L0CC"
    lines = clixon_block("docs/location.md", "set services pnp-location dist-sw-1 Gi1/0/48 hostname access-sw-7")
    (serve,) = shell_block("docs/controller.md", f"pnp-service serve --clixon-socket {SOCKET} --port 80")
    forget(located)
    try:
        out = paste(["configure", *lines, "commit", "exit"])
        assert "Failed" not in out and "Unknown command" not in out, out
        box.serve(serve)
        play = AgentSimulator("http://127.0.0.1:80", time_scale=0, sleep=lambda seconds: time.sleep(min(seconds, 0.5)))
        device = SimulatedDevice(located, neighbors=(("dist-sw-1.campus.example.net", "GigabitEthernet1/0/48"),))
        assert play.run(device).outcome == "configured" and "hostname access-sw-7" in device.config
        shown_until([f"show configuration services pnp-device {located}"], "access-sw-7", "<located>")
    finally:
        forget(located)
        paste(["configure", "delete services pnp-location dist-sw-1 Gi1/0/48", "commit", "exit"])
