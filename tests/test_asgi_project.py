"""Hosted apps from rtserve.yaml (`asgi:` and `wsgi:` routes, checked like other references)
and from `rtserve run module:asgi_app` (an ASGI app served whole, its lifespan failure an
exit naming it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from rtserve.cli.main import main
from rtserve.config.loader import ConfigErrors
from rtserve.config.project import build_app, load_project
from rtserve.testing import ThreadedServer
from tests.support.net import free_port
from tests.support.project_run import ROOT

MODULE = """\
async def api(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    body = f"asgi {scope['root_path']} {scope['path']}".encode()
    await send({"type": "http.response.body", "body": body})


def legacy(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"wsgi {environ['SCRIPT_NAME']} {environ['PATH_INFO']}".encode()]


async def broken_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is down"})
"""


def project(tmp_path: Path, routes: str) -> Path:
    (tmp_path / "hosted_apps.py").write_text(MODULE)
    (tmp_path / "rtserve.yaml").write_text("routes:\n" + textwrap.indent(routes, "  "))
    return tmp_path


def load_errors(folder: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_project(folder / "rtserve.yaml")
    return [str(issue) for issue in caught.value.issues]


def test_asgi_and_wsgi_routes_serve_beside_rtserve_routes(tmp_path: Path) -> None:
    folder = project(
        tmp_path,
        "- {path: /api, asgi: hosted_apps:api}\n"
        "- {path: /legacy, wsgi: hosted_apps:legacy, threads: 2}\n",
    )
    config, folder = load_project(folder)
    assert [r.kind for r in config.routes] == ["asgi", "wsgi"]
    app = build_app(config, folder)
    with ThreadedServer(app, access_log=False) as server, httpx.Client(base_url=server.url) as c:
        assert c.get("/api/x/y").text == "asgi /api /api/x/y"
        assert c.post("/legacy/form").text == "wsgi /legacy /form"
        assert c.get("/elsewhere").status_code == 404


def test_rtserve_routes_names_the_hosted_app(tmp_path: Path) -> None:
    folder = project(tmp_path, "- {path: /api, asgi: hosted_apps:api}\n")
    result = CliRunner().invoke(main, ["routes", str(folder)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "/api/{rest:path}" in result.output
    assert "hosted_apps.api (" in result.output and "hosted_apps.py:1)" in result.output


def test_a_wrong_reference_is_named_where_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = project(tmp_path, "- path: /api\n  asgi: hosted_apps:apy\n")
    assert load_errors(folder) == [
        "rtserve.yaml:3:11: routes[0].asgi: 'hosted_apps' has no 'apy' — did you mean 'api'?"
    ]


def test_the_kind_of_app_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    folder = project(
        tmp_path,
        "- {path: /a, asgi: hosted_apps:legacy}\n- {path: /w, wsgi: hosted_apps:api}\n",
    )
    problems = load_errors(folder)
    assert problems[0].startswith("rtserve.yaml:2:22: routes[0].asgi: 'hosted_apps:legacy' is not")
    assert problems[0].endswith("(a WSGI app? use wsgi:)")
    assert problems[1] == (
        "rtserve.yaml:3:22: routes[1].wsgi: 'hosted_apps:api' is an ASGI app: use asgi:"
    )


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("- {path: /a, asgi: hosted_apps:api, handler: hosted_apps:api}", "exactly one of"),
        ("- {path: /a, asgi: hosted_apps:api, threads: 3}", "threads are for wsgi routes"),
        ("- {path: /a, wsgi: hosted_apps:legacy, threads: 0}", "at least 1"),
        ("- {path: '/a/{x}', asgi: hosted_apps:api}", "takes no {parameters}"),
        (
            "- {path: /a, asgi: hosted_apps:api}\n- {path: /a, wsgi: hosted_apps:legacy}",
            "conflicts",
        ),
    ],
)
def test_route_mistakes(tmp_path: Path, routes: str, message: str) -> None:
    problems = load_errors(project(tmp_path, routes + "\n"))
    assert any(message in p for p in problems), problems


def test_rtserve_run_serves_an_asgi_target_whole(tmp_path: Path) -> None:
    project(tmp_path, "[]\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtserve.cli.main", "run", "hosted_apps:api", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # bounded: the server logs where it listens, or exits
            if "listening on" in line:
                break
        assert httpx.get(f"http://127.0.0.1:{port}/any/path").text == "asgi  /any/path"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_failed_lifespan_startup_stops_rtserve_run_naming_it(tmp_path: Path) -> None:
    project(tmp_path, "[]\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rtserve.cli.main",
            "run",
            "hosted_apps:broken_startup",
            "--port",
            "0",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "the database is down" in done.stderr + done.stdout
    assert "broken_startup" in done.stderr + done.stdout
