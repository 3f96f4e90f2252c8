"""Step types: a site's plugin, installed as a distribution with an entry point, scheduled by a declaration, runs."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from conftest import SECRET, FakeClock, RunningListener, datastore_xml, open_store
from pnp_service.listener import ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.steps import BUILTIN_STEP_TYPES, StepRegistry, StepRegistryError

PLUGIN = '''
from pnp_service import protocol
from pnp_service.steps import SimpleStep


class SaveConfig(SimpleStep):
    """Save running-config to startup-config."""

    name = "save-config"
    pnp_service = "cli-config"

    def request(self, step, status, ctx):
        return protocol.cli_config_persist(ctx.envelope)
'''


def install_distribution(tmp_path, monkeypatch, name: str, entry_points: str) -> None:
    """What ``pip install`` of a site package leaves behind: a module and a dist-info with entry points."""
    site = tmp_path / f"site-{name}"
    site.mkdir()
    (site / f"{name}.py").write_text(PLUGIN)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, name, raising=False)


DEVICE = ("<serial>SN1</serial><pid>C9300-24P</pid><hostname>sw1</hostname>"
          "<config><template>hostname {{ hostname }}</template><reload>false</reload></config>"
          "<step><id>banner</id><type>cli-config</type><position>after-device-info</position>"
          "<param><name>lines</name><value>banner motd ^{{ hostname }}^</value></param></step>"
          "<step><id>save</id><type>save-config</type><position>after-config</position></step>")


def test_a_site_plugin_runs_end_to_end(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "mysite_steps", """
        [pnp_service.steps]
        save-config = mysite_steps:SaveConfig
    """)
    registry = StepRegistry()
    assert "save-config" in registry.names() and set(BUILTIN_STEP_TYPES) <= set(registry.names())
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE))
    store = open_store(str(path), known_step_types=registry.names())
    work = store.load("SN1").work
    assert [s.id for s in work.steps] == ["device-info", "banner", "config-upgrade", "save"]
    assert work.steps[1].params["lines"] == "banner motd ^sw1^"  # parameters are rendered
    clock = FakeClock()
    running = RunningListener(store, clock, ListenerSettings(secret=SECRET))
    running.listener.provisioner.registry = registry
    running.listener.registry = registry
    try:
        result = AgentSimulator(running.url, sleep=clock.advance, max_polls=20).run(SimulatedDevice("SN1"))
    finally:
        running.stop()
    assert result.trace == ["device-info", "cli-config", "config-upgrade", "cli-config", "backoff"]
    assert store.load("SN1").status.state == "provisioned"


def test_a_declared_step_no_plugin_provides_is_a_planning_error(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE))
    record = open_store(str(path), known_step_types=StepRegistry(load_entry_points=False).names()).load("SN1")
    assert record.work is None and "'save-config', which no installed step type provides" in record.planning_error


def test_a_step_after_a_reloading_configuration_is_refused(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE.replace("<reload>false</reload>", "")))
    record = open_store(str(path)).load("SN1")
    assert "never runs when the configuration reloads the device" in record.planning_error


def test_two_plugins_claiming_one_name_is_an_error_naming_both(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "site_a", "[pnp_service.steps]\nsave-config = site_a:SaveConfig\n")
    install_distribution(tmp_path, monkeypatch, "site_b", "[pnp_service.steps]\nsave-config = site_b:SaveConfig\n")
    with pytest.raises(StepRegistryError) as raised:
        StepRegistry()
    assert "site_a:SaveConfig" in str(raised.value) and "site_b:SaveConfig" in str(raised.value)


def test_a_plugin_that_takes_a_builtin_name_is_an_error(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "site_c", "[pnp_service.steps]\ncli-config = site_c:SaveConfig\n")
    with pytest.raises(StepRegistryError, match="'cli-config' is registered twice: by built-in"):
        StepRegistry()


def test_a_plugin_that_does_not_load_is_a_clear_error(tmp_path, monkeypatch):
    install_distribution(tmp_path, monkeypatch, "site_d", "[pnp_service.steps]\nbroken = site_d:NoSuchClass\n")
    with pytest.raises(StepRegistryError, match="broken = site_d:NoSuchClass failed to load"):
        StepRegistry()


@pytest.mark.parametrize("taken", ["trustpool", "config-upgrade", "cli-exec-10"])
def test_a_declared_step_may_not_take_a_built_in_steps_id(tmp_path, taken):
    # The listener's HTTPS bootstrap is the step "trustpool": one of the operator's of that id would never run.
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE.replace("<id>banner</id>", f"<id>{taken}</id>")
                                  + "<command><seq>10</seq><cli>show version</cli></command>"))
    record = open_store(str(path)).load("SN1")
    assert record.work is None and f"step id {taken!r} is taken by a built-in step" in record.planning_error


def test_a_step_type_without_a_request_is_refused_when_registered_not_mid_provisioning():
    class NoRequest:
        def service(self, step, status):
            return "cli-exec"

        def is_done(self, step, status):
            return False

        def on_response(self, step, status, response):
            return None

    with pytest.raises(StepRegistryError, match="'half' from .* has no request: subclass pnp_service.steps.SimpleStep"):
        StepRegistry(load_entry_points=False).register("half", NoRequest())


def test_the_built_ins_are_registered_once_in_code_and_every_plugin_by_its_entry_point():
    from conftest import REPO
    from pnp_service.steps import ENTRY_POINT_GROUP, default_registry

    assert ENTRY_POINT_GROUP not in open(os.path.join(REPO, "setup.py")).read()  # no second registration
    assert default_registry() is default_registry()  # one registry per process
    assert set(BUILTIN_STEP_TYPES) <= set(default_registry().names())


def test_the_planner_builds_each_built_in_step_through_its_step_type():
    from pnp_service.model import Declaration, HandOff, Status
    from pnp_service.planner import plan

    declaration = Declaration("SN1", "C9300-24P", "sw1", "hostname {{ hostname }}\n", image_version="17.9.4",
                              image_url="http://images.invalid/cat9k.bin", image_md5="0" * 32, image_size=7,
                              commands=((10, "show version"),), stack=True, stack_size=2,
                              handoff=HandOff(check_host_key=True), apply_to="running", reload=False)
    steps = plan(declaration).steps
    assert {step.type for step in steps} <= set(BUILTIN_STEP_TYPES)
    image = next(step for step in steps if step.type == "image-install")
    assert BUILTIN_STEP_TYPES["image-install"].describe(image, Status()) \
        == "install cat9k.bin (17.9.4) from http://images.invalid/cat9k.bin to flash:"
    assert next(step for step in steps if step.type == "device-info").params == \
        {"expect-pid": "C9300-24P", "expect-members": "2"}
