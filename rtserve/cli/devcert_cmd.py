"""`rtserve dev-cert`: a self-signed certificate for localhost, to try HTTPS and HTTP/2.

Made with the `openssl` command line (no Python dependency): browsers and curl accept it once
told to (`curl -k`, or trust the certificate); never use it in production.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click

from rtserve.errors import RtserveError

SUBJECT_ALT_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"


class CannotMakeCertificate(RtserveError):
    """`openssl` is missing, or refused to make the certificate."""


def make_dev_certificate(cert: Path, key: Path, days: int = 30) -> None:
    """Write a self-signed certificate (`cert`) and its unencrypted key (`key`), PEM, for
    localhost, 127.0.0.1 and ::1, valid `days` days."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CannotMakeCertificate("the openssl command is not installed")
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    command += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(days)]
    command += ["-subj", "/CN=localhost", "-addext", f"subjectAltName={SUBJECT_ALT_NAMES}"]
    proc = subprocess.run(command, capture_output=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise CannotMakeCertificate(proc.stderr.decode(errors="replace").strip())
    key.chmod(0o600)


@click.command("dev-cert", short_help="Make a self-signed certificate for localhost.")
@click.option("--cert", "cert", default="cert.pem", show_default=True, help="certificate file")
@click.option("--key", "key", default="key.pem", show_default=True, help="private key file")
@click.option("--days", type=click.IntRange(1, 825), default=30, show_default=True)
@click.option("--force", is_flag=True, help="overwrite existing files")
def dev_cert(cert: str, key: str, days: int, force: bool) -> None:
    """Write a self-signed certificate and key for localhost, 127.0.0.1 and ::1, for
    development: `rtserve run --tls-cert cert.pem --tls-key key.pem` then serves HTTPS with
    HTTP/2 (curl -k, or trust the certificate in the browser). Not for production."""
    cert_path, key_path = Path(cert), Path(key)
    for path in (cert_path, key_path):
        if path.exists() and not force:
            raise click.UsageError(f"{path} exists (--force overwrites it)")
    try:
        make_dev_certificate(cert_path, key_path, days)
    except CannotMakeCertificate as exc:
        raise click.ClickException(f"cannot make the certificate: {exc}") from None
    click.echo(f"wrote {cert_path} and {key_path} (self-signed, localhost, {days} days)")
    click.echo(f"serve with: rtserve run --tls-cert {cert_path} --tls-key {key_path}")
