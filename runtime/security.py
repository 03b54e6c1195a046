"""Who may talk to whom: a development PKI for (mutual) TLS on the device -> server gRPC hop,
gRPC credentials built from it, and bearer-token (API key) authentication for the HTTP APIs.

The threat model: the link between device and server is hostile (anyone may listen or connect),
so that hop is TLS, and with a client CA configured the server admits only devices holding a
certificate that CA signed (mutual TLS). The HTTP APIs (device front, server ``/v2``) take API keys
as ``Authorization: Bearer <key>``; health probes stay open so orchestrators can check liveness
without secrets. Keys and private keys are read from files or environment variables and never
logged.
"""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "server", "semlink-server")
EXEMPT_PREFIXES = ("/v2/health",)  # liveness and readiness probes carry no secret


# --- development PKI ------------------------------------------------------------------------


def make_dev_pki(
    out: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365
) -> dict[str, Path]:
    """Writes a development CA, a server certificate for ``hosts`` and a client (device)
    certificate, all signed by the CA, as PEM files in ``out``. Private keys are mode 0600.

    Returns the paths: ``ca``, ``server_cert``, ``server_key``, ``client_cert``, ``client_key``.
    For development and tests only: a production CA keeps its key offline.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    valid = (dt.datetime.now(dt.UTC), days)
    issuer = "semlink dev CA"
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _dev_cert(issuer, ca_key, issuer, ca_key, valid, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _dev_cert(
        "semlink-server",
        server_key,
        issuer,
        ca_key,
        valid,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=[_san(h) for h in hosts],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _dev_cert(
        "semlink-device", client_key, issuer, ca_key, valid, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    paths = {
        "ca": out / "ca.pem",
        "server_cert": out / "server.pem",
        "server_key": out / "server-key.pem",
        "client_cert": out / "device.pem",
        "client_key": out / "device-key.pem",
    }
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["server_cert"].write_bytes(server.public_bytes(pem))
    paths["client_cert"].write_bytes(client.public_bytes(pem))
    _write_key(paths["server_key"], server_key)
    _write_key(paths["client_key"], client_key)
    return paths


def _dev_name(cn: str):  # type: ignore[no-untyped-def]
    """An X.509 name with this common name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "semlink dev"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _dev_cert(subject: str, key, issuer: str, issuer_key, valid, *, ca=False, usage=None, sans=()):  # type: ignore[no-untyped-def]
    """A certificate for ``subject`` signed by ``issuer_key``, valid from ``valid[0]`` - 5 min
    for ``valid[1]`` days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now, days = valid
    b = (
        x509.CertificateBuilder()
        .subject_name(_dev_name(subject))
        .issuer_name(_dev_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _san(host: str):  # type: ignore[no-untyped-def]
    """A subject alternative name: an IP address or a DNS name."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key) -> None:  # type: ignore[no-untyped-def]
    """Writes a private key as unencrypted PKCS#8 PEM, readable by its owner only."""
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# --- gRPC credentials -----------------------------------------------------------------------


def read_secret_file(path: Path, what: str) -> bytes:
    """The bytes of a PEM file; raises ``FileNotFoundError`` naming ``what`` and the fix."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist; `semlink certs --out DIR` makes a development set"
        )
    return path.read_bytes()


def server_credentials(cert: Path, key: Path, client_ca: Path | None):  # type: ignore[no-untyped-def]
    """TLS for the server's gRPC port; with ``client_ca``, clients must present a certificate it
    signed (mutual TLS)."""
    import grpc

    key_pem, cert_pem = read_secret_file(key, "TLS key"), read_secret_file(cert, "TLS certificate")
    check_key_pair(cert_pem, key_pem, cert, key)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=read_secret_file(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def check_key_pair(cert_pem: bytes, key_pem: bytes, cert: Path, key: Path) -> None:
    """Raises ``ValueError`` naming the files unless ``cert_pem`` is a PEM certificate and
    ``key_pem`` the PEM private key of it (gRPC would only say it failed to bind)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ValueError(f"TLS certificate {cert} is not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"TLS key {key} is not an unencrypted PEM private key (`semlink certs` writes one)"
        ) from None
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if private.public_key().public_bytes(*fmt) != certificate.public_key().public_bytes(*fmt):
        raise ValueError(f"TLS key {key} is not the key of certificate {cert}: pass the pair")


