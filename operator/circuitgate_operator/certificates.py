"""The webhook's serving certificate and the CA the API server trusts it by, made with the
``cryptography`` library: kopf's own builder fails on OpenSSL 3 (oscrypto cannot read its
version), and the operator image has no openssl binary."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = (
    "make_certificate",
    "new_certificate",
    "serves_host",
    "subject_name",
    "write_certificate",
)

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


def new_certificate(host: str) -> dict[str, bytes]:
    """A CA and a serving certificate for host (an IP or a DNS name), as PEM under the names a
    ``kubernetes.io/tls`` Secret uses: ``tls.crt``, ``tls.key`` and ``ca.crt``. The CA's key
    is dropped: nothing else is ever signed with it."""
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
    return {
        "tls.crt": serving.public_bytes(serialization.Encoding.PEM),
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
    }


def serves_host(pems: Mapping[str, bytes], host: str, *, margin: datetime.timedelta) -> bool:
    """Whether ``pems`` (as `new_certificate` returns) is a serving certificate for host that
    stays valid for ``margin`` more: a shared one made for another host, or about to expire,
    is replaced rather than served."""
    try:
        serving = x509.load_pem_x509_certificate(pems["tls.crt"])
        x509.load_pem_x509_certificate(pems["ca.crt"])
        names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyError, ValueError, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    return subject_name(host) in names and serving.not_valid_after_utc - margin > now


def write_certificate(directory: Path, pems: Mapping[str, bytes]) -> tuple[Path, Path, Path]:
    """Write ``pems`` to directory; returns the certificate, key and CA paths."""
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile, cafile = directory / "tls.crt", directory / "tls.key", directory / "ca.crt"
    certfile.write_bytes(pems["tls.crt"])
    keyfile.touch(mode=0o600)
    keyfile.chmod(0o600)  # before the key is in it, whatever the file was
    keyfile.write_bytes(pems["tls.key"])
    cafile.write_bytes(pems["ca.crt"])
    return certfile, keyfile, cafile


def make_certificate(directory: Path, host: str) -> tuple[Path, Path, Path]:
    """A new certificate for host (`new_certificate`), written to directory."""
    return write_certificate(directory, new_certificate(host))
