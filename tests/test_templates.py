"""The project templates and `rtserve new`: each template scaffolds, loads, builds and passes
its own tests in the new folder; `rtserve new` refuses what it should; the wheel carries the
templates and scaffolds from an installed copy."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from rtserve.cli.loader import load_app
from rtserve.cli.main import main
from rtserve.cli.new_cmd import NEEDS, available_templates, describe, templates_root
from rtserve.config.project import build_app, load_project
from rtserve.testing import ThreadedServer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = ROOT / "templates"
TEMPLATES = ["chat", "dashboard", "fastapi", "minimal", "notifications"]
WITH_CHANNELS = {"chat", "dashboard", "fastapi", "notifications"}
GENERATED = {"__pycache__", ".pytest_cache"}


@pytest.fixture
def project_imports() -> Iterator[None]:
    """Forget the modules projects import (their names, `app` or `handlers`, repeat from one
    project to the next) and the folders they put on sys.path."""
    path = list(sys.path)
    before = set(sys.modules)
    yield
    folders = [Path(p) for p in sys.path if p not in path] + [TEMPLATES_DIR]
    sys.path[:] = path
    for name in set(sys.modules) - before:
        file = Path(getattr(sys.modules[name], "__file__", None) or "/").resolve()
        if any(file.is_relative_to(folder) for folder in folders):
            del sys.modules[name]


def new(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["new", *map(str, args)])


def files(folder: Path) -> set[str]:
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not GENERATED & set(p.relative_to(folder).parts)
    }


def test_templates_are_found_in_the_checkout() -> None:
    assert templates_root() == TEMPLATES_DIR
    assert list(available_templates(TEMPLATES_DIR)) == TEMPLATES


def test_list() -> None:
    result = new("--list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == TEMPLATES
    for line, name in zip(lines, TEMPLATES, strict=True):
        description = describe(TEMPLATES_DIR / name)
        assert description and not description.startswith("#")
        assert line.endswith(description)


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_project_loads_and_builds(template: str, tmp_path: Path, project_imports: None) -> None:
    target = tmp_path / "my project"
    result = new(template, target)
    assert result.exit_code == 0, result.output
    assert "cd '" in result.output and "rtserve run" in result.output and "pytest" in result.output
    assert files(target) == files(TEMPLATES_DIR / template)
    assert not any(GENERATED & set(p.parts) for p in target.rglob("*"))
    mismatch = filecmp.dircmp(target, TEMPLATES_DIR / template, ignore=list(GENERATED))
    assert not mismatch.diff_files

    config, folder = load_project(target)
    app = build_app(config, folder)
    assert folder == target.resolve()
    assert "/" in {route.path for route in config.routes}
    if template in WITH_CHANNELS:
        assert config.channels.rules and app.url_for("rt:ws") == "/rt/ws"
    else:
        assert not config.channels.rules


@pytest.mark.parametrize("template", TEMPLATES)
def test_new_project_tests_pass(template: str, tmp_path: Path) -> None:
    target = tmp_path / template
    assert new(template, target).exit_code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.parametrize("template", TEMPLATES)
def test_pages_refuse_to_be_framed(template: str, tmp_path: Path, project_imports: None) -> None:
    """No other site may show a scaffold's page in a frame (clickjacking): its page routes
    send X-Frame-Options and a CSP frame-ancestors, at / and wherever else index.html is."""
    assert new(template, tmp_path / template).exit_code == 0
    app = build_app(*load_project(tmp_path / template))
    pages = ["/"] + (["/static/", "/static/index.html"] if template in WITH_CHANNELS else [])
    with ThreadedServer(app, access_log=False) as server, server.client() as http:
        for page in pages:
            answer = http.get(page)
            assert answer.status == 200 and "<html" in answer.text, page
            assert answer.headers.get("x-frame-options") == "DENY", page
            assert answer.headers.get("content-security-policy") == "frame-ancestors 'none'", page


def test_a_template_whose_package_is_missing_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(NEEDS, "fastapi", ("no_such_module_here", "pip install it"))
    listed = new("--list")
    line = next(line for line in listed.output.splitlines() if line.startswith("fastapi"))
    assert line.endswith("(needs no_such_module_here: pip install it)")
    result = new("fastapi", tmp_path / "api")
    assert result.exit_code == 1
    assert "the 'fastapi' template needs no_such_module_here: pip install it" in result.output
    assert not (tmp_path / "api").exists()


def test_new_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = new("chat", tmp_path)
    assert result.exit_code == 1
    assert "not empty" in result.output and "--force" in result.output
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]

    result = new("chat", tmp_path, "--force")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "rtserve.yaml").is_file()


def test_new_into_an_empty_dir(tmp_path: Path) -> None:
    result = new("minimal", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rtserve.yaml").is_file()


def test_new_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    result = new("minimal", tmp_path / "taken", "--force")
    assert result.exit_code == 1 and "not a directory" in result.output


def test_unknown_template(tmp_path: Path) -> None:
    result = new("chatt", tmp_path / "x")
    assert result.exit_code == 2
    assert "no template 'chatt'" in result.output
    assert "chat, dashboard, fastapi, minimal, notifications" in result.output
    assert not (tmp_path / "x").exists()


def test_template_and_dir_are_needed() -> None:
    result = new("chat")
    assert result.exit_code == 2 and "--list" in result.output


def test_minimal_app_py_is_the_project_app(project_imports: None) -> None:
    """The README's `rtserve run templates/minimal/app.py:app` serves the project."""
    app = load_app("templates/minimal/app.py:app", cwd=str(ROOT))
    with ThreadedServer(app) as server, server.client() as http:
        assert "rtserve is running" in http.get("/").text
        assert http.get("/hello/world").json() == {"hello": "world", "client": "127.0.0.1"}


