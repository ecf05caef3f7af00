"""rtserve.config: YAML (with ${VAR} and .env) onto settings dataclasses, every error at once."""

from __future__ import annotations

import contextlib
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtserve.config import (
    ConfigErrors,
    ConfigIssue,
    DotenvError,
    UnsetVariableError,
    load_dotenv,
    load_file,
    load_mapping,
    parse_duration,
    parse_size,
    schema_keys,
    substitute,
)
from rtserve.errors import ConfigError
from rtserve.server.settings import ServerSettings, settings_keys

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


# --- small schemas ----------------------------------------------------------------------------


@dataclass
class Part:
    handler: str = ""
    methods: list[str] = field(default_factory=lambda: ["GET"])


@dataclass
class Route:
    path: str
    handler: str
    name: str | None = None


@dataclass
class Channel:
    history: int = 0
    presence: bool = False
    mode: Literal["fanout", "queue"] = "fanout"


@dataclass
class Timing:
    idle: float = field(default=1.0, metadata={"duration": True})
    grace: float | None = field(default=None, metadata={"duration": True})
    ratio: float = 0.5


@dataclass
class Window:
    low: int = 1
    high: int = 2

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


@dataclass
class Project:
    name: str = "demo"
    server: Part = field(default_factory=Part)
    routes: list[Route] = field(default_factory=list)
    channels: dict[str, Channel] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    window: Window = field(default_factory=Window)
    level: Literal["debug", "info", "warning"] = "info"
    extra: dict[str, Any] = field(default_factory=dict)
    buffer: int = field(default=4096, metadata={"size": True})


def load(text: str, schema: type[Any] = Project, **options: Any) -> Any:
    options.setdefault("filename", "rtserve.yaml")
    options.setdefault("env", {})
    return load_mapping(textwrap.dedent(text), schema, **options)


def errors(text: str, schema: type[Any] = Project, **options: Any) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load(text, schema, **options)
    lines = str(caught.value).splitlines()
    assert lines == [str(issue) for issue in caught.value.issues]
    return lines


# --- ServerSettings -------------------------------------------------------------------------


def test_server_settings_with_nested_sections() -> None:
    settings = load(
        """\
        server:
          host: 0.0.0.0
          port: 9000
          backlog: 100
          trusted_proxies: [10.0.0.0/8]
          limits:
            max_body_size: 1MiB
            max_head_size: 32KiB
            max_headers: 50
          timeouts:
            keepalive: 5
            header: 2.5
          tls:
            cert: /etc/cert.pem
            key: /etc/key.pem
          websocket:
            max_message_size: 64KB
            slow_consumer: drop
            origins: ["*"]
            compression: off
        logging: {level: info}
        """,
        ServerSettings,
        section="server",
    )
    assert isinstance(settings, ServerSettings)
    assert settings.host == "0.0.0.0"
    assert settings.port == 9000
    assert settings.backlog == 100
    assert settings.trusted_proxies == ["10.0.0.0/8"]
    assert settings.limits.max_body_size == 1048576
    assert settings.limits.max_head_size == 32 * 1024
    assert settings.limits.max_headers == 50
    assert settings.limits.max_pipelined == 16  # absent: the default
    assert settings.timeouts.keepalive == 5.0 and isinstance(settings.timeouts.keepalive, float)
    assert settings.timeouts.header == 2.5
    assert settings.timeouts.graceful == 10.0
    assert settings.tls.cert == "/etc/cert.pem" and settings.tls.enabled
    assert settings.websocket.max_message_size == 64_000
    assert settings.websocket.slow_consumer == "drop"
    assert settings.websocket.origins == ["*"]
    assert settings.websocket.compression is False


def test_config_example_loads_to_the_defaults() -> None:
    assert load_file(EXAMPLE, ServerSettings, section="server", env={}) == ServerSettings()


def test_schema_keys_match_settings_keys() -> None:
    keys = schema_keys(ServerSettings)
    assert [key.key for key in keys] == settings_keys(ServerSettings)
    by_key = {key.key: key for key in keys}
    assert by_key["limits.max_body_size"].field.metadata["size"] is True
    assert by_key["port"].type is int


def test_empty_sources_give_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "rtserve.yaml"
    empty.write_text("")
    assert load_file(empty, ServerSettings, section="server") == ServerSettings()
    assert load_file(empty, Project) == Project()
    assert load("# only a comment\n", ServerSettings, section="server") == ServerSettings()
    assert load("routes: []\n", ServerSettings, section="server") == ServerSettings()
    assert load("server:\n", ServerSettings, section="server") == ServerSettings()
    assert load("server:\n  limits:\n", ServerSettings, section="server") == ServerSettings()


