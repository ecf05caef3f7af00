"""TLS settings with a fresh development certificate (`rtserve dev-cert`'s), for HTTPS and
HTTP/2 tests; skips (fails in CI) without openssl."""

from __future__ import annotations

from pathlib import Path

from rtserve.cli.devcert_cmd import make_dev_certificate
from rtserve.server.settings import TLSSettings
from tests.conftest import require_tool


def dev_tls(directory: Path) -> TLSSettings:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1 written into `directory`."""
    require_tool("openssl")
    cert, key = directory / "cert.pem", directory / "key.pem"
    make_dev_certificate(cert, key)
    return TLSSettings(cert=str(cert), key=str(key))
