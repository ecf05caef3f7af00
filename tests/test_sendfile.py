"""File bodies use the kernel's sendfile under uvloop too, and stop cleanly when clients go."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rtserve.server.sendfile as sendfile_module
from rtserve import App
from rtserve.testing import ThreadedServer
from tests.rawhttp import RawClient, get

SIZE = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("files")
    (folder / "big.bin").write_bytes(os.urandom(SIZE))
    return folder


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    seen: list[int] = []
    real = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: Any, count: int) -> int:
        sent = real(out_fd, in_fd, offset, count)
        seen.append(sent)
        return sent

    monkeypatch.setattr(sendfile_module.os, "sendfile", counting)  # type: ignore[attr-defined]
    yield seen


def test_large_file_goes_through_sendfile(payload: Path, calls: list[int]) -> None:
    app = App()
    app.static("/files", payload)
    with ThreadedServer(app, access_log=False) as srv, srv.client() as c:
        r = c.get("/files/big.bin")
        assert r.status == 200 and r.body == (payload / "big.bin").read_bytes()
        assert sum(calls) == SIZE  # every byte went by sendfile
        r = c.get("/files/big.bin", headers={"Range": "bytes=1000-2000999"})
        assert r.status == 206 and r.body == (payload / "big.bin").read_bytes()[1000:2001000]


def test_client_leaving_mid_file_stops_the_send(payload: Path, calls: list[int]) -> None:
    app = App()
    app.static("/files", payload)
    with ThreadedServer(app, access_log=False) as srv:
        c = RawClient(srv.port)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.send(get("/files/big.bin"))
        assert c.sock.recv(1024).startswith(b"HTTP/1.1 200")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        c.close()  # reset
        with RawClient(srv.port) as other:  # the server is fine and serves others
            other.send(get("/files/missing"))
            assert other.response().status == 404
        assert srv.server is not None and srv.server.state is not None
        state = srv.server.state
        done = threading.Event()

        def check() -> None:
            if not state.tasks:
                done.set()

        for _ in range(200):  # the abandoned send winds down within a few poll slices
            srv.call(check)
            if done.wait(0.05):
                break
        assert done.is_set()
        assert sum(calls) < SIZE
