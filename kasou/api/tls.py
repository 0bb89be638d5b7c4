"""TLS for the TCP listener: a given certificate and key, or a self-signed pair made once."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from kasou.errors import InvalidSpec


def check_pair(cert: Path, key: Path) -> tuple[Path, Path]:
    import ssl

    for field, path in (("tls_cert", cert), ("tls_key", key)):
        if not path.is_file():
            raise InvalidSpec(f"{field}: {path} does not exist", field=field)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as e:
        raise InvalidSpec(f"tls_cert: {cert} and {key} are not a usable pair: {e}",
                          field="tls_cert") from None
    return cert, key


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """Made on first use, kept: clients can pin it (`KASOU_CA=<dir>/cert.pem`)."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kasou {host}")])
    alt: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for h in {host, "127.0.0.1", "::1"}:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
