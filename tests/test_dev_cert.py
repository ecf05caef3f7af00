"""`rtserve dev-cert`, then `rtserve run --tls-cert --tls-key`: HTTP/2 with no other setting."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from click.testing import CliRunner

from rtserve.cli.main import main
from tests.conftest import require_tool
from tests.support.h2client import H2Client
from tests.support.project_run import ROOT
from tests.support.waiting import until

APP = """
from rtserve import App

app = App()


@app.route("/")
def hello(request):
    return "hello over " + request.http_version
"""


def test_dev_cert_then_run_serves_h2(tmp_path: Path) -> None:
    require_tool("openssl")
    runner = CliRunner()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = runner.invoke(main, ["dev-cert", "--cert", str(cert), "--key", str(key)])
    assert made.exit_code == 0, made.output
    assert "rtserve run --tls-cert" in made.output
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(main, ["dev-cert", "--cert", str(cert), "--key", str(key)])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(main, ["dev-cert", "--cert", str(cert), "--key", str(key), "--force"])
    assert forced.exit_code == 0, forced.output

    (tmp_path / "app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "rtserve", "run", "app.py:app", "--port", "0", "--no-reload"]
    proc = subprocess.Popen(
        [*argv, "--tls-cert", str(cert), "--tls-key", str(key)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    threading.Thread(target=read, daemon=True).start()
    try:

        def port() -> str | None:
            assert proc.poll() is None, "".join(lines)
            found = re.search(r"listening on https://127\.0\.0\.1:(\d+)", "".join(lines))
            return found.group(1) if found else None

        client = H2Client(int(until(port, 15, "the server to listen")))
        try:
            assert client.alpn == "h2"
            assert client.get("/").body == b"hello over 2"
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
