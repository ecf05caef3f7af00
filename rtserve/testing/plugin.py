"""pytest plugin (auto-loaded): `rtserve_server` serves the test's `app` fixture.

Define an `app` fixture returning your App; `rtserve_server` yields a running ThreadedServer
and `rtserve_client` a SyncClient connected to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rtserve.testing import SyncClient, ThreadedServer


@pytest.fixture
def rtserve_server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer[Any]]:
    app = request.getfixturevalue("app")
    with ThreadedServer(app) as server:
        yield server


@pytest.fixture
def rtserve_client(rtserve_server: ThreadedServer[Any]) -> Iterator[SyncClient]:
    with rtserve_server.client() as client:
        yield client
