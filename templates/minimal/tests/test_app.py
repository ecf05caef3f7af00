"""The project, served: the page and the endpoint answer."""

from __future__ import annotations

from rtserve.testing import SyncClient


def test_page(rtserve_client: SyncClient) -> None:
    response = rtserve_client.get("/")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "rtserve is running" in response.text
    assert response.headers["x-frame-options"] == "DENY"  # no other site may frame it
    assert rtserve_client.get("/favicon.ico").status == 200


def test_hello(rtserve_client: SyncClient) -> None:
    response = rtserve_client.get("/hello/world")
    assert response.status == 200
    assert response.json() == {"hello": "world", "client": "127.0.0.1"}


def test_unknown_path(rtserve_client: SyncClient) -> None:
    assert rtserve_client.get("/nope").status == 404
