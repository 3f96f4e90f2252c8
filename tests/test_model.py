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


def test_defaults_are_left_out_and_leaves_follow_the_yang_order():
    minimal = declaration_to_xml(Declaration(serial="SN1", hostname="h", template="x"))
    assert [etree.QName(child).localname for child in minimal] == ["serial", "hostname", "config"]
    assert [etree.QName(child).localname for child in minimal.find(q("config"))] == ["template"]
    full = declaration_to_xml(FULL)
    order = [etree.QName(child).localname for child in full]
    assert order == ["serial", "pid", "hostname", "config", "variable", "variable", "variable", "variable",
                     "command", "command", "step", "image", "credentials"]
    assert full.find(q("variable")).find(q("type")) is None  # a string variable says nothing of its type
