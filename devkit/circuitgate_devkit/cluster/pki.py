"""The test cluster's keys and certificates, made with the cryptography library (no openssl
binary): a CA, the leaves it signs, and the service-account signing pair."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ("Leaf", "write_pki")


@dataclass(frozen=True)
class Leaf:
    """A key and certificate the test CA signs, written as ``<name>.key`` and ``<name>.crt``.

    ``subject`` is ``{"O": ..., "CN": ...}`` in the order of the distinguished name; the
    API server reads a client's groups from O and its user name from CN.
    """

    name: str
    subject: Mapping[str, str]
    usage: Literal["client", "server"]
    ips: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()


_NAME_OIDS = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
              "CN": NameOID.COMMON_NAME}  # fmt: skip
_USAGE_OIDS = {"client": ExtendedKeyUsageOID.CLIENT_AUTH, "server": ExtendedKeyUsageOID.SERVER_AUTH}
_VALIDITY = datetime.timedelta(days=2)
_SKEW = datetime.timedelta(minutes=5)  # valid a little before now, for a clock that lags


def _name(subject: Mapping[str, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(_NAME_OIDS[key], value) for key, value in subject.items()])


def _key_usage(*, leaf: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=leaf, content_commitment=False, key_encipherment=leaf,
        data_encipherment=False, key_agreement=False, key_cert_sign=not leaf,
        crl_sign=not leaf, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    extensions: list[x509.ExtensionType],
) -> x509.Certificate:
    """``key``'s certificate for two days, signed by ``issuer`` (None: self-signed).

    Basic constraints and key usage are critical, as CAs mark them; the rest is not.
    """
    issuer_name, signer = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
    )
    for extension in extensions:
        critical = isinstance(extension, x509.BasicConstraints | x509.KeyUsage)
        builder = builder.add_extension(extension, critical)
    return builder.sign(signer, hashes.SHA256())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    # The forms openssl wrote: PKCS#1 ("RSA PRIVATE KEY") for the service-account key,
    # PKCS#8 for the EC keys. Only the owner may read them.
    form = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8
    )
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption())
    )


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def write_pki(pki: Path, leaves: Sequence[Leaf]) -> None:
    """The control plane's keys and certificates, into the folder ``pki``.

    ``ca.crt``/``ca.key``: a CA (``CN=circuitgate-test-ca``) that signs each leaf (a later
    leaf of the same name replaces an earlier one); all EC P-256 and valid for two days.
    ``sa.key``/``sa.pub``: the RSA 2048 pair that signs and checks service-account tokens.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name({"CN": "circuitgate-test-ca"})
    ca = _certificate(
        ca_name,
        ca_key,
        None,
        [x509.BasicConstraints(ca=True, path_length=None), _key_usage(leaf=False)],
    )
    _write_key(pki / "ca.key", ca_key)
    _write_certificate(pki / "ca.crt", ca)
    for leaf in {leaf.name: leaf for leaf in leaves}.values():
        key = ec.generate_private_key(ec.SECP256R1())
        extensions: list[x509.ExtensionType] = [
            x509.BasicConstraints(ca=False, path_length=None),
            _key_usage(leaf=True),
            x509.ExtendedKeyUsage([_USAGE_OIDS[leaf.usage]]),
        ]
        alt_names: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address(ip)) for ip in leaf.ips
        ]
        alt_names += [x509.DNSName(name) for name in leaf.dns]
        if alt_names:
            extensions.append(x509.SubjectAlternativeName(alt_names))
        certificate = _certificate(_name(leaf.subject), key, (ca_name, ca_key), extensions)
        _write_key(pki / f"{leaf.name}.key", key)
        _write_certificate(pki / f"{leaf.name}.crt", certificate)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
