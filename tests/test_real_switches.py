"""Real switches, over HTTP with the simulator: stacks, install and bundle mode, short flash, slow reloads, error codes,
and messages in the shapes real agents send."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from conftest import REPO, datastore_xml
from pnp_service import protocol
from pnp_service.simulator import AgentSimulator, SimulatedDevice, messages

IMAGE = b"IOS-XE" * 20_000  # 120,000 bytes
IMAGE_NAME = "cat9k_iosxe.17.09.04a.SPA.bin"
BASE = "<serial>{sn}</serial><pid>C9300-48P</pid><hostname>{host}</hostname><config><template>hostname {{{{ hostname }}}}\n</template></config>"


def image(name=IMAGE_NAME, size=""):
    md5 = hashlib.md5(IMAGE).hexdigest()
    size = f"<size>{size}</size>" if size else ""
    return f"<image><version>17.09.04a</version><url>{name}</url><md5>{md5}</md5>{size}</image>"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / IMAGE_NAME).write_bytes(IMAGE)
    return folder


@pytest.fixture
def lab(tmp_path, serve, clock, images):
    """A listener on a declarations file, serving images from its folder; returns (listener, simulator)."""
    def start(*bodies, **provisioning):
        path = tmp_path / "ds.xml"
        path.write_text(datastore_xml(*bodies))
        running = serve(str(path), image_dir=str(images), **provisioning)
        return running, AgentSimulator(running.url, sleep=clock.advance, max_polls=40)
    return start


# --------------------------------------------------------------------------- image upgrades


def test_install_mode_upgrades_through_the_agents_installer(lab):
    running, sim = lab(BASE.format(sn="SW1", host="a") + image())
    device = SimulatedDevice("SW1", pid="C9300-48P", mode="install")
    result = sim.run(device)
    assert result.outcome == "configured", result
    assert result.trace == ["device-info", "image-install", "device-info", "config-upgrade"]
    assert device.version == "17.09.04a" and device.installs == 1
    status = running.store.load("SW1").status
    assert status.facts.mode == "install" and status.facts.image_file == "flash:packages.conf" and status.facts.version == "17.09.04a"


def test_install_mode_without_the_agents_installer_goes_through_the_command_line(lab):
    running, sim = lab(BASE.format(sn="SW2", host="b") + image())
    device = SimulatedDevice("SW2", pid="C9300-48P", mode="install", installer=False)
    result = sim.run(device)
    assert result.outcome == "configured", result
    # 1827 (no installer): copy, then install add ... activate commit, which reloads without an answer.
    assert result.trace == ["device-info", "image-install", "cli-exec", "cli-exec", "device-info", "config-upgrade"]
    assert device.files == {IMAGE_NAME: len(IMAGE)} and device.installs == 1 and device.version == "17.09.04a"


def test_a_c9500_gets_its_image_on_bootflash(lab):
    running, sim = lab(BASE.format(sn="SW3", host="c") + image())
    device = SimulatedDevice("SW3", pid="C9300-48P", flash="bootflash", mode="bundle")
    assert sim.run(device).outcome == "configured"
    assert running.store.load("SW3").status.facts.flash == "bootflash:"


def test_short_flash_fails_before_anything_is_copied_with_the_sizes(lab):
    running, sim = lab(BASE.format(sn="SW4", host="d") + image())
    device = SimulatedDevice("SW4", pid="C9300-48P", mode="bundle", flash_free=50_000)
    result = sim.run(device)
    assert result.outcome == "failed" and device.installs == 0 and "image-install" not in result.trace
    status = running.store.load("SW4").status
    assert status.state == "error" and status.error.code == "no-space"
    assert "needs 120000 bytes but flash: has 50000 free" in status.error.message and "nothing was copied" in status.error.message


def test_a_full_flash_is_a_fact_not_an_unknown(lab):
    running, sim = lab(BASE.format(sn="SW8", host="h") + image())
    device = SimulatedDevice("SW8", pid="C9300-48P", mode="bundle", flash_free=0)
    result = sim.run(device)
    assert result.outcome == "failed" and device.installs == 0 and "image-install" not in result.trace
    assert "but flash: has 0 free" in running.store.load("SW8").status.error.message


def test_short_flash_in_install_mode_removes_inactive_packages_first(lab):
    running, sim = lab(BASE.format(sn="SW5", host="e") + image())
    device = SimulatedDevice("SW5", pid="C9300-48P", mode="install", flash_free=50_000, inactive_bytes=1_000_000)
    result = sim.run(device)
    assert result.outcome == "configured", result
    assert result.trace[:5] == ["device-info", "cli-exec", "device-info", "image-install", "device-info"]
    assert device.installs == 1


def test_short_flash_even_after_removing_inactive_packages_fails_with_the_sizes(lab):
    running, sim = lab(BASE.format(sn="SW6", host="f") + image())
    device = SimulatedDevice("SW6", pid="C9300-48P", mode="install", flash_free=50_000, inactive_bytes=10_000)
    assert sim.run(device).outcome == "failed"
    status = running.store.load("SW6").status
    assert "60000 free even after 'install remove inactive'" in status.error.message and device.installs == 0


def test_a_declared_image_size_is_checked_for_a_remote_image(lab):
    running, sim = lab(BASE.format(sn="SW7", host="g") + image("http://images.example.invalid/" + IMAGE_NAME, 4_000_000_000))
    device = SimulatedDevice("SW7", pid="C9300-48P", mode="bundle", flash_free=1_000_000_000)
    assert sim.run(device).outcome == "failed"
    assert running.store.load("SW7").status.error.code == "no-space"


def test_a_slow_reload_that_polls_first_is_waited_for_and_installs_once(lab):
    running, sim = lab(BASE.format(sn="SW8", host="h") + image())
    device = SimulatedDevice("SW8", pid="C9300-48P", mode="bundle", reload_seconds=90, poll_before_reload=True)
    result = sim.run(device)
    assert result.outcome == "configured", result
    # The poll before the reload proves nothing (old version): no second install; after the reload it is asked again.
    assert result.trace == ["device-info", "image-install", "device-info", "device-info", "config-upgrade"]
    assert device.installs == 1 and device.version == "17.09.04a"


def test_an_image_upgrade_at_time_scale_zero_completes_from_the_command_line(lab):
    running, _ = lab(BASE.format(sn="SW9", host="i") + image())
    command = [sys.executable, "-m", "pnp_service.cli", "agent", "--url", running.url, "--device", "SW9:C9300-48P",
               "--time-scale", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SW9: configured" in result.stdout and "image-install" in result.stdout
    assert running.store.load("SW9").status.facts.version == "17.09.04a"


def test_known_error_codes_say_what_to_do(lab):
    running, sim = lab(BASE.format(sn="SWA", host="j"), max_attempts=1)
    device = SimulatedDevice("SWA", pid="C9300-48P", fail_service="config-upgrade", fail_code="PnP Service Error 1410")
    assert sim.run(device).outcome == "failed"
    message = running.store.load("SWA").status.error.message
    assert "check the template with pnp-service render" in message and "simulated failure" in message


# --------------------------------------------------------------------------- stacks

STACK = BASE.format(sn="TOP1", host="stack") + "<stack><members>3</members></stack>"


def stack_device(active="MEM3", **kwargs):
    """A 3-member stack whose active member is not the declared top-of-stack serial."""
    return SimulatedDevice(active, pid="C9300-48P", stack=(("TOP1", "C9300-48P"), ("MEM2", "C9300-24P")), active_slot=3,
                           **kwargs)


def test_a_stack_declared_by_its_top_serial_provisions_when_another_member_is_active(lab):
    running, sim = lab(STACK)
    device = stack_device()
    result = sim.run(device)
    assert result.outcome == "configured", result
    # The stranger is asked for device-info, found in TOP1's stack, and from then on served as TOP1.
    assert result.trace == ["device-info", "device-info", "cli-exec", "config-upgrade"]
    record = running.store.load("MEM3")
    assert record.serial == "TOP1" and record.caller == "MEM3"
    status = running.store.load("TOP1").status
    assert status.state == "provisioned"
    assert status.facts.members == ((1, "TOP1", "C9300-48P", "member"), (2, "MEM2", "C9300-24P", "member"),
                              (3, "MEM3", "C9300-48P", "active"))
    assert running.store.snapshot().unclaimed == ()  # the active member is no stranger


def test_a_declared_member_serial_is_matched_at_once(lab):
    running, sim = lab(BASE.format(sn="TOP2", host="s2") + "<stack><member>MEM5</member></stack>")
    device = SimulatedDevice("MEM5", pid="C9300-48P", stack=(("TOP2", "C9300-48P"),), active_slot=2)
    result = sim.run(device)
    assert result.outcome == "configured" and result.trace == ["device-info", "cli-exec", "config-upgrade"]


def test_a_stack_of_another_size_is_a_clear_error(lab):
    running, sim = lab(STACK)
    device = SimulatedDevice("MEM3", pid="C9300-48P", stack=(("TOP1", "C9300-48P"),), active_slot=2)
    assert sim.run(device).outcome == "failed"
    status = running.store.load("TOP1").status
    assert status.error.code == "stack-members" and "declared a stack of 3 switches but the device lists 2" in status.error.message


def test_members_on_another_version_are_an_error_not_half_an_upgrade(lab):
    running, sim = lab(STACK + image())
    device = stack_device(mismatched=("MEM2",))
    assert sim.run(device).outcome == "failed" and device.installs == 0
    status = running.store.load("TOP1").status
    assert status.error.code == "stack-version-mismatch" and "2 (MEM2)" in status.error.message


def test_a_stranger_that_is_no_stack_member_stays_unclaimed(lab):
    running, sim = lab(STACK)
    result = sim.run(SimulatedDevice("LONER1"))
    assert result.trace[:2] == ["device-info", "backoff"] and result.outcome == "backed-off"
    assert [u.serial for u in running.store.snapshot().unclaimed] == ["LONER1"]


def test_without_declared_stacks_a_stranger_is_not_asked_anything(lab):
    running, sim = lab(BASE.format(sn="PLAIN", host="p"))
    assert sim.run(SimulatedDevice("LONER2")).trace == ["backoff"]


# --------------------------------------------------------------------------- what real agents send

REAL_WORK_REQUEST = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:CSR1000V,VID:V00,SN:9XS1RSAHC1Y">
    <info xmlns="urn:cisco:pnp:work-info" correlator="CiscoPnP-1.0-R33.200930-I1-P592-T43891-2">
        <deviceId>
            <udi>PID:CSR1000V,VID:V00,SN:9XS1RSAHC1Y</udi>
            <hostname>Router</hostname>
            <authRequired>false</authRequired>
            <viaProxy>false</viaProxy>
            <securityAdvise>false</securityAdvise>
            <macAddress></macAddress>
        </deviceId>
        <reason>
            <reload>
                <message>factory-reset</message>
                <code>PnP Service Info 2408</code>
                <startupConfigPresent>false</startupConfigPresent>
            </reload>
        </reason>
    </info>
</pnp>"""

