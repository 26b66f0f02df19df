"""TLS contexts for SIP over TLS, and a self-signed certificate for a first run.

TLS 1.2 is the floor (1.3 preferred: OpenSSL negotiates it whenever the peer can);
TLS 1.2 cipher suites are limited to forward-secret AEAD ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Sequence
from pathlib import Path

from gateway.config import DEFAULT_TLS_CIPHERS

# One definition of "strong": the setting's default (sip.tls_ciphers).
STRONG_CIPHERS = DEFAULT_TLS_CIPHERS

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(
    cert: Path, key: Path, *, min_version: str = "1.2", ciphers: str = STRONG_CIPHERS
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_ciphers(ciphers)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def client_context(
    *,
    verify: bool = True,
    cafile: Path | None = None,
    min_version: str = "1.2",
    ciphers: str = STRONG_CIPHERS,
) -> ssl.SSLContext:
    """Context for connections the gateway opens (to phones and trunks over TLS).

    ``verify=False`` exists for lab set-ups with self-signed peers; it is never the
    default.
    """
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.set_ciphers(ciphers)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ensure_self_signed(directory: Path, names: Sequence[str]) -> tuple[Path, Path]:
    """Create (once) a self-signed certificate for ``names`` in ``directory``.

    Used by ``make run`` when TLS is enabled and no certificate is configured. The key
    is written with mode 0600.
    """
    cert_path, key_path = directory / "sipgw-selfsigned.crt", directory / "sipgw-selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "sipgw")])
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
