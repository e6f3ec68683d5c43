"""The webhook's certificate, made without an openssl binary: a CA-signed serving certificate
for the host the API server calls, which a TLS client that trusts only that CA accepts."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from circuitgate_operator.certificates import make_certificate


def handshake(certfile: Path, keyfile: Path, cafile: Path, host: str) -> None:
    """A whole TLS handshake in memory: the server presents the certificate, the client
    checks it against the CA and the host name."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client = ssl.create_default_context(cafile=str(cafile))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(to_client, from_client, server_hostname=host)
    tls_server = server.wrap_bio(to_server, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", tls_client), ("server", tls_server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not complete")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "circuitgate-webhook.circuitgate.svc"])
def test_the_serving_certificate_is_trusted_through_its_ca(tmp_path: Path, host: str) -> None:
    certfile, keyfile, cafile = make_certificate(tmp_path / "certs", host)
    handshake(certfile, keyfile, cafile, host)
    serving = x509.load_pem_x509_certificate(certfile.read_bytes())
    ca = x509.load_pem_x509_certificate(cafile.read_bytes())
    serving.verify_directly_issued_by(ca)
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if host.endswith(".svc"):
        assert names.get_values_for_type(x509.DNSName) == [host]
    else:
        assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host)]
    assert serving.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert keyfile.stat().st_mode & 0o077 == 0  # the key is for the operator alone
    assert not list((tmp_path / "certs").glob("ca.key"))


def test_a_client_that_trusts_another_ca_refuses_it(tmp_path: Path) -> None:
    certfile, keyfile, _ = make_certificate(tmp_path / "a", "127.0.0.1")
    _, _, other_ca = make_certificate(tmp_path / "b", "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(certfile, keyfile, other_ca, "127.0.0.1")
