"""The webhook's serving certificate and the CA the API server trusts it by, made with the
``cryptography`` library: kopf's own builder fails on OpenSSL 3 (oscrypto cannot read its
version), and the operator image has no openssl binary."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ("make_certificate", "subject_name")

_VALID = datetime.timedelta(days=365)


def subject_name(host: str) -> x509.GeneralName:
    """The SAN for host: an IP address, or a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # some clock skew
        .not_valid_after(now + _VALID)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def _usage(*, sign_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certificates,
        content_commitment=False,
        key_encipherment=not sign_certificates,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certificates,
        crl_sign=sign_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_certificate(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A CA and a serving certificate for host (an IP or a DNS name), written to directory as
    ``tls.crt``, ``tls.key`` and ``ca.crt``; returns those paths. The CA's key is never
    written: nothing else is ever signed with it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(
        "circuitgate-webhook-ca",
        ca_key,
        None,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (_usage(sign_certificates=True), True),
        ],
    )
    key = ec.generate_private_key(ec.SECP256R1())
    serving = _certificate(
        host,
        key,
        ca.subject,
        ca_key,
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (_usage(sign_certificates=False), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
            (x509.SubjectAlternativeName([subject_name(host)]), False),
        ],
    )
    certfile, keyfile, cafile = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    certfile.write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    keyfile.touch(mode=0o600)
    keyfile.chmod(0o600)  # before the key is in it, whatever the file was
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cafile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return certfile, keyfile, cafile
