"""docs/cli.md, written from the click command tree.

`python -m rtserve.cli.reference` rewrites it. The usage lines and the tables of arguments,
options, defaults and environment variables come from the click objects themselves (the
server options of `run` from the settings schema, through rtserve.cli.options); only the
prose (what a command is for, its exit statuses, an example) is kept here, in `DOCS`, one
entry per command. tests/test_cli_reference.py checks that docs/cli.md is what `render()`
writes and that every command of the tree has its entry, so the reference cannot drift from
the CLI.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from rtserve.cli.main import main as cli
from rtserve.cli.new_cmd import available_templates, describe, templates_root
from rtserve.cli.options import RUN_SETTINGS, param_name
from rtserve.server.settings import ServerSettings

PROG = "rtserve"


@dataclass(frozen=True)
class CommandDoc:
    """The hand-written part of one command's section.

    `about`: Markdown paragraphs after the command's own help text. `arguments`: the meaning
    of each argument, by its click name (every argument must have one). `exits`: (status,
    when) rows. `example`: a shell session, shown as a code block.
    """

    about: str = ""
    arguments: dict[str, str] = field(default_factory=dict)
    exits: tuple[tuple[str, str], ...] = ()
    example: str = ""


USAGE_ERROR = ("2", "a usage error: an unknown option, a bad or missing value (click's `Error:`)")

# Environment variables an option reads in its callback rather than through click's `envvar`
# (so click cannot tell): (command path, parameter name) -> variable.
EXTRA_ENVVARS: dict[tuple[str, str], str] = {
    ("token verify", "secrets"): "RTSERVE_TOKEN_SECRET",
}

# Defaults the code decides when click's is None: (command path, parameter name) -> text.
DEFAULTS: dict[tuple[str, str], str] = {
    ("run", "config_file"): "the one TARGET names, else `./rtserve.yaml`",
    ("run", "reload"): "on for a project, off for `module:app`",
    ("stats", "url"): "the project's admin socket",
}

# In the order they appear in the reference; keys are command paths without "rtserve".
DOCS: dict[str, CommandDoc] = {
    "": CommandDoc(
        about=(
            "Every command and subcommand also takes `-h` / `--help` (shown once here, left "
            "out of the tables below). `rtserve` alone prints the list of commands and exits "
            "2, as does a group (`rtserve token`) without its subcommand."
        ),
        exits=(("0", "`--version`, `--help`"), USAGE_ERROR),
        example="rtserve --version\nrtserve run --help",
    ),
    "new": CommandDoc(
        about=(
            "A template is a folder copied as it is (without caches); the new project has a "
            "README.md that says what is where, and its own tests. The templates of this "
            "version of rtserve:\n\n{templates}\n\n"
            "See [projects.md](projects.md#making-one)."
        ),
        arguments={
            "template": "the template's name (see `--list`); required unless `--list`",
            "directory": "where to create the project; created if missing; required unless "
            "`--list`",
        },
        exits=(
            ("0", "created (or `--list`)"),
            ("1", "DIR is not empty (without `--force`), or exists and is not a folder"),
            ("2", "no TEMPLATE or DIR, an unknown TEMPLATE, or another usage error"),
        ),
        example="rtserve new --list\nrtserve new chat mychat\ncd mychat && rtserve run",
    ),
    "run": CommandDoc(
        about=(
            "**What it serves.** Without TARGET, the project of the current folder (its "
            "`rtserve.yaml`; a usage error when there is none). A TARGET that is a folder or "
            "ends in `.yaml`/`.yml` is a project; anything else is a Python App: "
            "`module:attr` (the current folder is importable) or `file.py:attr`, `attr` "
            "defaulting to `app`; a callable that is not an App is called as a factory. "
            "`--config FILE` names the project's YAML file directly (it wins over TARGET).\n\n"
            "**Server options.** `--host` to `--tls-key` are keys of the `server` section "
            "([configuration.md](configuration.md#server)), made from the settings schema: "
            "given, they override the project's `server:` (or a Python App's settings); not "
            "given, that value applies. The default column shows the key and the schema's "
            "default. `--tls-key` needs `--tls-cert`; `--workers` must be 1 or more.\n\n"
            "**One process or a supervisor.** Reload is on by default for a project and off "
            "for a `module:app` target. With reload on, or more than one worker (`--workers` "
            "or `server.workers`), `rtserve run` is a supervisor: it binds the sockets once "
            "and serves through worker processes that inherit them; a change to the "
            "project's `.py`, `.yaml`/`.yml`, `.env` or static files (or SIGHUP) starts new "
            "workers and retires the old ones once the new ones accept (their WebSockets "
            "close with 1012 and their requests get `--reload-grace` seconds); with the memory "
            "broker the channels (epochs, offsets, history) go to the new worker. A project "
            "that does not start is printed as `waiting` and every request gets a 503 with "
            "its error until a change fixes it. A worker that "
            "exits on its own is restarted after 0.5, 1, 2, 4 and 8 s. With reload off and "
            "one worker the app is served in the `rtserve run` process itself. `--fd` (an "
            "inherited socket) works only there: it is refused with reload or several "
            "workers. Several workers need a broker they share (Redis): with the memory "
            "broker `run` refuses to start. See [projects.md](projects.md#running-it-and-"
            "reload) and [deployment.md](deployment.md).\n\n"
            "**Stopping.** SIGINT (Ctrl-C) or SIGTERM shuts down gracefully: WebSockets get "
            "1001 and requests the project's `timeouts.graceful`; a second signal closes "
            "everything at once."
        ),
        arguments={
            "target": "a project folder or its YAML file, or `module:app` / `file.py:app`; "
            "default: the project in the current folder",
        },
        exits=(
            ("0", "stopped by SIGINT or SIGTERM"),
            (
                "1",
                "the address cannot be bound (`cannot listen on 127.0.0.1 port 8000: "
                "Address already in use`); under the supervisor without reload, every "
                "worker kept exiting and was given up on",
            ),
            (
                "2",
                "in one process: the project or App does not load (every problem is "
                "printed, as by `rtserve check`) or the broker is unreachable at start. "
                "Under the supervisor: the project's `server` settings cannot be read "
                "(with reload it serves the 503 error page on the options' address, or with "
                "several workers waits for a change, instead), no worker serves and one "
                "reports the broker unreachable, or several workers with the memory "
                "broker, or (reload off) no worker serves and one cannot load the "
                "project; with reload on, a worker that fails to load the project is "
                "reported and the supervisor waits for a change. A usage "
                "error (`--tls-key` without "
                "`--tls-cert`, `--fd` with reload or workers, `--workers 0`, "
                "`--reload-grace -1`, no `rtserve.yaml` here)",
            ),
        ),
        example=(
            "rtserve run                       # the project here, with reload\n"
            "rtserve run path/to/project --port 9000 --no-reload\n"
            "rtserve run app:app --host 0.0.0.0 --host :: --port 8080\n"
            "rtserve run --workers 4 --no-reload   # needs `broker: redis://...`"
        ),
    ),
    "check": CommandDoc(
        about=(
            "Loads the project as `rtserve run` would (the YAML, `.env`, `${VAR}`s, the "
            "modules it names, the routes and channel rules) without serving it, and prints "
            "every problem as `error: FILE:LINE:COL: KEY: message`, then how many. Settings "
            "that work against each other (a WebSocket `max_queued_bytes` below "
            "`max_message_size`) are printed as `warning: ...` and do not change the exit "
            "status. See [projects.md](projects.md#checking-it)."
        ),
        arguments={"path": "a project folder or its YAML file; default: the current folder"},
        exits=(
            ("0", "valid: prints `ok: N route(s), M channel rule(s)`"),
            ("2", "no `rtserve.yaml` there, or the project has problems (all are printed)"),
        ),
        example="$ rtserve check\nok: 11 route(s), 1 channel rule(s)",
    ),
    "routes": CommandDoc(
        about=(
            "Without `--match`: a table of the routes (path, methods, kind, handler with its "
            "file and line, name) and one of the channel rules. With `--match URL`: which "
            "route the path of URL hits for `--method`, its parameters and its handler. "
            "On a terminal the table fits its width; piped (to a file, `grep`), every row is "
            "printed whole."
        ),
        arguments={"path": "a project folder or its YAML file; default: the current folder"},
        exits=(
            ("0", "printed"),
            ("1", "`--match`: no route matches (404) or not for that method (405)"),
            ("2", "the project does not load (as `rtserve check`), or a usage error"),
        ),
        example=(
            "$ rtserve routes --match /hello/bob\n"
            "GET /hello/bob -> /hello/{name}\n"
            "  params: {'name': 'bob'}\n"
            "  handler: app.hello (app.py:3)"
        ),
    ),
    "stats": CommandDoc(
        about=(
            "Without `--url` it reads the `admin` section of the project's YAML file as "
            "`rtserve run` does (`${VAR}` from the environment, then `.env`), without "
            "importing the project, and connects to `admin.socket` (`.rtserve/admin.sock` by "
            "default); "
            "with `socket: null` it uses the file's `admin.listen` and `admin.token`. "
            "`--url` (with `--token`) reaches any admin interface over HTTP. When stdout is "
            "not a terminal, the default is NDJSON (as `--json --watch`). The dashboard's "
            "keys: `q` quits, `s` sorts the connections (queued bytes, age), `f` filters "
            "them by transport. See [stats.md](stats.md)."
        ),
        arguments={"path": "a project folder or its YAML file; default: the current folder"},
        exits=(
            ("0", "printed, or quit with `q` or Ctrl-C"),
            (
                "1",
                "no server answers (no socket, connection refused), the admin interface is "
                "off, a token is missing or refused (401), or the address is not an rtserve "
                "admin interface",
            ),
            ("2", "PATH with `--url`, `--once` with `--watch`, or another usage error"),
        ),
        example=(
            "rtserve stats                          # live dashboard of the project here\n"
            "rtserve stats --once\n"
            "rtserve stats --json --watch --interval 5 >> stats.ndjson\n"
            'rtserve stats --url http://127.0.0.1:9100 --token "$RTSERVE_ADMIN_TOKEN"'
        ),
    ),
    "dev-cert": CommandDoc(
        about=(
            "Runs the `openssl` command line (it must be installed) to make an EC P-256 "
            "certificate for `localhost`, `127.0.0.1` and `::1`, signed by its own key. "
            "`rtserve run --tls-cert cert.pem --tls-key key.pem` then serves HTTPS, and "
            "HTTP/2 by ALPN when the `http2` extra is installed (`pip install "
            "'rtserve[http2]'`). Browsers warn until the certificate is trusted; curl takes "
            "`-k` or `--cacert cert.pem`. See [http.md](http.md#http2)."
        ),
        exits=(
            ("0", "both files written"),
            ("1", "openssl is missing or failed (its message is shown)"),
            ("2", "a file exists (without `--force`), or another usage error"),
        ),
        example=(
            "rtserve dev-cert\n"
            "rtserve run app.py:app --tls-cert cert.pem --tls-key key.pem\n"
            "curl -k --http2 https://localhost:8000/"
        ),
    ),
    "subscribe": CommandDoc(
        about=(
            "Connects to the channel WebSocket with rtserve.client and prints each "
            'publication as one JSON line `{"offset", "data", "info"?}` (`info` is '
            '`{"client", "user", "info"?}` of the publishing client, absent for '
            "publications of the server). It reconnects by itself and recovers what it "
            "missed; when the server cannot give it (`recovered: false`) it prints a "
            "`warning:` on stderr and goes on from the stream's position. Without `--url`, "
            "inside a project it reaches the server its YAML file's `server:` section "
            "describes (read as `rtserve run` reads it), elsewhere `http://127.0.0.1:8000`; "
            "`--url` is the server's base URL, as for `rtserve publish` (the older "
            "`ws://host:port/rt/ws` works too). See "
            "[channels.md](channels.md#clients-rtserveclient-and-the-shell)."
        ),
        arguments={"channel": "the channel to subscribe to, e.g. `chat:lobby`"},
        exits=(
            ("0", "`--count` publications printed, or the subscription ended"),
            (
                "1",
                "cannot connect, `connect` or `subscribe` refused (the server's message and "
                "code are printed), or the connection was lost for good",
            ),
            ("2", "a bad `--since` or `--data`, or another usage error"),
            ("130", "Ctrl-C"),
        ),
        example=(
            "$ rtserve subscribe chat:lobby --count 1\n"
            '{"offset":3,"data":{"text":"hi"},"info":{"client":"b3f1cb0a25fec155","user":"ann"}}'
        ),
    ),
    "publish": CommandDoc(
        about=(
            'POSTs `{"channel", "data", "idempotency_key"?}` to the publish API '
            "(`{url}/rt/publish`, with `Authorization: Bearer` the API key, which the server "
            'sets as `channels.api_key`) and prints its answer, `{"offset", "epoch"}`. '
            "It finds the server as `rtserve subscribe` does: `--url http://host:port`, else "
            "the project's here, else `http://127.0.0.1:8000`. "
            "See [channels.md](channels.md#the-publish-api)."
        ),
        arguments={
            "channel": "the channel to publish to",
            "data_json": "the data, as JSON: `'\"text\"'`, `'{\"n\": 1}'`, `42`",
        },
        exits=(
            ("0", "published: the answer is printed"),
            ("1", "the server refused (its message, code and HTTP status), or cannot be reached"),
            ("2", "DATA_JSON is not JSON, or another usage error"),
        ),
        example=(
            '$ RTSERVE_API_KEY=... rtserve publish news \'{"title": "hello"}\'\n'
            '{"offset":1,"epoch":"3e207b3b"}'
        ),
    ),
    "token": CommandDoc(
        about=(
            "Channel tokens are HS256 JWTs: `sub` the user, `channels` the channel patterns "
            "they allow, `exp` the expiry, `info` what presence shows. The secret is the "
            "server's `channels.token_secret`; it must be at least 32 characters. See "
            "[channels.md](channels.md#tokens)."
        ),
        exits=(USAGE_ERROR,),
        example="rtserve token mint --help",
    ),
    "token mint": CommandDoc(
        about="The token is printed alone on stdout, so that a script can capture it.",
        exits=(
            ("0", "printed"),
            (
                "2",
                "no secret, a secret shorter than 32 characters, a bad `--ttl`, an `--info` "
                "that is not a JSON object, a bad channel pattern",
            ),
        ),
        example=(
            "export RTSERVE_TOKEN_SECRET=...        # 32 characters or more\n"
            "rtserve token mint --user ann --channel 'chat:*' --ttl 30m \\\n"
            '    --info \'{"name": "Ann"}\''
        ),
    ),
    "token verify": CommandDoc(
        about=(
            'Prints `{"user", "channels", "expires" (ISO 8601, UTC), "expires_unix", '
            '"info"}`. With several `--secret`s a token signed by any of them is valid (for '
            "rotating the secret). Without `--secret`, the secret is `RTSERVE_TOKEN_SECRET` "
            "(one secret, the whole value)."
        ),
        arguments={"token_text": "the token to check"},
        exits=(
            ("0", "valid: its claims are printed"),
            ("1", "expired (beyond `--leeway`) or invalid (bad signature, malformed)"),
            ("2", "no secret, a secret shorter than 32 characters, or another usage error"),
        ),
        example=(
            'rtserve token verify "$TOKEN"\n'
            'rtserve token verify --secret "$NEW" --secret "$OLD" "$TOKEN"   # rotation'
        ),
    ),
    "version": CommandDoc(
        about="Put these lines in a bug report. `rtserve --version` prints the first only.",
        exits=(("0", "printed"),),
        example=(
            "$ rtserve version\nrtserve 0.1.0\npython 3.11.7 (CPython)\nevent loop uvloop "
            "0.23.0\nplatform Linux-6.8.0-x86_64-with-glibc2.36"
        ),
    ),
}

ENVIRONMENT = """\
The options in the table read these variables when they are not given. The CLI also reads:

- **`${VAR}` and `${VAR:-default}` in `rtserve.yaml`** are looked up in the environment, then
  in a `.env` file beside it, by `run`, `check`, `routes` and `stats` (which reads only the
  `server` and `admin` sections); see
  [configuration.md](configuration.md).
- **`RTSERVE_WORKER`** and **`RTSERVE_WORKERS`** are set by `rtserve run` in each worker
  process, for the app: which worker it is (0 to N-1) and how many there are (see
  [deployment.md](deployment.md#workers-on-one-machine)).
- **`RTSERVE_RELOAD_WORKER`** is internal: the supervisor of `rtserve run` hands each worker
  process its spec in it. Do not set it.
"""

EXIT_CODES: tuple[tuple[str, str], ...] = (
    ("0", "done"),
    (
        "1",
        "the command ran and failed: the server refused or cannot be reached, an invalid "
        "token, no route matches, `new` into a folder that is not empty (each command's "
        "section says which)",
    ),
    (
        "2",
        "a usage error (click prints `Usage:` and `Error:`), or a project that does not load: "
        "`check`, `routes` and `run` print every problem",
    ),
    ("130", "`rtserve subscribe` stopped by Ctrl-C"),
)


def iter_commands(
    command: click.Command, path: tuple[str, ...] = (), parent: click.Context | None = None
) -> Iterator[tuple[tuple[str, ...], click.Command, click.Context]]:
    """Each command of the tree, depth first, the group before its subcommands (sorted by
    name), with its path below `rtserve` and a click Context to render its usage with."""
    ctx = click.Context(command, info_name=path[-1] if path else PROG, parent=parent)
    yield path, command, ctx
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from iter_commands(command.commands[name], (*path, name), ctx)


def command_paths() -> list[str]:
    """The path of every command and group in the tree ("" for `rtserve` itself)."""
    return [" ".join(path) for path, _, _ in iter_commands(cli)]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _help_text(command: click.Command) -> str:
    """The command's docstring as click shows it, its wrapped lines joined."""
    text = inspect.cleandoc(command.help or "").split("\f", 1)[0]
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return "\n\n".join(paragraphs)


SERVER_PARAMS = {param_name(key): key for key in RUN_SETTINGS}


def _server_default(key: str) -> Any:
    value: Any = ServerSettings()
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _default(path: str, param: click.Parameter, ctx: click.Context) -> str:
    """The default column: `required`, the settings key a server option of `run` falls back
    to (with the schema's default), `on`/`off` for a flag, the value, or `-` for none."""
    if param.required:
        return "required"
    if (path, param.name or "") in DEFAULTS:
        return DEFAULTS[path, param.name or ""]
    if path == "run" and param.name in SERVER_PARAMS:
        key = SERVER_PARAMS[param.name]
        return f"`server.{key}`: `{_scalar(_server_default(key))}`"
    value = param.get_default(ctx, call=False)
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (str, int, float)):  # not None, nor click's UNSET sentinel
        return f"`{_scalar(value)}`"
    return "-"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _type(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    kind = param.type
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        name = "integer" if isinstance(kind, click.IntRange) else "number"
        bounds = []
        if kind.min is not None:
            bounds.append(f"{'>' if kind.min_open else '≥'} {kind.min}")
        if kind.max is not None:
            bounds.append(f"{'<' if kind.max_open else '≤'} {kind.max}")
        text = f"{name} {', '.join(bounds)}"
    elif isinstance(kind, click.Choice):
        text = "one of " + ", ".join(f"`{c}`" for c in kind.choices)
    else:
        text = {"integer": "integer", "float": "number", "path": "path"}.get(kind.name, "text")
    if param.multiple:
        text += ", repeatable"
    return text


def _names(param: click.Option) -> str:
    names = " / ".join(
        ", ".join(f"`{o}`" for o in opts) for opts in (param.opts, param.secondary_opts) if opts
    )
    if param.metavar:
        names += f" `{param.metavar}`"
    return names


def _envvars(path: str, param: click.Parameter) -> list[str]:
    found = param.envvar
    names = [found] if isinstance(found, str) else list(found or [])
    extra = EXTRA_ENVVARS.get((path, param.name or ""))
    return names + ([extra] if extra else [])


def _options_table(path: str, command: click.Command, ctx: click.Context) -> list[str]:
    rows = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        env = ", ".join(f"`{name}`" for name in _envvars(path, param)) or "-"
        rows.append(
            f"| {_names(param)} | {_type(param)} | {_default(path, param, ctx)} | {env} "
            f"| {_cell(param.help or '')} |"
        )
    if not rows:
        return []
    head = ["| option | type | default | env var | meaning |", "| --- | --- | --- | --- | --- |"]
    return ["Options:", "", *head, *rows, ""]


def _arguments_table(path: str, command: click.Command, doc: CommandDoc) -> list[str]:
    rows = []
    for param in command.params:
        if not isinstance(param, click.Argument):
            continue
        if param.name not in doc.arguments:
            raise KeyError(f"DOCS[{path!r}].arguments has no entry for {param.name!r}")
        metavar = param.metavar or (param.name or "").upper()
        required = "yes" if param.required else "no"
        rows.append(f"| `{metavar}` | {required} | {_cell(doc.arguments[param.name or ''])} |")
    if not rows:
        return []
    return ["Arguments:", "", "| argument | required | meaning |", "| --- | --- | --- |", *rows, ""]


def _usage(command: click.Command, ctx: click.Context) -> str:
    pieces = command.collect_usage_pieces(ctx)
    return " ".join([ctx.command_path, *pieces])


def _templates() -> str:
    root = templates_root()
    if root is None:
        return "(no templates found in this installation)"
    return "\n".join(
        f"- `{name}`: {describe(folder)}" for name, folder in available_templates(root).items()
    )


def _section(path: str, command: click.Command, ctx: click.Context) -> list[str]:
    doc = DOCS[path]
    out = [f"## {ctx.command_path}", "", "```text", _usage(command, ctx), "```", ""]
    help_text = _help_text(command)
    if help_text:
        out += [help_text, ""]
    if doc.about:
        out += [doc.about.replace("{templates}", _templates()), ""]
    if isinstance(command, click.Group):
        subs = ", ".join(
            f"[`{name}`](#{_slug(f'{ctx.command_path} {name}')})"
            for name in sorted(command.commands)
        )
        out += [f"Commands: {subs}.", ""]
    out += _arguments_table(path, command, doc)
    out += _options_table(path, command, ctx)
    if doc.exits:
        out += ["Exit status:", "", "| status | when |", "| --- | --- |"]
        out += [f"| {status} | {_cell(when)} |" for status, when in doc.exits]
        out.append("")
    if doc.example:
        out += ["Example:", "", "```sh", doc.example, "```", ""]
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading made of words and spaces."""
    return heading.lower().replace(" ", "-")


def _environment_table(commands: list[tuple[str, click.Command, click.Context]]) -> list[str]:
    readers: dict[str, list[str]] = {}
    for path, command, ctx in commands:
        for param in command.params:
            if isinstance(param, click.Option):
                for name in _envvars(path, param):
                    flag = max(param.opts, key=len)
                    readers.setdefault(name, []).append(
                        f"[`{ctx.command_path}`](#{_slug(ctx.command_path)}) `{flag}`"
                    )
    rows = [f"| `{name}` | {', '.join(where)} |" for name, where in sorted(readers.items())]
    return ["| variable | read by |", "| --- | --- |", *rows]


def render() -> str:
    """docs/cli.md: a section per command of the tree, in the order of `DOCS` (a command the
    tree has and `DOCS` lacks raises KeyError), then environment variables and exit codes."""
    tree = {" ".join(path): (command, ctx) for path, command, ctx in iter_commands(cli)}
    missing = sorted(set(tree) - set(DOCS))
    if missing:
        raise KeyError(f"DOCS has no entry for: {', '.join(repr(m) for m in missing)}")
    names = {(path, p.name) for path, (command, _) in tree.items() for p in command.params}
    stale = sorted((set(DEFAULTS) | set(EXTRA_ENVVARS)) - names)
    if stale:
        raise KeyError(f"DEFAULTS or EXTRA_ENVVARS name parameters that do not exist: {stale}")
    ordered = [(path, *tree[path]) for path in DOCS if path in tree]
    out = [
        "# Command line reference",
        "",
        "Every command of `rtserve`, with its arguments, options, defaults, environment",
        "variables and exit statuses. The usage lines and tables are written from the click",
        "commands by `python -m rtserve.cli.reference` (a test checks this page is current);",
        "`rtserve COMMAND --help` shows the same options.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for path, command, ctx in ordered:
        if path:
            short = command.get_short_help_str(limit=200)
            out.append(f"| [`{ctx.command_path}`](#{_slug(ctx.command_path)}) | {_cell(short)} |")
    out.append("")
    for path, command, ctx in ordered:
        out += _section(path, command, ctx)
    out += ["## Environment variables", "", *_environment_table(ordered), "", ENVIRONMENT]
    out += ["## Exit codes", "", "| status | meaning |", "| --- | --- |"]
    out += [f"| {status} | {_cell(when)} |" for status, when in EXIT_CODES]
    out += ["", "Errors are printed on stderr, as `error: ...` (click's: `Error: ...`); results on"]
    out += ["stdout."]
    return "\n".join(out).rstrip("\n") + "\n"


def main() -> None:
    root = Path(__file__).resolve().parents[2]
    (root / "docs" / "cli.md").write_text(render())
    print("wrote docs/cli.md", file=sys.stderr)


if __name__ == "__main__":
    main()