# A C9500 on 17.x as Catalyst Center logs it: profile first, blocks the 2017 schema does not know, boardId holding the
# serial, a negative memory size, empty variables, bootflash, a stack of two.
REAL_DEVICE_INFO = b"""<?xml version="1.0" encoding="UTF-8"?>
<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:C9500-32QC,VID:V02,SN:FDO24150ABC">
<response xmlns="urn:cisco:pnp:device-info" correlator="CiscoPnP-1.0-7-a" success="1">
  <thisProfileName>pnp-zero-touch</thisProfileName>
  <udi>
    <primary-chassis>PID:C9500-32QC,VID:V02,SN:FDO24150ABC</primary-chassis>
    <stacked-switch>
      <member-udi slot="2">PID:C9500-32QC,VID:V02,SN:FDO24150XYZ</member-udi>
      <member-udi slot="1">PID:C9500-32QC,VID:V02,SN:FDO24150ABC</member-udi>
      <member-udi slot="3">PID:C9500-32QC,VID:V02,SN:BAD$SERIAL</member-udi>
    </stacked-switch>
  </udi>
  <imageInfo>
    <versionString>17.17.1</versionString><imageFile>bootflash:packages.conf</imageFile><imageHash></imageHash>
    <returnToRomReason>reload</returnToRomReason><bootVariable></bootVariable><bootLdrVariable/>
    <configVariable/><configReg>0x2102</configReg><configRegNext></configRegNext>
  </imageInfo>
  <hardwareInfo>
    <hostname>Switch</hostname><vendor>Cisco</vendor><platformName>C9500-32QC</platformName>
    <processorType>x86</processorType><hwRevision>1.0</hwRevision><mainMemSize>-1732018176</mainMemSize>
    <ioMemSize>0</ioMemSize><boardId>FDO24150ABC</boardId>
  </hardwareInfo>
  <stackInfo><stackable>false</stackable></stackInfo>
  <deviceModeInfo><mode>autonomous</mode></deviceModeInfo>
  <fileSystemList>
    <fileSystem name="bootflash" type="disk" size="11250098176" freespace="-1" writable="true" readable="true"/>
    <fileSystem name="crashinfo" type="disk" size="1651314688" freespace="1621315584" writable="true" readable="true"/>
  </fileSystemList>
</response>
</pnp>"""

