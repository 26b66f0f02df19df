"""Throw-away self-signed certificates for TLS tests (SIP over TLS, HTTPS, WSS).

Uses the `cryptography` package when it is importable, else the `openssl` command line.
The certificate is its own CA (pass `cert` as the CA file to a client that verifies),
valid for localhost, 127.0.0.1 and ::1 plus any extra names given.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertPair:
    cert: Path  # PEM certificate (also the CA to trust)
    key: Path  # PEM private key, unencrypted

    @property
    def ca(self) -> Path:
        return self.cert


def make_self_signed(
    directory: Path,
    *,
    common_name: str = "localhost",
    dns_names: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1", "::1"),
    name: str = "test",
    days: int = 2,
) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    try:
        _with_cryptography(cert, key, common_name, dns_names, ips, days)
    except ImportError:
        _with_openssl(cert, key, common_name, dns_names, ips, days)
    key.chmod(0o600)
    return CertPair(cert=cert, key=key)


def _with_cryptography(
    cert: Path, key: Path, cn: str, dns: tuple[str, ...], ips: tuple[str, ...], days: int
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    alt = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _with_openssl(
    cert: Path, key: Path, cn: str, dns: tuple[str, ...], ips: tuple[str, ...], days: int
) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the 'cryptography' package nor the 'openssl' CLI is available")
    san = ",".join([f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips])
    # RSA rather than EC: every SIP stack in the tests (PJSIP, linphone, baresip) takes it.
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
            "-days", str(days), "-subj", f"/CN={cn}",
            "-addext", f"subjectAltName={san}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
