"""SUDI device authentication: the challenge the listener sends, and the check of what the device proves.

Owns the proof that a caller is the switch Cisco built with that serial: the
certificate its trust chip holds (its SUDI certificate) chains to the CA
certificates the operator gave the listener (``serve --sudi-ca``), is within
its validity, names the declared PID and an allowed serial in its subject's
``serialNumber`` (``PID:C9300-24P SN:FOC1234X0AB``), and its key signed the
challenge that was sent (RSA PKCS#1 v1.5 or ECDSA, SHA-256 or SHA-512), as
Cisco's reference validator checks it.  The cryptography library does every
cryptographic operation; nothing here is written by hand.

The rule of this file: pure.  Time comes in as an argument; no I/O but reading
the CA bundle when asked.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re
import secrets
from typing import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from .backoff import Backoff
from .xmlsafe import clean_text

#: What the server offers; the device answers with one of each.
ENCRYPTION_METHODS = ("RSA", "ECDSA")
HASH_METHODS = ("SHA256", "SHA512")
_HASHES = {"SHA256": hashes.SHA256, "SHA512": hashes.SHA512}
#: ``PID:C9300-24P SN:FOC1234X0AB`` (Cisco's SUDI subject serialNumber).
_SUBJECT_SERIAL = re.compile(r"PID:(?P<pid>\S+)\s+SN:(?P<serial>\S+)")


class Reason:
    """Why a proof failed: the status's last error code (``sudi-...``) and the log's ``reason``."""

    NO_SUDI = "sudi-missing"  # the device has no SUDI, or sent no certificate (error 3407)
    UNTRUSTED = "sudi-untrusted-chain"
    EXPIRED = "sudi-not-valid-now"
    SERIAL = "sudi-serial-mismatch"
    PID = "sudi-pid-mismatch"
    SIGNATURE = "sudi-bad-signature"
    STALE = "sudi-stale-challenge"
    METHOD = "sudi-unsupported-method"
    NO_CA = "sudi-no-ca"
    ALL = (NO_SUDI, UNTRUSTED, EXPIRED, SERIAL, PID, SIGNATURE, STALE, METHOD, NO_CA)


class SudiError(ValueError):
    """A failed proof: ``reason`` is one of :class:`Reason`, the message says what was wrong."""

    def __init__(self, reason: str, message: str):
        # The message quotes an unverified certificate (its subject, PID, serial): cleaned here, once, because it
        # goes on to the status, the log and the controller like anything else the device sent.
        super().__init__(clean_text(message, 400))
        self.reason = reason


def new_challenge() -> str:
    """A fresh challenge: 192 random bits, URL-safe text (what the device signs)."""
    return secrets.token_urlsafe(24)


def load_ca_bundle(pem: bytes, source: str = "the SUDI CA bundle") -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle; an empty or unreadable one is an error that says so."""
    try:
        certificates = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise SudiError(Reason.NO_CA, f"{source} holds no readable PEM certificate: {exc}") from None
    return certificates


@dataclasses.dataclass(frozen=True)
class Policy:
    """The listener's SUDI settings: the trust anchors, and how long a challenge, a proof and a hold-off last."""

    anchors: tuple[x509.Certificate, ...] = ()
    challenge_seconds: int = 300
    trust_seconds: int = 1800
    #: After a failed proof its address gets no challenge for this long, doubling with each failure, but never
    #: longer than a minute (nor than a challenge lives): switches of a branch share one address behind NAT.
    throttle_seconds: int = 15
    #: Download URLs handed out after a proof are bound to the device's address and expire this soon.
    download_seconds: int = 300

    def hold_off_seconds(self, failures: int) -> int:
        return int(Backoff(self.throttle_seconds, min(self.challenge_seconds, HOLD_OFF_MAX_SECONDS)).delay(failures))


HOLD_OFF_MAX_SECONDS = 60
#: Open challenges of one declaration: one per address, at most this many addresses at once; a newcomer takes the
#: place of the oldest only once that one had CHALLENGE_ANSWER_SECONDS to answer (an agent answers in seconds).
CHALLENGE_ADDRESSES = 8
CHALLENGE_ANSWER_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Proven:
    """A successful proof: the serial and PID the certificate names."""

    serial: str
    pid: str