def test_host_is_a_string_or_a_list() -> None:
    one = load("server:\n  host: a\n", ServerSettings, section="server")
    assert one.host == "a" and one.hosts == ["a"]
    two = load("server:\n  host: [a, b]\n", ServerSettings, section="server")
    assert two.host == ["a", "b"] and two.hosts == ["a", "b"]
    assert errors("server:\n  host: {a: 1}\n", ServerSettings, section="server") == [
        "rtserve.yaml:2:9: server.host: expected a list or a string, got a mapping"
    ]
    assert errors("server:\n  host: [a, [b]]\n", ServerSettings, section="server") == [
        "rtserve.yaml:2:13: server.host[1]: expected a string, got a list"
    ]


# --- error reporting --------------------------------------------------------------------------


def test_unknown_key_message_format() -> None:
    text = """\
    # rtserve.yaml
    name: demo

    server:
        hander: main:app
    """
    assert errors(text) == [
        "rtserve.yaml:5:5: server.hander: unknown key 'hander' — did you mean 'handler'?"
    ]


def test_unknown_key_without_a_close_match_lists_the_keys() -> None:
    assert errors("server:\n  zzz: 1\n") == [
        "rtserve.yaml:2:3: server.zzz: unknown key 'zzz' (expected one of: handler, methods)"
    ]


def test_every_error_is_reported_at_once_in_file_order() -> None:
    text = """\
    server:
      prot: 8000
      limits:
        max_bdy_size: 1MiB
      websocket:
        ping_intervl: 5
    """
    lines = errors(text, ServerSettings, section="server")
    assert lines == [
        "rtserve.yaml:2:3: server.prot: unknown key 'prot' — did you mean 'port'?",
        "rtserve.yaml:4:5: server.limits.max_bdy_size: unknown key 'max_bdy_size' "
        "— did you mean 'max_body_size'?",
        "rtserve.yaml:6:5: server.websocket.ping_intervl: unknown key 'ping_intervl' "
        "— did you mean 'ping_interval'?",
    ]


def test_wrong_types() -> None:
    text = """\
    server:
      port: abc
      backlog: true
      debug: 1
      server_header: null
      limits:
        max_body_size: "1 potato"
        max_headers: 1.5
      timeouts:
        header: "ten"
      tls: yes
    """
    assert errors(text, ServerSettings, section="server") == [
        "rtserve.yaml:2:9: server.port: expected a port (0 to 65535), got 'abc'",
        "rtserve.yaml:3:12: server.backlog: expected an integer, got true",
        "rtserve.yaml:4:10: server.debug: expected true or false, got 1",
        "rtserve.yaml:5:18: server.server_header: expected a string, got null "
        "(write '' for an empty string)",
        "rtserve.yaml:7:20: server.limits.max_body_size: invalid size '1 potato': unknown unit "
        "'potato'; use bytes (65536) or a number with a unit: 64KiB, 1MiB, 1GiB (binary) "
        "or 64KB, 1MB, 1GB (decimal)",
        "rtserve.yaml:8:18: server.limits.max_headers: expected an integer, got 1.5 "
        "(not a whole number)",
        "rtserve.yaml:10:13: server.timeouts.header: invalid duration 'ten': use seconds "
        "(10, 2.5) or a number with a unit: 250ms, 10s, 1.5m, 2h, 1d",
        "rtserve.yaml:11:8: server.tls: expected a mapping, got yes",
    ]


def test_integers_take_whole_floats_and_str_fields_take_any_scalar() -> None:
    settings = load(
        "server:\n  port: 8080.0\n  server_header: 1.5\n  unix_socket: 2024-01-01\n",
        ServerSettings,
        section="server",
    )
    assert settings.port == 8080 and isinstance(settings.port, int)
    assert settings.server_header == "1.5"
    assert settings.unix_socket == "2024-01-01"


def test_ambiguous_size_unit_suggests_both_spellings() -> None:
    assert errors("buffer: 64k\n") == [
        "rtserve.yaml:1:9: buffer: ambiguous size unit 'k' in '64k': "
        "did you mean 64KiB (65536 bytes) or 64KB (64000 bytes)?"
    ]
    assert load("buffer: 1MiB\n").buffer == 1048576
    assert load("buffer: 2048\n").buffer == 2048


def test_durations_need_duration_metadata() -> None:
    project = load("timing:\n  idle: 250ms\n  grace: 1.5m\n  ratio: 2\n")
    assert project.timing == Timing(idle=0.25, grace=90.0, ratio=2.0)
    assert load("timing:\n  idle: 10\n  grace: null\n").timing == Timing(idle=10.0)
    assert load("timing:\n  idle: 2h\n").timing.idle == 7200.0
    assert errors("timing:\n  idle: 10 parsecs\n  grace: -1\n  ratio: 5s\n") == [
        "rtserve.yaml:2:9: timing.idle: invalid duration '10 parsecs': unknown unit 'parsecs'; "
        "use seconds (10, 2.5) or a number with a unit: 250ms, 10s, 1.5m, 2h, 1d",
        "rtserve.yaml:3:10: timing.grace: durations cannot be negative, got -1",
        "rtserve.yaml:4:10: timing.ratio: expected a number, got '5s'",
    ]


def test_list_of_dataclasses_and_index_keypaths() -> None:
    text = """\
    routes:
      - {path: /, handler: app:index}
      - path: /chat
        handler: app:chat
        name: chat
      - path: /x
        hander: app:x
    """
    assert errors(text) == [
        "rtserve.yaml:6:5: routes[2].handler: missing required key 'handler'",
        "rtserve.yaml:7:5: routes[2].hander: unknown key 'hander' — did you mean 'handler'?",
    ]
    project = load(text.replace("hander", "handler"))
    assert project.routes == [
        Route("/", "app:index"),
        Route("/chat", "app:chat", "chat"),
        Route("/x", "app:x"),
    ]


def test_dict_of_dataclasses() -> None:
    text = """\
    channels:
      chat: {history: 100, presence: true}
      "news/*": {}
      jobs:
        mode: queue
    """
    project = load(text)
    assert project.channels == {
        "chat": Channel(history=100, presence=True),
        "news/*": Channel(),
        "jobs": Channel(mode="queue"),
    }
    bad = """\
    channels:
      chat: {history: lots}
      "news/*": {presense: true}
    """
    assert errors(bad) == [
        "rtserve.yaml:2:19: channels.chat.history: expected an integer, got 'lots'",
        "rtserve.yaml:3:14: channels[\"news/*\"].presense: unknown key 'presense' "
        "— did you mean 'presence'?",
    ]


def test_literal_choices() -> None:
    assert load("level: debug\n").level == "debug"
    assert errors("level: warn\n") == [
        "rtserve.yaml:1:8: level: expected one of 'debug', 'info', 'warning', got 'warn' "
        "— did you mean 'warning'?"
    ]
    assert errors("channels:\n  a: {mode: 3}\n") == [
        "rtserve.yaml:2:13: channels.a.mode: expected one of 'fanout', 'queue', got 3"
    ]


def test_post_init_value_error_becomes_a_positioned_issue() -> None:
    assert load("window: {low: 1, high: 5}\n").window == Window(1, 5)
    text = """\
    name: x
    window:
      low: 9
      high: 3
    """
    assert errors(text) == ["rtserve.yaml:3:3: window: low (9) must not exceed high (3)"]


def test_any_values_are_plain_python() -> None:
    project = load("extra:\n  a: [1, 2.5, true, null, x]\n  b: {c: '${X:-d}'}\n")
    assert project.extra == {"a": [1, 2.5, True, None, "x"], "b": {"c": "d"}}


def test_duplicate_keys_and_merge_keys() -> None:
    assert errors("name: a\nname: b\n") == [
        "rtserve.yaml:2:1: name: duplicate key 'name' (first given at line 1)"
    ]
    text = """\
    base: &base {history: 5, presence: true}
    channels:
      a: {<<: *base}
      b:
        <<: *base
        history: 7
    """
    project = load(text.replace("base: &base", "extra: &base"))
    assert project.channels == {
        "a": Channel(history=5, presence=True),
        "b": Channel(history=7, presence=True),
    }


def test_aliases_are_shared_and_loops_refused() -> None:
    project = load("extra: {a: &x [1, 2], b: *x}\nserver: {methods: *x}\n")
    assert project.extra == {"a": [1, 2], "b": [1, 2]}
    assert project.server.methods == ["1", "2"]
    assert errors("extra: &a {x: *a}\n") == [
        "rtserve.yaml:1:8: extra.x: a value that contains itself (an alias inside its anchor)"
    ]


def test_yaml_syntax_error_has_a_line() -> None:
    assert errors("name: demo\nserver:\n  handler: [a\n") == [
        "rtserve.yaml:4:1: invalid YAML: expected ',' or ']', but got '<stream end>' "
        "(while parsing a flow sequence, at line 3, column 12)"
    ]
    lines = errors("name: demo\nserver: x\n  handler: y\n")
    assert lines == ["rtserve.yaml:3:10: invalid YAML: mapping values are not allowed here"]


def test_top_level_must_be_a_mapping() -> None:
    assert errors("- a\n- b\n") == ["rtserve.yaml:1:1: expected a mapping, got a list"]
    assert errors("- a\n", ServerSettings, section="server") == [
        "rtserve.yaml:1:1: the top level must be a mapping of sections (server: ...), got a list"
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_file(path, ServerSettings, section="server")
    assert str(caught.value) == f"{path}: no such file"
    assert isinstance(caught.value, ConfigErrors)
    assert caught.value.issues == [ConfigIssue(str(path), None, None, "", "no such file")]


# --- environment variables --------------------------------------------------------------------


def test_env_substitution_whole_and_embedded() -> None:
    text = "server:\n  port: ${PORT:-8080}\n  server_header: rtserve/${VERSION}\n"
    env = {"VERSION": "1.2"}
    settings = load(text, ServerSettings, section="server", env=env)
    assert settings.port == 8080 and settings.server_header == "rtserve/1.2"
    settings = load(text, ServerSettings, section="server", env={**env, "PORT": "9001"})
    assert settings.port == 9001
    settings = load(
        "server:\n  port: ${PORT}\n", ServerSettings, section="server", env={"PORT": "1"}
    )
    assert settings.port == 1
    debug = load("server:\n  debug: ${DEBUG:-false}\n", ServerSettings, section="server")
    assert debug.debug is False
    empty = load("server:\n  unix_socket: ${SOCK:-}\n", ServerSettings, section="server")
    assert empty.unix_socket is None  # an unquoted empty value is null


def test_env_substituted_value_is_still_type_checked() -> None:
    assert errors(
        "server:\n  port: ${PORT}\n", ServerSettings, section="server", env={"PORT": "x"}
    ) == ["rtserve.yaml:2:9: server.port: expected a port (0 to 65535), got 'x'"]


def test_unset_variable_is_an_error_with_position() -> None:
    text = "server:\n  host: 0.0.0.0\n  port: ${PORT}\n  server_header: ${A}-${B:-b}\n"
    assert errors(text, ServerSettings, section="server") == [
        "rtserve.yaml:3:9: server.port: environment variable 'PORT' is not set "
        "(write ${PORT:-default} to give a default)",
        "rtserve.yaml:4:18: server.server_header: environment variable 'A' is not set "
        "(write ${A:-default} to give a default)",
    ]


def test_unset_variable_in_another_section_does_not_matter() -> None:
    text = "server:\n  port: 1\nbroker:\n  url: ${REDIS_URL}\n"
    assert load(text, ServerSettings, section="server").port == 1


def test_dollar_dollar_escapes_a_literal_reference() -> None:
    settings = load("server:\n  server_header: a$${X}b\n", ServerSettings, section="server")
    assert settings.server_header == "a${X}b"


def test_dotenv_beside_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text(
        "server:\n  port: ${PORT}\n  server_header: ${NAME:-x}\n  debug: ${DEBUG}\n"
    )
    (tmp_path / ".env").write_text("# settings\nexport PORT=7000\nNAME='lit ${X}'\nDEBUG=true\n")
    path = tmp_path / "rtserve.yaml"
    settings = load_file(path, ServerSettings, section="server", env={})
    assert settings.port == 7000
    assert settings.server_header == "lit ${X}"
    assert settings.debug is True
    # the environment wins over the .env file
    settings = load_file(path, ServerSettings, section="server", env={"PORT": "7001"})
    assert settings.port == 7001
    # dotenv=False ignores it
    with pytest.raises(ConfigErrors) as caught:
        load_file(path, ServerSettings, section="server", env={}, dotenv=False)
    assert str(caught.value).startswith(f"{path}:2:9: server.port: environment variable 'PORT'")


def test_bad_dotenv_line_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "rtserve.yaml").write_text("server: {}\n")
    (tmp_path / ".env").write_text("A=1\nnot a line\n")
    with pytest.raises(ConfigErrors) as caught:
        load_file(tmp_path / "rtserve.yaml", ServerSettings, section="server", env={})
    assert str(caught.value) == f"{tmp_path / '.env'}:2: expected KEY=VALUE, got 'not a line'"


