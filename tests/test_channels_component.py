"""Channels as a component the App mounts: configured first, then installed once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtserve import App, ChannelSettings, MemoryBroker, ServerSettings
from rtserve.config.project import build_app, load_project
from rtserve.realtime.component import Channels
from rtserve.realtime.hub import Hub
from rtserve.testing import Server, ThreadedServer

FACTORY = """
from rtserve import App, ChannelSettings, MemoryBroker, ServerSettings


def make():
    app = App(channels=ChannelSettings(api_key="factory-key-0123456789"))
    app.channel("chat:*", history=10)
    return app
"""


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A project whose factory sets channels in code and whose YAML sets their prefix."""
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "factory_h13.py").write_text(FACTORY)
    (folder / "rtserve.yaml").write_text("app: factory_h13:make\nchannels:\n  prefix: /live\n")
    path = list(sys.path)
    yield folder
    sys.path[:] = path
    sys.modules.pop("factory_h13", None)


def test_yaml_prefix_moves_the_endpoints_and_keeps_the_factorys_api_key(project: Path) -> None:
    config, folder = load_project(project)
    app = build_app(config, folder)
    with ThreadedServer(app) as server, server.client() as client:
        assert app.url_for("rt:ws") == "/live/ws"
        assert client.get("/rt/history?channel=chat:a").status == 404
        refused = client.post("/live/publish", json={"channel": "chat:a", "data": 1})
        assert refused.status == 401
        published = client.post(
            "/live/publish",
            json={"channel": "chat:a", "data": 1},
            headers={"Authorization": "Bearer factory-key-0123456789"},
        )
        assert published.status == 200, published.body
        history = client.get("/live/history?channel=chat:a")
        assert history.status == 200 and history.json()["publications"][0]["data"] == 1


def test_an_app_without_channels_builds_no_broker_and_serves_no_channel_endpoint() -> None:
    app = App()
    app.route("/")(lambda request: "hi")
    with ThreadedServer(app) as server, server.client() as client:
        assert app.component(Channels) is None
        assert not any(isinstance(value, Hub | MemoryBroker) for value in vars(app).values())
        assert client.get("/rt/history?channel=a").status == 404
        assert client.get("/rtserve.js").status == 404


def test_settings_set_before_serving_decide_the_endpoints() -> None:
    app = App()
    app.channel("news", history=5)
    # Configured after the first rule, as the project loader does: the endpoints follow.
    app.channels.configure(settings=ChannelSettings(prefix="/late"))
    with ThreadedServer(app) as server, server.client() as client:
        assert app.url_for("rt:history") == "/late/history"
        assert client.get("/late/history?channel=news").status == 200
        assert client.get("/rt/history?channel=news").status == 404


def test_once_serving_the_channels_are_fixed_but_take_new_rules() -> None:
    app = App()
    app.channel("news")
    with ThreadedServer(app) as server, server.client() as client:
        with pytest.raises(RuntimeError, match="installed"):
            app.channels.configure(settings=ChannelSettings(prefix="/other"))
        with pytest.raises(RuntimeError, match="already finalized"):
            app.mount(Channels())
        app.channel("late", history=3)
        assert client.get("/rt/history?channel=late").status == 200


def test_a_core_app_gets_channels_from_the_yaml(tmp_path: Path) -> None:
    folder = tmp_path / "core"
    folder.mkdir()
    (folder / "core_h13.py").write_text("from rtserve.app.app import App\n\napp = App()\n")
    (folder / "rtserve.yaml").write_text(
        "app: core_h13:app\nchannels:\n  rules:\n    - pattern: feed\n      history: 4\n"
    )
    path = list(sys.path)
    try:
        config, folder = load_project(folder)
        app = build_app(config, folder)
        with ThreadedServer(app) as server, server.client() as client:
            assert client.get("/rt/history?channel=feed").status == 200
    finally:
        sys.path[:] = path
        sys.modules.pop("core_h13", None)


def test_importing_rtserve_and_making_an_app_load_no_hub() -> None:
    code = (
        "import sys, rtserve\n"
        "app = rtserve.App()\n"
        "app.route('/')(lambda request: 'hi')\n"
        "assert 'rtserve.realtime.hub' not in sys.modules, 'hub loaded'\n"
        "app.channel('news')\n"
        "assert 'rtserve.realtime.hub' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_a_server_started_without_startup_finalizes_the_app() -> None:
    app = App()
    app.channel("news")

    async def main() -> None:
        server = Server(app, ServerSettings(host="127.0.0.1", port=0))
        await server.start()
        try:
            assert app.finalized and app.url_for("rt:ws") == "/rt/ws"
        finally:
            await server.shutdown(grace=0.5)

    asyncio.run(main())


BROKER_FACTORY = """
from rtserve import App, MemoryBroker

BROKER = MemoryBroker()


def make():
    app = App(broker=BROKER)
    app.channel("chat:*")
    return app
"""


@pytest.mark.parametrize(("yaml_broker", "kept"), [("", True), ("broker: memory\n", False)])
def test_the_yaml_broker_replaces_the_codes_only_when_set(
    tmp_path: Path, yaml_broker: str, kept: bool
) -> None:
    folder = tmp_path / "brokers"
    folder.mkdir()
    (folder / "broker_h13.py").write_text(BROKER_FACTORY)
    (folder / "rtserve.yaml").write_text("app: broker_h13:make\n" + yaml_broker)
    path = list(sys.path)
    try:
        config, folder = load_project(folder)
        app = build_app(config, folder)
        channels = app.component(Channels)
        assert channels is not None and isinstance(channels.broker, MemoryBroker)
        assert (channels.broker is sys.modules["broker_h13"].BROKER) is kept
    finally:
        sys.path[:] = path
        sys.modules.pop("broker_h13", None)
