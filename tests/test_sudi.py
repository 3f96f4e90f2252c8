"""SUDI device authentication: only the switch Cisco built with that serial gets its configuration.

Every test builds its PKI here (simulator.lab_pki); nothing secret is committed.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from conftest import REPO, SECRET, FakeClock, RunningListener, datastore_xml, open_store
from pnp_service import protocol, sudi
from pnp_service.listener import ListenerSettings
from pnp_service.provisioner import Settings
from pnp_service.simulator import AgentSimulator, SimulatedDevice, messages
from pnp_service.simulator.lab_pki import LabCa

DEVICE = ("<serial>{sn}</serial><pid>C9300-24P</pid><hostname>{host}</hostname>"
          "<config><template>hostname {{{{ hostname }}}}\nenable secret s3cret-{sn}\n</template></config>"
          "<credentials><username>netops</username><password>pw-{sn}</password></credentials>{auth}")
SUDI = "<authentication>sudi</authentication>"


@pytest.fixture(scope="module")
def pki():
    ca, other = LabCa.create("Lab"), LabCa.create("Rogue")
    return {
        "ca": ca,
        "rogue": other,
        "ec": ca.device("SN1", "C9300-24P", "ec"),
        "rsa": ca.device("SN2", "C9300-24P", "rsa"),
        "neighbour": ca.device("SN9", "C9300-24P", "ec"),  # another genuine switch
        "rogue-sn1": other.device("SN1", "C9300-24P", "ec"),  # right subject, wrong CA
    }


@pytest.fixture
def lab(tmp_path, pki):
    started = []

    def start(*bodies, with_ca=True):
        path = tmp_path / "ds.xml"
        path.write_text(datastore_xml(*bodies))
        policy = sudi.Policy(anchors=sudi.load_ca_bundle(pki["ca"].bundle())) if with_ca else None
        clock = FakeClock(dt.datetime.now(dt.timezone.utc).timestamp())
        running = RunningListener(open_store(str(path)), clock, ListenerSettings(
            secret=SECRET, provisioning=Settings(sudi=policy, max_attempts=2)))
        started.append(running)
        return running, AgentSimulator(running.url, sleep=clock.advance, max_polls=25, max_wait=400)

    yield start
    for running in started:
        running.stop()


def genuine(serial, pair, **kwargs):
    cert, key = pair
    return SimulatedDevice(serial, sudi_cert=cert, sudi_key=key, auth_required=True, **kwargs)


@pytest.mark.parametrize("kind, serial", [("ec", "SN1"), ("rsa", "SN2")])
def test_a_genuine_device_proves_itself_first_then_provisions(lab, pki, kind, serial):
    running, sim = lab(DEVICE.format(sn=serial, host="sw", auth=SUDI))
    device = genuine(serial, pki[kind])
    result = sim.run(device)
    assert result.outcome == "configured", result
    assert result.trace == ["device-auth", "device-info", "config-upgrade"]  # the proof before anything else
    assert f"enable secret s3cret-{serial}" in device.config and device.credentials == ("netops", f"pw-{serial}")
    status = running.store.load(serial).status
    assert status.sudi.proven_address == "127.0.0.1" and status.sudi.challenges == ()


@pytest.mark.parametrize("spoofer", ["no-sudi", "other-ca", "neighbour", "replay"])
def test_spoofers_get_nothing_are_logged_and_the_genuine_device_still_provisions(lab, pki, spoofer, caplog):
    running, sim = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI))
    if spoofer == "replay":
        # A signature the genuine switch made over another challenge (captured on the wire, say).
        udi = protocol.Udi("C9300-24P", "V01", "SN1")
        old = messages.parse_server_message(running.listener.work_request(
            messages.work_request(udi, "old"), "192.0.2.77", "http://x/").body)
        captured, _ = messages.sign_challenge(pki["ec"][1], old.find_text("deviceAuth/challenge-request"))
        fake = genuine("SN1", pki["ec"], replay_signature=captured)
    else:
        pair = {"no-sudi": (b"", b""), "other-ca": pki["rogue-sn1"], "neighbour": pki["neighbour"]}[spoofer]
        fake = genuine("SN1", pair)
    spoofing = AgentSimulator(running.url, sleep=lambda s: None, max_polls=6, max_wait=10, source_address="127.0.0.2")
    result = spoofing.run(fake)
    assert result.trace[0] == "device-auth" and set(result.trace) <= {"device-auth", "backoff"}
    assert fake.config is None and fake.credentials is None  # no configuration, image or login
    reasons = {"no-sudi": "sudi-missing", "other-ca": "sudi-untrusted-chain", "neighbour": "sudi-serial-mismatch",
               "replay": "sudi-bad-signature"}
    status = running.store.load("SN1").status
    assert status.state == "onboarding" and status.attempts == 0 and status.error.code == reasons[spoofer]
    assert [t[0] for t in status.sudi.throttled] == ["127.0.0.2"]  # that address is held off, nothing else
    line = next(r.getMessage() for r in caplog.records if "event=sudi-refused" in r.getMessage())
    assert 'serial="SN1"' in line and 'address="127.0.0.2"' in line and reasons[spoofer] in line
    # The genuine switch, from its own address, is not delayed: it proves itself and provisions.
    real = genuine("SN1", pki["ec"])
    result = sim.run(real)
    assert result.outcome == "configured" and result.trace == ["device-auth", "device-info", "config-upgrade"]
    assert running.store.load("SN1").status.error.code == ""


def test_a_declaration_without_authentication_is_unaffected(lab):
    running, sim = lab(DEVICE.format(sn="SN5", host="sw", auth=""))
    result = sim.run(SimulatedDevice("SN5"))
    assert result.outcome == "configured" and result.trace == ["device-info", "config-upgrade"]


def test_without_a_ca_a_sudi_declaration_is_never_served(lab, pki):
    running, sim = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI), with_ca=False)
    device = genuine("SN1", pki["ec"])
    result = sim.run(device)
    assert result.trace == ["backoff"] and device.config is None
    assert running.store.load("SN1").status.error.code == "sudi-no-ca"


def test_a_challenge_is_used_up_only_by_an_answer_from_the_address_it_was_sent_to(lab, pki):
    running, _ = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI))
    listener = running.listener
    udi = protocol.Udi("C9300-24P", "V01", "SN1")
    reply = messages.parse_server_message(listener.work_request(messages.work_request(udi, "c1"), "192.0.2.7", "http://x/").body)
    challenge = reply.find_text("deviceAuth/challenge-request")
    assert len(challenge) >= 22  # at least 128 bits
    signature, method = messages.sign_challenge(pki["ec"][1], challenge)
    answer = messages.device_auth_response(udi, "c1", pki["ec"][0], signature, method)
    listener.work_response(answer, "192.0.2.8", "http://x/")  # answered from elsewhere: refused, challenge kept
    status = running.store.load("SN1").status
    assert status.error.code == "sudi-stale-challenge" and status.sudi.proven_address == ""
    assert [c[0] for c in status.sudi.challenges] == ["c1"]
    listener.work_response(answer, "192.0.2.7", "http://x/")  # the device it was sent to
    status = running.store.load("SN1").status
    assert status.sudi.proven_address == "192.0.2.7" and status.sudi.challenges == ()
    listener.work_response(answer, "192.0.2.9", "http://x/")  # single use: the same answer again changes nothing
    assert running.store.load("SN1").status.sudi.proven_address == "192.0.2.7"


def test_downloads_after_a_proof_are_bound_to_the_address_that_proved(lab, pki):
    running, sim = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI))
    urls = []
    original = sim._fetch
    sim._fetch = lambda http, location, checksum="": (urls.append(location), original(http, location, checksum))[1]
    assert sim.run(genuine("SN1", pki["ec"])).outcome == "configured"
    (url,) = urls
    assert "bound=1" in url
    expires = int(url.split("expires=")[1].split("&")[0])
    assert expires - running.listener.clock() <= 300  # minutes, not an hour
    path = url.split("127.0.0.1", 1)[1].split(":", 1)[1].split("/", 1)[1]
    assert running.listener.download(*[p for p in ("/" + path).split("?")[0].split("/")[3:6]], "",
                                     str(expires), url.split("sig=")[1], "192.0.2.99", True).status == 403


def test_check_and_serve_name_sudi_declarations_without_a_ca(tmp_path, pki):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE.format(sn="SN1", host="sw", auth=SUDI)))
    check = subprocess.run([sys.executable, "-m", "pnp_service.cli", "check", "--datastore", str(path)],
                           cwd=REPO, capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "SN1: asks for SUDI authentication but the listener has no --sudi-ca" in check.stderr
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki["ca"].bundle())
    ok = subprocess.run([sys.executable, "-m", "pnp_service.cli", "check", "--datastore", str(path), "--sudi-ca", str(ca)],
                        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    serve = subprocess.run([sys.executable, "-m", "pnp_service.cli", "serve", "--datastore", str(path), "--port", "1"],
                           cwd=REPO, capture_output=True, text=True, timeout=30)
    assert serve.returncode == 1 and "ask for SUDI authentication (SN1) but no --sudi-ca" in serve.stderr


def test_the_lab_helper_and_the_agent_play_the_whole_loop_from_the_command_line(tmp_path, serve, clock):
    lab_dir = tmp_path / "lab"
    made = subprocess.run([sys.executable, "-m", "pnp_service.cli", "sudi-lab", str(lab_dir), "--device", "SN7:C9300-24P",
                           "--rsa"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert oct((lab_dir / "SN7.key").stat().st_mode & 0o777) == "0o600"
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(DEVICE.format(sn="SN7", host="sw", auth=SUDI)))
    policy = sudi.Policy(anchors=sudi.load_ca_bundle((lab_dir / "ca.pem").read_bytes()))
    running = RunningListener(open_store(str(path)), FakeClock(dt.datetime.now(dt.timezone.utc).timestamp()),
                              ListenerSettings(secret=SECRET, provisioning=Settings(sudi=policy)))
    try:
        agent = subprocess.run([sys.executable, "-m", "pnp_service.cli", "agent", "--url", running.url, "--device",
                                "SN7:C9300-24P", "--sudi-cert", str(lab_dir / "SN7.pem"), "--sudi-key",
                                str(lab_dir / "SN7.key"), "--time-scale", "0"],
                               cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        running.stop()
    assert agent.returncode == 0 and "SN7: configured" in agent.stdout, agent.stdout + agent.stderr


def test_the_verifier_refuses_expired_and_foreign_certificates(pki):
    cert, key = pki["ca"].device("SN3", "C9300-24P", now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=800))
    signature, method = messages.sign_challenge(key, "abc")
    import base64
    with pytest.raises(sudi.SudiError) as raised:
        sudi.verify(anchors=sudi.load_ca_bundle(pki["ca"].bundle()), certificate_b64=base64.b64encode(cert).decode(),
                    signature_b64=base64.b64encode(signature).decode(), challenge="abc", encryption=method,
                    hashing="SHA256", serials=["SN3"], pid="C9300-24P", now=dt.datetime.now(dt.timezone.utc))
    assert raised.value.reason == sudi.Reason.EXPIRED
    good_cert, good_key = pki["ec"]
    signature, method = messages.sign_challenge(good_key, "abc", "SHA512")
    args = dict(anchors=sudi.load_ca_bundle(pki["ca"].bundle()), certificate_b64=base64.b64encode(good_cert).decode(),
                signature_b64=base64.b64encode(signature).decode(), challenge="abc", encryption=method,
                hashing="SHA512", serials=["SN1"], now=dt.datetime.now(dt.timezone.utc))
    assert sudi.verify(pid="C9300-24P", **args).serial == "SN1"
    with pytest.raises(sudi.SudiError, match="PID C9300-24P, the declaration C9500"):
        sudi.verify(pid="C9500-16X", **args)


def test_what_an_unverified_certificate_says_is_cleaned_before_it_is_recorded(pki):
    # The subject is quoted in the error before anything is verified: a control character in it would make the
    # status unwritable (lxml refuses it) and the hold-off of that address would be lost with it.
    import base64
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue\x07\x1b[2J"),
                      x509.NameAttribute(NameOID.SERIAL_NUMBER, "PID:C9300-24P SN:SN1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    signature, method = messages.sign_challenge(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), "abc")
    with pytest.raises(sudi.SudiError) as raised:
        sudi.verify(anchors=sudi.load_ca_bundle(pki["ca"].bundle()), certificate_b64=base64.b64encode(cert).decode(),
                    signature_b64=base64.b64encode(signature).decode(), challenge="abc", encryption=method,
                    hashing="SHA256", serials=["SN1"], pid="C9300-24P", now=dt.datetime.now(dt.timezone.utc))
    message = str(raised.value)
    assert raised.value.reason == sudi.Reason.UNTRUSTED and "Rogue" in message
    assert message.startswith("certificate ")  # the message itself, not the error's arguments
    assert "\x07" not in message and "\x1b" not in message


def test_an_rsa_certificate_with_a_signature_from_another_key_is_refused(lab, pki):
    """Kills the mutant that skips the RSA signature check (the other spoofers use EC keys)."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives import serialization

    running, _ = lab(DEVICE.format(sn="SN2", host="sw", auth=SUDI))
    listener = running.listener
    udi = protocol.Udi("C9300-24P", "V01", "SN2")
    reply = messages.parse_server_message(listener.work_request(messages.work_request(udi, "c1"), "192.0.2.7", "http://x/").body)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    signature, method = messages.sign_challenge(other_key, reply.find_text("deviceAuth/challenge-request"))
    listener.work_response(messages.device_auth_response(udi, "c1", pki["rsa"][0], signature, method), "192.0.2.7",
                           "http://x/")
    status = running.store.load("SN2").status
    assert status.sudi.proven_address == "" and status.error.code == "sudi-bad-signature"