REAL_FAULT = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:ISR4451-X/K9,VID:V05,SN:FDO2101X0Y1">
<response xmlns="urn:cisco:pnp:fault"><fault><faultcode>Client</faultcode><faultstring>Request parsing failed</faultstring>
<detail><XSVC-ERR:error xmlns:XSVC-ERR="urn:cisco:pnp:error"><XSVC-ERR:details>Unknown element image</XSVC-ERR:details>
</XSVC-ERR:error></detail></fault></response></pnp>"""

REAL_ERROR = b"""<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:C9300-24P,VID:V01,SN:FOC2001X0AB">
<response xmlns="urn:cisco:pnp:config-upgrade" correlator="c1" success="0"><errorInfo>
<errorSeverity>ERROR</errorSeverity><errorCode>PnP Service Error 1413</errorCode><errorMessage>Invalid input detected</errorMessage>
</errorInfo></response></pnp>"""


def test_a_real_work_request_is_accepted_with_its_reload_reason():
    request = protocol.parse_work_request(REAL_WORK_REQUEST)
    assert request.udi.serial == "9XS1RSAHC1Y" and request.hostname == "Router" and request.mac_address == ""
    assert request.reloaded and request.reason == "PnP Service Info 2408"


def test_a_real_device_info_is_read_whatever_its_order_and_odd_values():
    response = protocol.parse_work_response(REAL_DEVICE_INFO)
    info = response.device
    assert info.version == "17.17.1" and info.install_mode and info.boot_file_system == "bootflash:"
    assert info.file_system("bootflash").free is None  # -1 is not a size
    assert [(m.slot, m.udi.serial) for m in info.members] == [(1, "FDO24150ABC"), (2, "FDO24150XYZ")]  # the bad one is left out


def test_digits_that_are_not_ascii_are_not_numbers_and_not_a_crash():
    # str.isdigit() takes "²", int() does not: that was a 500 for a value anyone can send.
    odd = REAL_DEVICE_INFO.replace(b'freespace="1621315584"', 'freespace="²"'.encode()).replace(b'slot="2"', 'slot="²"'.encode())
    info = protocol.parse_work_response(odd).device
    assert info.file_system("crashinfo").free is None
    assert sorted(m.udi.serial for m in info.members) == ["FDO24150ABC", "FDO24150XYZ"]


def test_a_long_member_udi_is_read_whole_never_cut_into_another_serial():
    long_pid = "C9500-" + "X" * 95  # so that 128 characters end just after SN:FDO24150ABC
    odd = REAL_DEVICE_INFO.replace(b"PID:C9500-32QC,VID:V02,SN:FDO24150XYZ",
                                   f"PID:{long_pid},VID:V02,SN:FDO24150ABCDEF".encode())
    serials = sorted(m.udi.serial for m in protocol.parse_work_response(odd).device.members)
    assert serials == ["FDO24150ABC", "FDO24150ABCDEF"]  # cut at 128 characters it read FDO24150ABC twice


def test_a_real_fault_and_a_real_error_are_read():
    fault = protocol.parse_work_response(REAL_FAULT)
    assert fault.string == "Request parsing failed" and "Unknown element image" in fault.detail
    error = protocol.parse_work_response(REAL_ERROR).error
    assert (error.severity, error.code, error.message) == ("ERROR", "PnP Service Error 1413", "Invalid input detected")


@pytest.mark.parametrize("message", [REAL_WORK_REQUEST, REAL_DEVICE_INFO, REAL_FAULT, REAL_ERROR])
def test_real_messages_through_the_listener_never_get_a_400(example_path, message):
    from conftest import SECRET, open_store
    from pnp_service.app import create_app
    from pnp_service.listener import ListenerSettings

    client = create_app(open_store(example_path), ListenerSettings(secret=SECRET)).test_client()
    path = "/pnp/WORK-REQUEST" if b"work-info" in message else "/pnp/WORK-RESPONSE"
    response = client.post(path, data=message, content_type="text/xml")
    assert response.status_code == 200 and messages.parse_server_message(response.data).service in ("backoff", "bye")


# --------------------------------------------------------------------------- HTTPS from day 0


def lab_pki(tmp_path):
    """A lab CA and a listener certificate for 127.0.0.1 that it signed."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pnp lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


