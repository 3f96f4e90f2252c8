"""The declaration's XML form: what declaration_to_xml writes, declaration_from_xml reads back, and libyang accepts."""

from __future__ import annotations

import pytest
from lxml import etree

from conftest import datastore_xml
from pnp_service import validation
from pnp_service.model import Declaration, ExtraStep, HandOff, declaration_from_xml, declaration_to_xml, q

FULL = Declaration(
    serial="FOC2001X0AB",
    pid="C9300-24P",
    hostname="access-sw-01",
    template="hostname {{ hostname }}\n ip address {{ ip }} 255.255.255.0\nend\n",
    apply_to="running",
    reload=False,
    variables=(("ip", "192.0.2.21"), ("ntp", '["192.0.2.1", "192.0.2.2"]'), ("vlan", "100"), ("empty", "")),
    variable_types=(("ntp", "list"), ("vlan", "number")),
    commands=((10, "show version"), (20, "show inventory")),
    image_version="17.09.04a",
    image_url="http://images.example.invalid/cat9k.bin",
    image_md5="0123456789abcdef0123456789abcdef",
    image_reload_wait=120,
    username="netops",
    password="s3cret <&>",
    steps=(ExtraStep("save", "cli-config", "after-config", (("lines", "write memory"),)),),
)

VARIANTS = [
    FULL,
    Declaration(serial="SN1"),
    Declaration(serial="SN2", template_lines=((10, "hostname {{ hostname }}"), (20, "")), hostname="h"),
    Declaration(serial="SN3", template_file="access.j2", image_version="1", image_url="cat9k.bin",
                image_md5="0123456789abcdef0123456789abcdef"),
    Declaration(serial="SN4", config_url="http://configs.example.invalid/SN4.cfg"),
    Declaration(serial="SN5", template=""),
    Declaration(serial="SN6", hostname="core-1", template="x", apply_to="running", reload=False,
                handoff=HandOff(name="core-1", address="192.0.2.9", port=2830, user="admin", profile="iosxe",
                                check_host_key=False),
                authentication="sudi", sudi_serials=("SN6", "SN7"), stack=True, stack_members=("SN7", "SN8"),
                stack_size=3, image_version="17.09.04a", image_url="cat9k.bin", image_md5="0123456789abcdef0123456789abcdef",
                image_size=1_200_000_000),
    Declaration(serial="SN9", handoff=HandOff(), stack=True),
]


@pytest.mark.parametrize("declaration", VARIANTS, ids=lambda d: d.serial)
def test_a_declaration_survives_its_xml_form(declaration):
    element = declaration_to_xml(declaration)
    assert declaration_from_xml(etree.fromstring(etree.tostring(element))) == declaration


@pytest.mark.parametrize("declaration", VARIANTS, ids=lambda d: d.serial)
def test_what_is_written_is_valid_for_the_yang(declaration):
    body = etree.tostring(declaration_to_xml(declaration), encoding="unicode")
    # datastore_xml wraps bodies in <pnp-device>: unwrap ours.
    inner = body[body.index(">") + 1 : body.rindex("</")]
    assert validation.load(datastore_xml(inner).encode(), "t.xml") == {declaration.serial: declaration}


def test_a_declarations_file_keeps_equal_texts_once_and_records_carry_no_dict():
    """What 10,000 declarations cost: a template or a platform shared by all is one string, and a record holds its
    fields in slots, not in a dictionary of its own."""
    device = "<serial>{}</serial><pid>C9300-24P</pid><hostname>{}</hostname><config><template>hostname x</template></config>"
    read = validation.load(datastore_xml(device.format("SN1", "h1"), device.format("SN2", "h2")).encode(), "t.xml")
    assert read["SN1"].template is read["SN2"].template and read["SN1"].pid is read["SN2"].pid
    assert not hasattr(read["SN1"], "__dict__")


def test_defaults_are_left_out_and_leaves_follow_the_yang_order():
    minimal = declaration_to_xml(Declaration(serial="SN1", hostname="h", template="x"))
    assert [etree.QName(child).localname for child in minimal] == ["serial", "hostname", "config"]
    assert [etree.QName(child).localname for child in minimal.find(q("config"))] == ["template"]
    full = declaration_to_xml(FULL)
    order = [etree.QName(child).localname for child in full]
    assert order == ["serial", "pid", "hostname", "config", "variable", "variable", "variable", "variable",
                     "command", "command", "step", "image", "credentials"]
    assert full.find(q("variable")).find(q("type")) is None  # a string variable says nothing of its type


def test_a_status_is_small_records_but_is_stored_flat_as_before():
    """Journals and state databases written by earlier versions read back: the stored names did not change."""
    import datetime as dt

    from pnp_service.model import (DeviceFacts, Handoff, HandoffProgress, LastError, State, Status, SudiState,
                                   record_from_dict, record_to_dict)

    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
    status = Status(State.ERROR, "r1", "image-install", "verify", attempts=2,
                    facts=DeviceFacts(udi="PID:C9300-24P,VID:V01,SN:SN1", version="17.3.1", flash_free=0),
                    sudi=SudiState(proven_address="127.0.0.2", proven_at=now, throttled=(("127.0.0.3", "t", 1),)),
                    handoff=HandoffProgress(Handoff.FAILED, "r1", attempts=3, next=now),
                    error=LastError("no-reload", "still 17.3.1", "image-install", now))
    stored = record_to_dict(status)
    assert {"version": "17.3.1", "flash_free": 0, "error_code": "no-reload", "handoff": "failed",
            "handoff_attempts": 3, "proven_address": "127.0.0.2"}.items() <= stored.items()
    assert record_from_dict(Status, stored) == status
    assert Status.from_flat(**status.flat()) == status
    older = {"state": "onboarding", "revision": "r0", "error_code": "x", "error_message": "y", "handoff": "pending",
             "handoff_next": "2026-12-04T12:00:00Z", "version": "16.12.4", "retired_field": 1}
    read = record_from_dict(Status, older)  # unknown keys from another version are ignored
    assert (read.error.code, read.handoff.state, read.handoff.next, read.facts.version) == \
           ("x", Handoff.PENDING, now, "16.12.4")


def test_each_part_of_a_status_changes_only_through_its_own_transitions():
    import datetime as dt

    from pnp_service.model import Handoff, HandoffProgress, Status, SudiState

    now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)
    assert not Status().error and Status().failed("c", "m", "s", now).error.code == "c"
    assert Status().failed("c", "m", "s", now).without_error() == Status()
    facts = Status().facts.reported({"version": "17.9.4", "flash_free": 0, "hostname": "", "bogus": 1})
    assert (facts.version, facts.flash_free, facts.hostname) == ("17.9.4", 0, "")  # 0 is a fact, "" is not
    handoff = HandoffProgress.pending("r1", now).recorded(Handoff.FAILED, "down", "", now, retry_at=None)
    assert (handoff.state, handoff.attempts, handoff.next) == (Handoff.FAILED, 1, None)
    sudi = SudiState(challenges=(("c1", "127.0.0.2", "x", "t"),))
    held = sudi.refused((), "127.0.0.2", "until", 1)
    assert held.challenges == () and held.throttled == (("127.0.0.2", "until", 1),)
    assert held.proven((), "127.0.0.2", now).throttled == ()  # a proof lifts its address's hold-off
