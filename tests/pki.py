"""Throw-away PKI for tests: a CA, a broker server certificate and device certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Pki:
    dir: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def ca_file(self) -> Path:
        return self.dir / "ca.pem"

    def sign_csr(self, csr_pem: bytes, days: int = 365) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem)
        return self._issue(csr.subject, csr.public_key(), days, server=False)  # type: ignore[arg-type]

    def _issue(self, subject: x509.Name, pub: ec.EllipticCurvePublicKey, days: int, server: bool) -> bytes:
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def server_files(self) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(_name("broker"), key.public_key(), 30, server=True)
        kp, cp = self.dir / "server.key", self.dir / "server.crt"
        kp.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cp.write_bytes(cert)
        return cp, kp


def make_pki(dir: Path, cn: str = "Test Store CA") -> Pki:
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    pki = Pki(dir, key, cert)
    pki.ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki
