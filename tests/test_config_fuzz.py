"""The project config loader under random input: random YAML documents, random text, and random
mutations of config.example.yaml. `load_mapping`/`load_project` either succeed or raise
ConfigErrors whose every issue names the file and (for anything read from the text) a line —
never another exception, never a hang."""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtserve import imports
from rtserve.config import ConfigErrors, load_mapping
from rtserve.config.project import ProjectConfig, load_project
from rtserve.server.settings import settings_keys

EXAMPLE = (Path(__file__).resolve().parent.parent / "config.example.yaml").read_text()
ENV = {"PORT": "8080", "SECRET": "s" * 32}
FUZZ = settings(
    max_examples=50,
    deadline=5000,  # one document taking 5 s is a hang
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


async def hosted_asgi(scope: Any, receive: Any, send: Any) -> None:
    """What an `asgi:` reference must name: an async (scope, receive, send)."""


@pytest.fixture(autouse=True)
def no_real_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A fuzzed `module:name` must never import a real module: only a stub `app` exists."""
    stub = types.ModuleType("app")
    stub.__getattr__ = lambda attr: lambda *a, **k: None  # type: ignore[method-assign]
    stub.api = hosted_asgi  # type: ignore[attr-defined]  # the example's `asgi: app:api`

    def import_module(name: str, package: str | None = None) -> types.ModuleType:
        if name == "app":
            return stub
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(imports, "importlib", types.SimpleNamespace(import_module=import_module))
    yield


def check(text: str) -> ProjectConfig | None:
    """Load `text`; the only failure allowed is ConfigErrors with placed issues."""
    start = time.thread_time()  # CPU time: a hang shows, other work on the machine does not
    try:
        return load_mapping(text, ProjectConfig, env=ENV, filename="rtserve.yaml")
    except ConfigErrors as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file == "rtserve.yaml"
            if issue.line is None:  # only a problem of the text as a whole has no place
                assert issue.message == "invalid YAML: collections nested too deeply", str(issue)
            else:
                assert issue.line >= 1 and str(issue).startswith(f"rtserve.yaml:{issue.line}")
        return None
    finally:
        assert time.thread_time() - start < 5  # a hang, not a slow machine


# Keys the schema knows (so documents get past the unknown-key check and into conversion).
SERVER_KEYS = [k.rsplit(".", 1)[-1] for k in settings_keys(type(ProjectConfig().server))]
TOP_KEYS = ["app", "server", "routes", "channels", "broker", "admin", "logging", "name"]
KEYS = st.one_of(st.sampled_from(TOP_KEYS + SERVER_KEYS), st.text(max_size=8))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["10s", "1MiB", "-1", "0", "${PORT}", "${NOPE}", "$${X}", "app:x", "1e999"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
DOCUMENTS = st.dictionaries(
    st.sampled_from(TOP_KEYS),
    st.one_of(VALUES, st.dictionaries(st.sampled_from([*SERVER_KEYS, "limits"]), VALUES)),
    max_size=5,
)


@FUZZ
@given(DOCUMENTS)
def test_random_documents(document: dict[str, Any]) -> None:
    check(yaml.safe_dump(document, allow_unicode=True))


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    check(text)


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    lines = EXAMPLE.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["replace", "delete", "duplicate", "indent", "splice"]))
        if kind == "replace":
            lines[i] = draw(st.text(max_size=40)) + "\n"
        elif kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "indent":
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip()
        else:
            line = lines[i]
            at = draw(st.integers(0, len(line)))
            cut = draw(st.integers(0, 8))
            piece = draw(st.sampled_from([":", "-", "[", "{", "&a", "*a", "!!python/object", "'"]))
            lines[i] = line[:at] + (piece if draw(st.booleans()) else draw(st.text(max_size=6)))
            lines[i] += line[at + cut :]
        if not lines:
            break
    return "".join(lines)


@FUZZ
@given(mutated_example())
def test_mutations_of_the_example(text: str) -> None:
    check(text)


def test_the_unmutated_example_loads() -> None:
    assert check(EXAMPLE) is not None


@settings(max_examples=40, deadline=5000, suppress_health_check=list(HealthCheck))
@given(mutated_example())
def test_load_project_on_mutated_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    folder = tmp_path_factory.mktemp("proj")
    (folder / "rtserve.yaml").write_text(text)
    try:
        load_project(folder, env=ENV)
    except ConfigErrors as exc:
        assert exc.issues and all(issue.file.endswith("rtserve.yaml") for issue in exc.issues)


@pytest.mark.parametrize(
    "text",
    [
        # A billion laughs: aliases are shared, never expanded into copies.
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + "server: {host: *i}\n",
        "server: &s {limits: *s}\n",
        "server:\n  port: " + "9" * 5000 + "\n",
        "server: " + "[" * 1200 + "]" * 1200 + "\n",  # past the recursion limit
        "server: {host: " + "[" * 300 + "]" * 300 + "}\n",
        "routes: [null, ~, {path: /}]\n",
        "server: {port: !!python/object/apply:os.system [echo hi]}\n",
        "\ufeffserver: {port: 1}\n",
        "server:\n\tport: 1\n",
        "%YAML 9.9\n---\nserver: {}\n",
        "--- a\n--- b\n",
        "server: {port: 80}\nserver: {port: 81}\n",
    ],
    ids=[
        "alias-bomb",
        "self-alias",
        "huge-int",
        "deep-nesting",
        "python-tag",
        "bom",
        "tab",
        "yaml-version",
        "two-documents",
        "duplicate-section",
        "deep-in-a-field",
        "null-routes",
    ],
)
def test_hostile_documents(text: str) -> None:
    check(text)
