"""Every message the server builds validates against Cisco's PnP XSDs.

Cisco's schemas are public (github.com/ottorei/Cisco-PnP-protocol-specification, folder schema/) but are not
part of this repository: fetch them elsewhere and point ``PNP_XSD_DIR`` at the folder that holds
``pnp_<service>_svc.xsd``.  Without it these tests are skipped with that reason; the shape tests in
test_protocol.py run either way.
"""

from __future__ import annotations

import inspect
import os

import pytest
from lxml import etree

from pnp_service import protocol
from pnp_service.protocol import Envelope, Reload, Udi
from pnp_service.simulator import messages

XSD_DIR = os.environ.get("PNP_XSD_DIR", "")
UDI = Udi("C9300-24P", "V01", "FOC2001X0AB")
ENV = Envelope(UDI, "CiscoPnP-1.0-R33.200930-I1-P592-T43891-2")
LOGIN = Envelope(UDI, "c-2", "admin", "s3cret & <more>")

#: (builder name, case, message): every server message shape, with the service whose envelope schema applies.
SERVER_MESSAGES = [
    ("device_info", "all", protocol.device_info(ENV)),
    ("device_info", "image", protocol.device_info(ENV, "image")),
    ("config_upgrade", "noReload", protocol.config_upgrade(ENV, "http://pnp.example.invalid/c.cfg")),
    ("config_upgrade", "reload, running", protocol.config_upgrade(
        ENV, "http://pnp.example.invalid/c.cfg", apply_to="running", reload=Reload(reason="day0"))),
    ("config_upgrade", "checksum, login", protocol.config_upgrade(LOGIN, "https://pnp.example.invalid/c", checksum="ab" * 16)),
    ("image_install", "reload", protocol.image_install(ENV, "http://pnp.example.invalid/i.bin", "AB" * 16)),
    ("image_install", "noReload, no destination", protocol.image_install(
        ENV, "http://pnp.example.invalid/i.bin", "ab" * 16, destination=None, reload=None)),
    ("cli_exec", "show version", protocol.cli_exec(ENV, "show version | include <Version> & more")),
    ("cli_exec", "dialogue", protocol.cli_exec(ENV, "copy http://pnp.example.invalid/i.bin flash:i.bin", "PT30M",
                                               dialogue=[("Destination filename", ""), ("[confirm]", "y")])),
    ("cli_config_apply", "lines", protocol.cli_config_apply(ENV, ["hostname a", "end"])),
    ("cli_config_persist", "persist", protocol.cli_config_persist(ENV)),
    ("capability", "empty", protocol.capability(ENV)),
    ("topology", "request", protocol.topology(ENV)),
    ("device_auth", "challenge", protocol.device_auth(ENV, "r4nd0m-Challenge_text")),
    ("certificate_install", "trustpool", protocol.certificate_install(ENV, "http://pnp.example.invalid/ca.pem")),
    ("certificate_install", "ntp and reconnect", protocol.certificate_install(
        ENV, "http://192.0.2.10/ca.pem", ntp="192.0.2.1", reconnect=("pnp.example.invalid", 8443))),
    ("certificate_install", "reconnect to an address", protocol.certificate_install(
        ENV, "http://192.0.2.10/ca.pem", reconnect=("192.0.2.10", 443))),
    ("backoff", "callbackAfter", protocol.backoff(ENV, "later", seconds=3725)),
    ("backoff", "callbackAfter capped", protocol.backoff(ENV, "later", seconds=10**9)),
    ("backoff", "defaultMinutes", protocol.backoff(ENV, "later", default_minutes=2880)),
    ("backoff", "terminate", protocol.backoff(ENV, "go away", terminate=True)),
    ("backoff", "login", protocol.backoff(LOGIN, "later", seconds=5)),
    ("bye", "stamped", protocol.bye(ENV)),
    ("bye", "login", protocol.bye(LOGIN)),
]

