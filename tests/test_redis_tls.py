"""TLS towards Redis: the server's host name is checked, explicitly (issue 10, item 7).

A real ``redis-server`` with TLS (Debian's build links OpenSSL), certificates made
here with ``cryptography``: one CA, a server certificate for ``localhost`` and one
for another host name, each served by its own Redis.

Aspects: a certificate for the host connected to is accepted; a certificate from
the trusted CA but for the wrong host name is refused (``BackendUnavailable``
naming the mismatch), whatever redis-py's default of the day; ``insecureSkipVerify``
is the one, explicit, way to skip both checks.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from podcache.backends import redis_connection
from podcache.backends.redis import RedisBackend
from podcache.config import Config, RedisSettings
from podcache.errors import BackendUnavailable
from tests.availability import unavailable
from tests.redis_server import RedisServer, RedisUnavailable, free_port

pytestmark = pytest.mark.redis


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _issue(directory: Path, name: str, *, ca: tuple[x509.Certificate, Any] | None,
           sans: list[x509.GeneralName]) -> tuple[x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = ca if ca is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer_cert.subject if issuer_cert is not None else _name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    certificate = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(directory / f"{name}.key", key)
    return certificate, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    ca = _issue(directory, "ca", ca=None, sans=[])
    _issue(directory, "localhost", ca=ca,
           sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    _issue(directory, "elsewhere", ca=ca, sans=[x509.DNSName("redis.elsewhere.example")])
    return directory


def _tls_redis(certificates: Path, name: str) -> tuple[RedisServer, int]:
    tls_port = free_port()
    try:
        server = RedisServer(extra_args=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(certificates / f"{name}.crt"),
            "--tls-key-file", str(certificates / f"{name}.key"),
            "--tls-ca-cert-file", str(certificates / "ca.crt"),
            "--tls-auth-clients", "no",
        ))
        server.start()
    except RedisUnavailable as exc:
        unavailable("Redis", f"redis-server with TLS: {exc}")
    return server, tls_port


@pytest.fixture(scope="module")
def right_host(certificates: Path) -> Iterator[int]:
    server, port = _tls_redis(certificates, "localhost")
    yield port
    server.close()


@pytest.fixture(scope="module")
def wrong_host(certificates: Path) -> Iterator[int]:
    server, port = _tls_redis(certificates, "elsewhere")
    yield port
    server.close()


def _settings(port: int, certificates: Path, **tls: Any) -> RedisSettings:
    settings = Config(type="redis", config={
        "url": f"rediss://localhost:{port}/0", "keyPrefix": "tls:",
        "tls": {"caFile": str(certificates / "ca.crt"), **tls},
        "timeouts": {"connect": "2s", "operation": "2s"},
    }).settings
    assert isinstance(settings, RedisSettings)
    return settings


def test_host_name_checking_is_set_explicitly(certificates: Path) -> None:
    # Not left to redis-py's default, which was off before 6.0 (and flipped in between).
    kwargs = redis_connection.tls_kwargs(_settings(1, certificates))
    assert kwargs["ssl_check_hostname"] is True
    skip = redis_connection.tls_kwargs(_settings(1, certificates, insecureSkipVerify=True))
    assert skip["ssl_check_hostname"] is False


async def test_a_certificate_for_the_host_is_accepted(certificates: Path, right_host: int) -> None:
    backend = RedisBackend(_settings(right_host, certificates))
    try:
        await backend.set("k", b"v", 30)
        assert await backend.get("k") == b"v"
    finally:
        await backend.stop()


async def test_a_certificate_for_another_host_name_is_refused(
    certificates: Path, wrong_host: int,
) -> None:
    backend = RedisBackend(_settings(wrong_host, certificates))
    try:
        with pytest.raises(BackendUnavailable, match=r"(?i)hostname|match"):
            await backend.ping()
    finally:
        await backend.stop()


async def test_insecure_skip_verify_is_the_explicit_way_around(
    certificates: Path, wrong_host: int,
) -> None:
    backend = RedisBackend(_settings(wrong_host, certificates, insecureSkipVerify=True))
    try:
        await backend.ping()
    finally:
        await backend.stop()