# --------------------------------------------------------------------------- the verifier on its own (docs/mutation.md)


def prove(anchors_pem, cert_pem, key_pem, *, method=None, hashing="SHA256", serial="SN1"):
    """sudi.verify of a challenge signed with ``key_pem``; ``method`` as the device names it (default: its key's)."""
    import base64
    signature, signed_with = messages.sign_challenge(key_pem, "abc", hashing)
    return sudi.verify(anchors=sudi.load_ca_bundle(anchors_pem), certificate_b64=base64.b64encode(cert_pem).decode(),
                       signature_b64=base64.b64encode(signature).decode(), challenge="abc",
                       encryption=method or signed_with, hashing=hashing, serials=[serial], pid="C9300-24P",
                       now=dt.datetime.now(dt.timezone.utc))


def pem(certificate):
    from cryptography.hazmat.primitives import serialization
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_sub_ca_of_the_same_name_with_another_key_is_not_trusted(pki):
    impostor = LabCa.create("Lab")  # the names of the lab's CAs, not their keys
    cert, key = impostor.device("SN1", "C9300-24P")
    with pytest.raises(sudi.SudiError) as raised:
        prove(pki["ca"].bundle(), cert, key)
    assert raised.value.reason == sudi.Reason.UNTRUSTED
    assert prove(pki["ca"].bundle(), *pki["ec"]).serial == "SN1"