#: What the simulator sends, where real agents follow the schemas too.  Real device-info responses do not
#: (file systems named flash, type disk, sizes beyond xs:int, no imageHash) and real errors say ERROR where
#: the schema says XSVC_ERROR: there the simulator follows the captures, not the schema.
AGENT_MESSAGES = [
    ("device-id", messages.work_request(UDI, "c1", "Switch", True)),
    ("config-upgrade", messages.response(
        UDI, "config-upgrade", "c1", False, protocol.ErrorInfo("XSVC_ERROR", "PnP Service Error 1410", "x"))),
    ("image-install", messages.response(UDI, "image-install", "c1")),
    ("device-auth", messages.device_auth_response(UDI, "c1", b"-----BEGIN CERTIFICATE-----", b"signature", "ECDSA")),
    ("cli-exec", messages.cli_exec_output(UDI, "c1", "show version", "Cisco IOS XE Software")),
    ("topology", messages.topology_response(UDI, "c1", [messages.Uplink("TenGigabitEthernet1/1/1", "dist-sw-1",
                                                                         "GigabitEthernet1/0/48")])),
]


def schema_service(message: bytes) -> str:
    body = etree.fromstring(message)[0]
    service = etree.QName(body).namespace.rsplit(":", 1)[1]
    return "work_info" if service == "work-info" else service.replace("-", "_")


_schemas: dict[str, etree.XMLSchema] = {}


def schema(service: str) -> etree.XMLSchema:
    if not XSD_DIR:
        pytest.skip("PNP_XSD_DIR is not set: fetch Cisco's PnP schemas (ottorei/Cisco-PnP-protocol-specification, "
                    "folder schema/) outside the repository and point PNP_XSD_DIR at them")
    path = os.path.join(XSD_DIR, f"pnp_{service}_svc.xsd")
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing: PNP_XSD_DIR must hold Cisco's pnp_*_svc.xsd files")
    if service not in _schemas:
        _schemas[service] = etree.XMLSchema(etree.parse(path))  # parsed from its path: its imports are relative
    return _schemas[service]


def assert_valid(message: bytes, service: str) -> None:
    validator = schema(service)
    document = etree.fromstring(message)
    assert validator.validate(document), f"{message.decode()}\n{validator.error_log}"


@pytest.mark.parametrize("builder, case, message", SERVER_MESSAGES, ids=[f"{b}[{c}]" for b, c, _ in SERVER_MESSAGES])
def test_server_message_is_valid_against_ciscos_schema(builder, case, message):
    assert_valid(message, schema_service(message))


@pytest.mark.parametrize("service, message", AGENT_MESSAGES, ids=[s for s, _ in AGENT_MESSAGES])
def test_simulated_agent_message_is_valid_against_ciscos_schema(service, message):
    assert_valid(message, service.replace("-", "_"))


def test_the_schemas_catch_what_the_server_once_sent():
    """The check above can fail: the old ``<abortOnSyntaxFault>true</...>`` is refused."""
    message = protocol.config_upgrade(ENV, "http://pnp.example.invalid/c.cfg")
    bad = message.replace(b"<abortOnSyntaxFault/>", b"<abortOnSyntaxFault>true</abortOnSyntaxFault>")
    assert bad != message
    assert not schema("config_upgrade").validate(etree.fromstring(bad))
    without = protocol.config_upgrade(ENV, "http://pnp.example.invalid/c.cfg", abort_on_syntax_fault=False)
    assert not schema("config_upgrade").validate(etree.fromstring(without))  # the schema requires it


def test_every_server_builder_has_a_schema_case():
    """A new builder in protocol.py must be added to SERVER_MESSAGES."""
    builders = {
        name for name, value in vars(protocol).items()
        if inspect.isfunction(value) and value.__module__ == protocol.__name__ and not name.startswith("_")
        and "env" in inspect.signature(value).parameters
    }
    assert builders == {b for b, _, _ in SERVER_MESSAGES}
