"""A lab PKI in Cisco's SUDI shape, so the whole SUDI loop runs without hardware.

Owns making a root CA, a SUDI sub-CA under it, and device certificates whose
subject ``serialNumber`` reads ``PID:<pid> SN:<serial>`` as Cisco's do, with RSA
or ECDSA keys; ``pnp-service sudi-lab DIR --serial SN`` writes them as PEM files.
Only for labs and tests: real devices carry Cisco's certificates, and the
listener trusts Cisco's published CAs (docs/security.md).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _key(kind: str) -> PrivateKey:
    return rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())


def _name(common: str, serial_number: str = "") -> x509.Name:
    parts = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pnp-service lab"),
             x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if serial_number:
        parts.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial_number))
    return x509.Name(parts)


def _certificate(subject: x509.Name, key: PrivateKey, issuer: x509.Name, issuer_key: PrivateKey, ca: bool,
                 days: int, now: dt.datetime) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=1 if ca else None), critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclasses.dataclass
class LabCa:
    """A root and a SUDI sub-CA; ``bundle()`` is what the listener gets as ``--sudi-ca``."""

    root: x509.Certificate
    root_key: PrivateKey
    sub: x509.Certificate
    sub_key: PrivateKey

    @classmethod
    def create(cls, name: str = "Lab", kind: str = "ec", now: dt.datetime | None = None) -> LabCa:
        now = now or dt.datetime.now(dt.timezone.utc)
        root_key, sub_key = _key(kind), _key(kind)
        root_name = _name(f"{name} Root CA")
        root = _certificate(root_name, root_key, root_name, root_key, True, 3650, now)
        sub = _certificate(_name(f"{name} SUDI CA"), sub_key, root_name, root_key, True, 3650, now)
        return cls(root, root_key, sub, sub_key)

    def bundle(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (self.root, self.sub))

    def device(self, serial: str, pid: str, kind: str = "ec", days: int = 365,
               now: dt.datetime | None = None) -> tuple[bytes, bytes]:
        """A device's SUDI certificate and key (PEM), subject serialNumber ``PID:<pid> SN:<serial>``."""
        now = now or dt.datetime.now(dt.timezone.utc)
        key = _key(kind)
        subject = _name(pid, f"PID:{pid} SN:{serial}")
        cert = _certificate(subject, key, self.sub.subject, self.sub_key, False, days, now)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def write_lab(directory: str, serials: list[tuple[str, str]], kind: str = "ec") -> list[str]:
    """Write ca.pem and, per (serial, pid), SERIAL.pem and SERIAL.key (mode 0600) into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    ca = LabCa.create(kind=kind)
    written = [os.path.join(directory, "ca.pem")]
    with open(written[0], "wb") as handle:
        handle.write(ca.bundle())
    for serial, pid in serials:
        cert, key = ca.device(serial, pid, kind)
        cert_path, key_path = os.path.join(directory, f"{serial}.pem"), os.path.join(directory, f"{serial}.key")
        with open(cert_path, "wb") as handle:
            handle.write(cert)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key)
        written += [cert_path, key_path]
    return written