def test_pages_load_rtserve_js_from_the_server() -> None:
    """The scaffolds use the server's /rtserve.js, not a copy of their own."""
    for name in sorted(WITH_CHANNELS):
        assert not (TEMPLATES_DIR / name / "static" / "rt.js").exists()
        assert (
            '<script src="/rtserve.js">' in (TEMPLATES_DIR / name / "static/index.html").read_text()
        )
    node = shutil.which("node")
    if node is not None:
        for script in [*TEMPLATES_DIR.glob("*/static/*.js"), ROOT / "rtserve/static/rtserve.js"]:
            check = subprocess.run([node, "--check", script], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr


def test_wheel_carries_the_templates(tmp_path: Path) -> None:
    """Build the wheel, import rtserve from it (unzipped) and scaffold from that copy."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("rtserve-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    assert "rtserve/_templates/chat/rtserve.yaml" in names
    assert "rtserve/static/rtserve.js" in names  # package data, served at /rtserve.js
    for template in TEMPLATES:
        expected = {f"rtserve/_templates/{template}/{f}" for f in files(TEMPLATES_DIR / template)}
        assert expected <= names, expected - names
    assert not [n for n in names if "__pycache__" in n or ".pytest_cache" in n]

    script = (
        "import sys, rtserve; from pathlib import Path\n"
        "assert Path(rtserve.__file__).is_relative_to(Path(sys.argv[1])), rtserve.__file__\n"
        "from rtserve.app.static import RTSERVE_JS\n"
        "assert RTSERVE_JS.is_file() and RTSERVE_JS.is_relative_to(Path(sys.argv[1]))\n"
        "from rtserve.cli.main import main\n"
        "main(['new', 'chat', sys.argv[2]])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    target = tmp_path / "from-wheel"
    run = subprocess.run(
        [sys.executable, "-c", script, str(site), str(target)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rtserve run" in run.stdout
    assert files(target) == files(TEMPLATES_DIR / "chat")


def test_chat_template_limits_publications_per_address(project_imports: None) -> None:
    """Anyone may take any name in the chat, and open many connections: one address's
    publications are limited over all of them (issue 16)."""
    config, _ = load_project(TEMPLATES_DIR / "chat")
    assert config.channels.publish_rate_per_ip > 0