def _decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SudiError(Reason.NO_SUDI, f"the {what} is not base64") from None


def _within(certificate: x509.Certificate, now: dt.datetime) -> bool:
    return certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if certificate.issuer != issuer.subject:
        return False
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
        return constraints.ca
    except x509.ExtensionNotFound:
        return True  # old v1 roots carry no extensions


def _chain(leaf: x509.Certificate, extra: Iterable[x509.Certificate], anchors: tuple[x509.Certificate, ...],
           now: dt.datetime) -> None:
    """Walk from the leaf to a certificate of the bundle, every hop signed by the next and valid now."""
    pool = list(anchors) + [c for c in extra if c != leaf]
    current = leaf
    for _ in range(8):
        if not _within(current, now):
            raise SudiError(Reason.EXPIRED, f"certificate {current.subject.rfc4514_string()} is not valid now "
                            f"({current.not_valid_before_utc:%Y-%m-%d} to {current.not_valid_after_utc:%Y-%m-%d})")
        if current in anchors:
            return
        issuer = next((candidate for candidate in pool if _issued_by(current, candidate)), None)
        if issuer is None:
            raise SudiError(Reason.UNTRUSTED, f"certificate {current.subject.rfc4514_string()} does not chain to "
                            "the SUDI CAs given to the listener (--sudi-ca)")
        current = issuer
    raise SudiError(Reason.UNTRUSTED, "certificate chain too long")


def subject_identity(certificate: x509.Certificate) -> tuple[str, str]:
    """(PID, serial) from the subject's serialNumber, as Cisco writes it; ("", "") when it is not there."""
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        match = _SUBJECT_SERIAL.search(str(attribute.value))
        if match:
            return match.group("pid"), match.group("serial")
    return "", ""


def verify(
    *,
    anchors: tuple[x509.Certificate, ...],
    certificate_b64: str,
    signature_b64: str,
    challenge: str,
    encryption: str,
    hashing: str,
    serials: Iterable[str],
    pid: str,
    now: dt.datetime,
) -> Proven:
    """Check a device-auth answer; raises :class:`SudiError` with the reason, or returns who proved it."""
    if not anchors:
        raise SudiError(Reason.NO_CA, "the listener has no SUDI CA certificates (serve --sudi-ca)")
    if not certificate_b64.strip():
        raise SudiError(Reason.NO_SUDI, "the device sent no SUDI certificate")
    try:
        chain = x509.load_pem_x509_certificates(_decode(certificate_b64, "SUDI certificate"))
    except ValueError:
        raise SudiError(Reason.NO_SUDI, "the SUDI certificate is not a PEM certificate") from None
    leaf = chain[0]
    _chain(leaf, chain[1:], anchors, now)
    cert_pid, cert_serial = subject_identity(leaf)
    allowed = set(serials)
    if cert_serial not in allowed:
        raise SudiError(Reason.SERIAL, f"the certificate names serial {cert_serial or 'none'}, not one of "
                        f"{', '.join(sorted(allowed))}")
    if pid and cert_pid != pid:
        raise SudiError(Reason.PID, f"the certificate names PID {cert_pid or 'none'}, the declaration {pid}")
    method, digest = encryption.strip().upper(), hashing.strip().upper()
    if method not in ENCRYPTION_METHODS or digest not in _HASHES:
        raise SudiError(Reason.METHOD, f"the device used {encryption}/{hashing}; offered {','.join(ENCRYPTION_METHODS)} "
                        f"with {','.join(HASH_METHODS)}")
    signature = _decode(signature_b64, "challenge response")
    key = leaf.public_key()
    try:
        if method == "RSA" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, challenge.encode(), padding.PKCS1v15(), _HASHES[digest]())
        elif method == "ECDSA" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, challenge.encode(), ec.ECDSA(_HASHES[digest]()))
        else:
            raise SudiError(Reason.METHOD, f"the certificate's key is not an {method} key")
    except InvalidSignature:
        raise SudiError(Reason.SIGNATURE, "the signature does not verify over the challenge that was sent "
                        "with the certificate's key") from None
    return Proven(cert_serial, clean_text(cert_pid, 64))