def test_a_sub_ca_the_device_sends_completes_a_chain_to_a_root_given_alone(pki):
    root_only = pem(pki["ca"].root)
    cert, key = pki["ec"]
    with pytest.raises(sudi.SudiError) as raised:
        prove(root_only, cert, key)
    assert raised.value.reason == sudi.Reason.UNTRUSTED
    assert prove(root_only, cert + pem(pki["ca"].sub), key).serial == "SN1"


def test_a_root_without_extensions_is_an_anchor_as_old_cisco_roots_are(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def issue(subject, key, issuer, issuer_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=30)).sign(issuer_key, hashes.SHA256()))

    root_key, device_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Old Root")])
    root = issue(root_name, root_key, root_name, root_key)
    assert not list(root.extensions)
    device = issue(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "PID:C9300-24P SN:SN1")]), device_key,
                   root_name, root_key)
    key_pem = device_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
    assert prove(pem(root), pem(device), key_pem).serial == "SN1"


def test_a_certificate_naming_no_serial_is_a_serial_mismatch(pki):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca, now = pki["ca"], dt.datetime.now(dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no serial")]))
            .issuer_name(ca.sub.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .sign(ca.sub_key, hashes.SHA256()))
    assert sudi.subject_identity(cert) == ("", "")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    with pytest.raises(sudi.SudiError, match="names serial none") as raised:
        prove(ca.bundle(), pem(cert), key_pem)
    assert raised.value.reason == sudi.Reason.SERIAL


@pytest.mark.parametrize("kind, method, hashing", [("ec", "ECDSA", "MD5"), ("ec", "RSA", "SHA256"),
                                                    ("rsa", "ECDSA", "SHA256")])
def test_a_method_the_key_or_the_listener_does_not_have_is_refused_as_such(pki, kind, method, hashing):
    cert, key = pki[kind]
    serial = {"ec": "SN1", "rsa": "SN2"}[kind]
    with pytest.raises(sudi.SudiError) as raised:
        prove(pki["ca"].bundle(), cert, key, method=method, hashing=hashing, serial=serial)
    assert raised.value.reason == sudi.Reason.METHOD


def test_a_failed_answer_with_no_error_is_recorded_as_no_sudi(lab, pki):
    running, _ = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI))
    listener, udi = running.listener, protocol.Udi("C9300-24P", "V01", "SN1")
    listener.work_request(messages.work_request(udi, "c1"), "192.0.2.7", "http://x/")
    listener.work_response(messages.response(udi, "device-auth", "c1", False), "192.0.2.7", "http://x/")
    status = running.store.load("SN1").status
    assert status.error.code == sudi.Reason.NO_SUDI and status.sudi.proven_address == ""


def test_a_challenge_asked_for_again_may_be_answered_under_the_first_correlator(lab, pki):
    running, _ = lab(DEVICE.format(sn="SN1", host="sw", auth=SUDI))
    listener, udi = running.listener, protocol.Udi("C9300-24P", "V01", "SN1")
    challenges = [messages.parse_server_message(listener.work_request(
        messages.work_request(udi, correlator), "192.0.2.7", "http://x/").body).find_text("deviceAuth/challenge-request")
        for correlator in ("c1", "c2")]
    assert challenges[0] == challenges[1]  # the same challenge, asked again
    # The answer to the first request arrives late, after the second: the challenge is the one that address holds.
    signature, method = messages.sign_challenge(pki["ec"][1], challenges[0])
    listener.work_response(messages.device_auth_response(udi, "c1", pki["ec"][0], signature, method), "192.0.2.7",
                           "http://x/")
    status = running.store.load("SN1").status
    assert status.sudi.proven_address == "192.0.2.7" and status.error.code == ""
