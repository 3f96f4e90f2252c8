"""The embedded datastore: planning, durable atomic writes, the operator's declarations untouched."""

from __future__ import annotations

import os

import pytest
from lxml import etree

from conftest import datastore_xml
from pnp_service.model import Status, Unclaimed
from pnp_service.provisioner import Decision
from pnp_service.stores.base import StoreError, StoreUnavailable
from pnp_service.stores.embedded import EmbeddedStore

DEVICE = "<serial>SN1</serial><pid>C9300-24P</pid><hostname>sw1</hostname><config><template>hostname {{ hostname }}</template></config>"


def services_c14n(path: str) -> bytes:
    tree = etree.parse(path)
    services = tree.getroot().find("{http://clicon.org/controller}services")
    return etree.tostring(services, method="c14n")


def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def change(status=None, unclaimed=None):
    return lambda record: Decision(b"", "test", status=status, unclaimed=unclaimed)


def test_missing_file_is_created(tmp_path):
    path = tmp_path / "new.xml"
    store = EmbeddedStore(str(path))
    assert path.exists() and store.snapshot().devices == ()


def test_missing_file_without_create_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        EmbeddedStore(str(tmp_path / "nope.xml"), create=False)


def test_declarations_are_planned_into_the_file(tmp_path):
    path = str(tmp_path / "ds.xml")
    write(path, datastore_xml(DEVICE))
    record = EmbeddedStore(path).load("SN1")
    assert [s.type for s in record.work.steps] == ["device-info", "config-upgrade"]
    tree = etree.parse(path)
    revision = tree.findtext("{urn:pnp-service:pnp}pnp/{urn:pnp-service:pnp}device/{urn:pnp-service:pnp}work/{urn:pnp-service:pnp}revision")
    assert revision == record.work.revision


def test_status_survives_a_restart_and_declarations_are_untouched(example_path):
    before = services_c14n(example_path)
    store = EmbeddedStore(example_path)
    store.update("FOC2001X0AB", change(status=Status(state="onboarding", step="device-info", attempts=2)))
    store.update("NEW1", change(unclaimed=Unclaimed("NEW1", pid="C9200L")))
    reopened = EmbeddedStore(example_path)
    assert reopened.load("FOC2001X0AB").status.attempts == 2
    assert reopened.load("NEW1").unclaimed.pid == "C9200L"
    assert services_c14n(example_path) == before


def test_write_is_atomic_no_temporary_files_left(example_path):
    store = EmbeddedStore(example_path)
    store.update("FOC2001X0AB", change(status=Status(state="onboarding")))
    leftovers = [name for name in os.listdir(os.path.dirname(example_path)) if name.endswith(".tmp")]
    assert leftovers == []


def test_failed_write_leaves_the_old_file(example_path, monkeypatch):
    store = EmbeddedStore(example_path)
    before = open(example_path, "rb").read()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.update("FOC2001X0AB", change(status=Status(state="onboarding")))
    monkeypatch.undo()
    assert open(example_path, "rb").read() == before
    assert not [n for n in os.listdir(os.path.dirname(example_path)) if n.endswith(".tmp")]


def test_declaration_change_replans_and_removal_removes_work(tmp_path):
    path = str(tmp_path / "ds.xml")
    write(path, datastore_xml(DEVICE))
    store = EmbeddedStore(path)
    first = store.load("SN1").work.revision
    write(path, datastore_xml(DEVICE.replace("sw1", "sw9")))
    assert store.load("SN1").work.revision != first
    write(path, datastore_xml())
    assert store.load("SN1").work is None


def test_template_error_is_recorded_as_status_and_no_work(tmp_path):
    path = str(tmp_path / "ds.xml")
    write(path, datastore_xml(DEVICE.replace("{{ hostname }}", "{{ missing_var }}")))
    record = EmbeddedStore(path).load("SN1")
    assert record.work is None
    assert record.status.state == "error" and "missing_var" in record.status.error_message


def test_unclaimed_entry_goes_when_the_device_gets_status(example_path):
    store = EmbeddedStore(example_path)
    store.update("FOC2001X0AB", change(unclaimed=Unclaimed("FOC2001X0AB")))
    store.update("FOC2001X0AB", change(status=Status(state="onboarding")))
    assert store.load("FOC2001X0AB").unclaimed is None


def test_malformed_file_is_never_overwritten(example_path):
    store = EmbeddedStore(example_path)
    write(example_path, "<config><services>")  # the operator saved a broken file
    broken = open(example_path, "rb").read()
    assert store.load("FOC2001X0AB").work is not None  # the last good copy still serves
    with pytest.raises(StoreUnavailable, match="not usable"):
        store.update("FOC2001X0AB", change(status=Status(state="onboarding")))
    assert open(example_path, "rb").read() == broken


def test_malformed_file_at_start_is_a_clear_error(tmp_path):
    path = str(tmp_path / "ds.xml")
    write(path, "<config>")
    with pytest.raises(StoreError, match="fix it"):
        EmbeddedStore(path)


def test_entities_in_the_file_are_not_expanded(tmp_path):
    path = str(tmp_path / "ds.xml")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xml = datastore_xml(DEVICE.replace("hostname {{ hostname }}", "&xxe;"))
    xml = xml.replace("<config>", f'<!DOCTYPE config [<!ENTITY xxe SYSTEM "file://{secret}">]>\n<config>', 1)
    write(path, xml)
    store = EmbeddedStore(path)
    config = store.load("SN1").work.steps[-1].params["config"] if store.load("SN1").work else ""
    assert "TOPSECRET" not in config


def test_reset_clears_status(example_path):
    store = EmbeddedStore(example_path)
    store.update("FOC2001X0AB", change(status=Status(state="error", error_code="x")))
    assert store.reset("FOC2001X0AB") is True
    assert store.load("FOC2001X0AB").status is None
    assert store.reset("FOC2001X0AB") is False


def test_two_store_instances_share_one_file(example_path):
    one, two = EmbeddedStore(example_path), EmbeddedStore(example_path)
    one.update("FOC2001X0AB", change(status=Status(state="onboarding", attempts=1)))
    assert two.load("FOC2001X0AB").status.attempts == 1
    two.update("FOC2001X0CD", change(status=Status(state="onboarding", attempts=2)))
    assert one.load("FOC2001X0AB").status.attempts == 1 and one.load("FOC2001X0CD").status.attempts == 2
