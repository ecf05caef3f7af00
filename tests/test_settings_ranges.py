"""Settings given from Python are held to the ranges rtserve.yaml and `rtserve run` enforce."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from rtserve import App
from rtserve.schema import OptionError
from rtserve.server.listener import Server
from rtserve.server.settings import ServerSettings


@pytest.mark.parametrize("port", [-1, 65536, 99999])
def test_server_refuses_a_port_out_of_range(port: int) -> None:
    server = Server(App(), ServerSettings(port=port))
    with pytest.raises(OptionError, match=rf"port: expected a port \(0 to 65535\), got {port}"):
        asyncio.run(server.start())
    assert server.state is None


def test_app_run_with_a_port_out_of_range_exits_naming_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "from rtserve import App; App().run(port=99999)"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "port: expected a port (0 to 65535), got 99999" in done.stderr
    assert "listening" not in done.stderr
