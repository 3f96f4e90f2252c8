"""Two listeners on one real Clixon controller behind a balancer that sends every request, downloads included, to
the other one (tests/balancer.py): with ``--write-through`` every device provisions, each step sent once, and when one
listener dies halfway the devices finish on the other.  (docs/operations.md, "Several listeners".)  Needs what
tests/integration/test_clixon_controller.py needs (``PNP_CLIXON_CONFIG``); skipped, with the reason, without it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from balancer import RoundRobin  # noqa: E402
from integration.test_clixon_controller import CONFIG, commit, pytestmark, show_pnp, socket_path, text  # noqa: E402,F401
from integration.test_clixon_controller import yang_loaded  # noqa: E402,F401 - the module's readiness check
from test_rollout_load import start_serve, stop  # noqa: E402
from test_scale_out import IMAGE, assert_each_step_sent_once, assert_installed_and_configured_once, killer, provision  # noqa: E402


def configure(lines: list[str]) -> str:
    """Lines of configure-mode commands in one clixon_cli session (one process, not one per line)."""
    result = subprocess.run(["clixon_cli", "-f", CONFIG, "-m", "configure"], input="\n".join(lines) + "\n",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def declared(tmp_path):
    """20 devices declared from clixon_cli and committed; every fourth also installs an image from the image folder."""
    images = tmp_path / "images"
    images.mkdir()
    data = os.urandom(512 * 1024)
    (images / IMAGE).write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    tag = uuid.uuid4().hex[:6].upper()
    serials = [f"SO{tag}{n:02d}" for n in range(20)]
    lines = []
    for n, serial in enumerate(serials):
        device = f"set services pnp-device {serial}"
        lines += [f"{device} pid C9300-24P", f"{device} hostname so-{n}",
                  f'{device} config line 10 text "hostname {{{{ hostname }}}}"']
        if n % 4 == 0:
            lines += [f"{device} image version 17.12.04", f"{device} image url {IMAGE}", f"{device} image md5 {md5}",
                      f"{device} image reload-wait 10"]
    configure(lines)
    verdict = commit()
    assert "error" not in verdict.lower(), verdict
    yield serials
    configure(["discard"] + [f"delete {path} {serial}" for serial in serials
                             for path in ("services pnp-device", "pnp device")])
    commit()


def two_listeners(tmp_path):
    secret = tmp_path / "shared.secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    secret.chmod(0o600)
    started = []
    for name in ("first", "second"):
        store = ("--clixon-socket", socket_path(), "--state-dir", str(tmp_path / name))
        started.append(start_serve(tmp_path, "--write-through", "--secret-file", str(secret), "--image-dir",
                                   str(tmp_path / "images"), store=store, log_name=f"{name}.log"))
    return started


def assert_provisioned_in_running(serials: list[str]) -> None:
    states = {serial: text(show_pnp(serial), "status/state") for serial in serials}
    assert set(states.values()) == {"provisioned"}, states


def test_two_listeners_behind_a_per_request_balancer_provision_every_device_once(declared, tmp_path):
    (first, first_port, _), (second, second_port, _) = two_listeners(tmp_path)
    balancer = RoundRobin([first_port, second_port])
    try:
        results = provision(balancer.url, declared)
        assert_each_step_sent_once(results)
        assert min(balancer.sent.values()) >= 0.4 * sum(balancer.sent.values())
        downloads = sum(count for path, count in balancer.paths.items() if "WORK" not in path and "HELLO" not in path)
        assert downloads >= 5, balancer.paths
    finally:
        balancer.close()
        stop(first)
        stop(second)
    assert_provisioned_in_running(declared)


def test_when_one_listener_dies_halfway_the_devices_finish_on_the_other(declared, tmp_path):
    (first, first_port, _), (second, second_port, _) = two_listeners(tmp_path)
    killed, kill_halfway = killer(first)
    balancer = RoundRobin([first_port, second_port], on_request=kill_halfway)
    try:
        results = provision(balancer.url, declared)
        assert killed.is_set() and first.wait(10) is not None
        assert_installed_and_configured_once(results)
        assert first_port in balancer.down
    finally:
        balancer.close()
        stop(first)
        stop(second)
    assert_provisioned_in_running(declared)


def test_several_workers_of_one_listener_read_and_write_through_by_themselves(declared, tmp_path):
    store = ("--clixon-socket", socket_path(), "--state-dir", str(tmp_path / "state"))
    server, port, log = start_serve(tmp_path, "--workers", "3", "--image-dir", str(tmp_path / "images"), store=store)
    balancer = RoundRobin([port])  # a new connection per request: the kernel hands each to any worker
    try:
        assert_each_step_sent_once(provision(balancer.url, declared))
    finally:
        balancer.close()
        stop(server)
    assert "write-through" in open(log).read()
    assert_provisioned_in_running(declared)
