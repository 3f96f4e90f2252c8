"""The service module's logic, without clixon-pyapi: on the stand-in for pyapi's Element tree."""

from __future__ import annotations

import logging

import pytest
from lxml import etree

from pnp_service import model
from pnp_service.element_standin import Element
from pnp_service.model import Declaration
from pnp_service.planner import PlanningError, plan
from pnp_service.service_module import SERVICE, SERVICE_NAMESPACES, SERVICE_XPATH, setup


LOG = logging.getLogger("test")
TEMPLATE = 'hostname {{ hostname }}\nbanner motd "<{{ site }} & co>"\n'


def declared(serial="SN1", **fields):
    base = dict(serial=serial, pid="C9300-24P", hostname=f"h-{serial}", template=TEMPLATE, variables=(("site", "HQ"),))
    base.update(fields)
    return Declaration(**base)


def reader(*declarations):
    table = {d.serial: d for d in declarations}
    return lambda instance: table if instance is None else {k: v for k, v in table.items() if k == instance}


def written(root) -> dict[str, etree._Element]:
    """Parse what pyapi would send: the dumped tree, with the namespaces it declares."""
    xml = f'<data xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">{root.dumps()}</data>'
    data = etree.fromstring(xml)
    return {d.findtext(model.q("serial")): d for d in data.iter(model.q("device"))}


def test_host_conventions():
    assert SERVICE == "pnp-device"
    assert SERVICE_XPATH.startswith("/pnp:") and SERVICE_NAMESPACES == {"pnp": model.PNP_NS}


def test_changed_instance_gets_its_work_with_a_creator_tag():
    root = Element()
    setup(root, LOG, instance="SN1", read_declarations=reader(declared("SN1"), declared("SN2")))
    devices = written(root)
    assert list(devices) == ["SN1"]
    work = devices["SN1"].find(model.q("work"))
    assert work.get(f"{{{model.CLIXON_LIB_NS}}}creator") == "pnp-device[serial='SN1']"
    parsed = model.work_from_xml(work)
    assert parsed == plan(declared("SN1"))
    assert 'banner motd "<HQ & co>"' in parsed.steps[-1].params["config"]  # escaped on the way, intact after


def test_instance_none_replans_all():
    root = Element()
    setup(root, LOG, instance=None, read_declarations=reader(declared("SN1"), declared("SN2")))
    assert sorted(written(root)) == ["SN1", "SN2"]


def test_rerun_is_idempotent_and_keeps_other_nodes():
    root = Element()
    pnp = root.create("pnp", {"xmlns": model.PNP_NS})
    device = pnp.create("device")
    device.create("serial", data="SN1")
    device.create("status").create("state", data="provisioned")
    device.create("work").create("revision", data="0" * 16)
    read = reader(declared("SN1"))
    setup(root, LOG, instance="SN1", read_declarations=read)
    setup(root, LOG, instance="SN1", read_declarations=read)
    assert len(root.get_elements("pnp")) == 1 and len(pnp.get_elements("device")) == 1
    entry = written(root)["SN1"]
    assert len(entry.findall(model.q("work"))) == 1
    assert entry.findtext(f"{model.q('status')}/{model.q('state')}") == "provisioned"
    assert entry.findtext(f"{model.q('work')}/{model.q('revision')}") == plan(declared("SN1")).revision


def test_deleted_instance_writes_nothing():
    root = Element()
    setup(root, LOG, instance="GONE", read_declarations=reader(declared("SN1")))
    assert root.dumps() == ""


def test_template_error_raises_with_the_device_and_variable():
    root = Element()
    with pytest.raises(PlanningError) as raised:
        setup(root, LOG, instance="SN1", read_declarations=reader(declared("SN1", template="{{ undefined_thing }}")))
    assert "SN1" in str(raised.value) and "undefined_thing" in str(raised.value)
    assert root.dumps() == ""


def test_drop_in_file_only_imports_the_package():
    import os

    from conftest import REPO

    path = os.path.join(REPO, "pnp_service", "clixon_module", "pnp_service_module.py")
    namespace = {}
    exec(compile(open(path).read(), path, "exec"), namespace)
    assert namespace["SERVICE"] == "pnp-device" and namespace["setup"] is setup


@pytest.mark.parametrize("argv, expected", [
    (["clixon_server.py", "-s", "/opt/ctl/controller.sock"], "/opt/ctl/controller.sock"),
    (["clixon_server.py", "--sockpath=/opt/ctl/c.sock", "-m", "/mods"], "/opt/ctl/c.sock"),
    (["clixon_server.py", "-f", "CONFIG"], "/opt/prefix/var/run/controller.sock"),
    (["clixon_server.py"], "/usr/local/var/run/controller/controller.sock"),
])
def test_the_module_talks_to_the_socket_its_server_was_started_with_whatever_the_environment(
        argv, expected, tmp_path, monkeypatch):
    from pnp_service.service_module import server_socket

    config = tmp_path / "controller.xml"
    config.write_text('<clixon-config xmlns="http://clicon.org/config">'
                      "<CLICON_SOCK>/opt/prefix/var/run/controller.sock</CLICON_SOCK></clixon-config>")
    monkeypatch.setenv("NO_CLIXON_ARGS", "1")  # inherited from whoever started the controller: pyapi says nothing
    assert server_socket([str(config) if a == "CONFIG" else a for a in argv]) == expected


def test_opening_a_controller_session_leaves_nothing_in_the_environment(monkeypatch):
    import os
    import sys
    import types

    from pnp_service.stores.clixon import netconf

    seen = {}
    fake = types.ModuleType("clixon.sock")
    fake.create_socket = fake.read = fake.send = lambda *a: None
    monkeypatch.setitem(sys.modules, "clixon", types.ModuleType("clixon"))
    monkeypatch.delitem(sys.modules, "clixon.sock", raising=False)
    monkeypatch.delenv("NO_CLIXON_ARGS", raising=False)

    import builtins

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "clixon.sock":
            seen["during"] = os.environ.get("NO_CLIXON_ARGS")
            sys.modules["clixon.sock"] = fake
            return fake
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    netconf._pyapi_socket()
    assert seen["during"] == "1" and "NO_CLIXON_ARGS" not in os.environ