def channel_credentials(ca: Path, cert: Path | None, key: Path | None):  # type: ignore[no-untyped-def]
    """TLS for the device's channel: trust ``ca``; present ``cert``/``key`` for mutual TLS."""
    import grpc

    if (cert is None) != (key is None):
        raise ValueError(
            "a client certificate needs its key and a key its certificate: set both or neither"
        )
    if cert is not None and key is not None:
        check_key_pair(
            read_secret_file(cert, "TLS certificate"), read_secret_file(key, "TLS key"), cert, key
        )
    return grpc.ssl_channel_credentials(
        root_certificates=read_secret_file(ca, "CA certificate"),
        private_key=read_secret_file(key, "TLS key") if key else None,
        certificate_chain=read_secret_file(cert, "TLS certificate") if cert else None,
    )


# --- API keys on HTTP -----------------------------------------------------------------------


BOM = "\ufeff"  # the UTF-8 byte-order mark some editors (Notepad) put at the start of a file


def load_api_keys(inline: str | None, path: Path | None) -> list[str]:
    """API keys from a comma-separated value (an environment variable) and/or a file of one key
    per line (UTF-8, a leading byte-order mark ignored; ``#`` comments allowed, indented or not;
    blank lines ignored). Keys shorter than 16 characters, holding whitespace or anything but
    printable ASCII (what an HTTP header carries as is) are refused, naming the line."""
    keys = [k.strip() for k in (inline or "").removeprefix(BOM).split(",") if k.strip()]
    for key in keys:
        _check_key(key, "the API keys value (SEMLINK_*_API_KEYS)")
    if path is not None:
        try:
            text = read_secret_file(path, "API key file").decode()
        except UnicodeDecodeError:
            raise ValueError(f"API key file {path} is not UTF-8 text") from None
        # the mark is stripped before the lines are parsed, so a first-line comment stays one
        for number, line in enumerate(text.removeprefix(BOM).splitlines(), 1):
            key = line.strip()
            if key and not key.startswith("#"):
                keys.append(_check_key(key, f"{path}:{number}"))
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ValueError(
            f"{len(short)} API key(s) shorter than 16 characters; use long random keys (e.g. `openssl rand -hex 24`)"
        )
    return keys


def authorised(header: str, keys: list[bytes]) -> bool:
    """Whether an ``Authorization`` header value carries one of ``keys``: ``Bearer <key>``, or
    HTTP Basic with the key as the password. Compares in constant time."""
    scheme, _, token = header.partition(" ")
    given = token.encode()
    if scheme.lower() == "basic":  # user:password, the key is the password
        try:
            given = base64.b64decode(token, validate=True).partition(b":")[2]
        except ValueError:
            given = b""
    return scheme.lower() in ("bearer", "basic") and any(
        hmac.compare_digest(given, k) for k in keys
    )


def _check_key(key: str, where: str) -> str:
    """``key`` if it is printable ASCII without whitespace; else ``ValueError`` saying where."""
    if any(c.isspace() for c in key):
        raise ValueError(
            f"{where}: an API key holds whitespace; one key per line, comments on lines of their own"
        )
    if not (key.isascii() and key.isprintable()):
        raise ValueError(
            f"{where}: an API key holds a character that is not printable ASCII (a client could "
            "not send it in a header); use letters, digits and punctuation, e.g. "
            "`openssl rand -hex 24`"
        )
    return key


def install_api_keys(app, keys: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Requires one of the keys on every route but the health probes: ``Authorization: Bearer
    <key>`` (API clients), or HTTP Basic with the key as the password (a browser: it asks once
    and sends it with the page's own requests, so the dashboard works with keys on). Answers 401
    with a JSON ``error`` and both challenges otherwise. Compares in constant time."""
    from fastapi.responses import JSONResponse

    if not keys:
        return
    encoded = [k.encode() for k in keys]
    app.state.api_keys = encoded  # WebSocket routes check them themselves (no HTTP middleware)

    @app.middleware("http")
    async def require_key(request, call_next: Callable[..., Awaitable]):  # type: ignore[no-untyped-def]
        """401 unless the request carries one of the keys (health endpoints are exempt)."""
        if request.url.path.startswith(EXEMPT_PREFIXES):
            return await call_next(request)
        if authorised(request.headers.get("authorization", ""), encoded):
            return await call_next(request)
        return JSONResponse(
            {
                "error": "missing or invalid API key: send the header 'Authorization: Bearer "
                "<key>' (a browser: any user name, the key as password)"
            },
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer, Basic realm="semlink", charset="UTF-8"'},
        )