def test_load_dotenv_syntax(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(
        textwrap.dedent(
            """\
            # comment

            export A=1
            B = two words  # trailing comment
            C='${A} single $${A}'
            D="x\\n${A} \\$A \\"q\\""
            E=${A}-${MISSING:-dflt}-${HOME_}
            F=a#b
            G=
            """
        )
    )
    assert load_dotenv(path, env={"HOME_": "h"}) == {
        "A": "1",
        "B": "two words",
        "C": "${A} single $${A}",
        "D": 'x\n1 $A "q"',
        "E": "1-dflt-h",
        "F": "a#b",
        "G": "",
    }
    path.write_text("A=${NOPE}\n")
    with pytest.raises(DotenvError, match=r":1: A: environment variable 'NOPE' is not set"):
        load_dotenv(path, env={})


def test_substitute() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert substitute("${A}", env) == "1"
    assert substitute("x${A}y${A}", env) == "x1y1"
    assert substitute("${EMPTY:-d} ${NONE:-} $A $$ $${A}", env) == "d  $A $$ ${A}"
    with pytest.raises(UnsetVariableError) as caught:
        substitute("${NONE}", env)
    assert caught.value.name == "NONE"
    for bad in ("${", "${A", "${1}", "${}", "${A B}"):
        with pytest.raises(ValueError):
            substitute(bad, env)


# --- units ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("512B", 512),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("1GiB", 1 << 30),
        ("64KB", 64000),
        ("1MB", 1_000_000),
        ("1.5KiB", 1536),
        (" 2 mib ", 2 << 20),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["64k", "1m", "1M", "2Gi", "0.1KiB", "-1", "", "KiB", "1 potato"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("1.5m", 90.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("10", 10.0),
        ("1h30m", 5400.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "-1s", "10 parsecs", "s", "1e3", "1..5s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"250ms|negative"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**15))
def test_size_round_trips(n: int) -> None:
    assert parse_size(str(n)) == n
    assert parse_size(n) == n
    assert parse_size(f"{n}KiB") == n * 1024
    assert parse_size(f"{n}MiB") == n * 1024**2
    assert parse_size(f"{n}GiB") == n * 1024**3
    assert parse_size(f"{n}KB") == n * 1000
    assert parse_size(f"{n} MB") == n * 1000**2


@given(st.integers(min_value=0, max_value=10**12))
def test_duration_round_trips(n: int) -> None:
    assert parse_duration(str(n)) == n
    assert parse_duration(f"{n}s") == n
    assert parse_duration(f"{n}ms") == n / 1000
    assert parse_duration(f"{n}m") == n * 60
    assert parse_duration(f"{n}h") == n * 3600
    assert parse_duration(f"{n}d") == n * 86400


@given(st.text())
def test_garbage_sizes_raise_only_value_error(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert isinstance(size, int) and size >= 0


@given(st.text())
def test_garbage_durations_raise_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert isinstance(seconds, float) and seconds >= 0 and math.isfinite(seconds)


@given(st.text(alphabet="0123456789.kKmMgGiIbBsShHdD_ -", max_size=12))
def test_unit_looking_garbage_raises_only_value_error(text: str) -> None:
    for parse in (parse_size, parse_duration):
        with contextlib.suppress(ValueError):
            parse(text)


def test_a_channel_pattern_no_channel_name_can_match_is_refused_where_it_is_written(
    tmp_path: Path,
) -> None:
    from rtserve.config.project import load_project

    (tmp_path / "rtserve.yaml").write_text(
        "channels:\n  rules:\n    - pattern: 'chat:*'\n"
        "    - history: 5\n      pattern: 'chat room:{id}'\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert "rtserve.yaml:5:16: channels.rules[1].pattern: " in str(caught.value)
    assert "' ' cannot be in a channel name" in str(caught.value)
    from rtserve import App

    for pattern in ("chat room:{id}", "x" * 256, "", "user:{id"):
        with pytest.raises(ValueError):
            App().channel(pattern)
    App().channel("ok:{id}:*")


def test_route_headers_are_for_static_routes() -> None:
    from rtserve.config.project import ProjectConfig

    text = """\
    routes:
      - path: /
        static: static/index.html
        headers: {X-Frame-Options: DENY}
      - path: /hello
        handler: builtins:print
        headers: {X-Frame-Options: DENY}
      - path: /s
        static: static/
        headers: {"Bad Name": x}
    """
    assert errors(text, ProjectConfig) == [
        "rtserve.yaml:5:5: routes[1]: headers are for static routes (a handler sets its own)",
        "rtserve.yaml:8:5: routes[2]: invalid header field 'Bad Name': 'x'",
    ]
    ok = load(text.split("  - path: /hello")[0], ProjectConfig)
    assert ok.routes[0].headers == {"X-Frame-Options": "DENY"}