def test_a_device_that_calls_over_http_installs_the_ca_and_goes_on_over_https(tmp_path, clock):
    import ssl

    from conftest import SECRET, RunningListener, open_store
    from pnp_service.listener import ListenerSettings
    from pnp_service.provisioner import Settings
    from pnp_service.steps import TrustpoolStep

    pki = lab_pki(tmp_path)
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(BASE.format(sn="TLS1", host="tls")))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki["cert"]), str(pki["key"]))
    secure = RunningListener(open_store(str(path)), clock, ListenerSettings(secret=SECRET), ssl_context=context)
    port = secure.server.port
    bootstrap = TrustpoolStep.plan(pki["ca"].read_text(), "127.0.0.1", port, ntp="192.0.2.123")
    plain = RunningListener(open_store(str(path)), clock,
                            ListenerSettings(secret=SECRET, provisioning=Settings(https_bootstrap=bootstrap)))
    try:
        device = SimulatedDevice("TLS1", pid="C9300-48P")
        result = AgentSimulator(plain.url, sleep=clock.advance, max_polls=20).run(device)
    finally:
        plain.stop()
        secure.stop()
    assert result.outcome == "configured", result
    assert result.trace == ["certificate-install", "device-info", "config-upgrade"]
    assert device.trustpool == pki["ca"].read_text()
    status = open_store(str(path)).load("TLS1").status
    assert status.state == "provisioned" and status.secure  # it finished over HTTPS, verifying the listener


def test_trustpool_needs_an_https_url(example_path, tmp_path):
    pki = lab_pki(tmp_path)
    command = [sys.executable, "-m", "pnp_service.cli", "serve", "--datastore", example_path, "--trustpool", str(pki["ca"])]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--https-url https://HOST[:PORT]" in result.stderr


def test_a_stack_whose_declared_serial_is_not_in_slot_1_is_still_matched(lab):
    """Kills the mutant that matches a stack by its slot-1 member only."""
    running, sim = lab(STACK)
    device = SimulatedDevice("MEM3", pid="C9300-48P", stack=(("MEM2", "C9300-24P"), ("TOP1", "C9300-48P")),
                             active_slot=3)
    assert sim.run(device).outcome == "configured"
    assert running.store.load("MEM3").serial == "TOP1"
