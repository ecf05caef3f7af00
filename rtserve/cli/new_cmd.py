"""`rtserve new TEMPLATE DIR`: start a project from one of the bundled templates.

A template is a folder copied as it is. Installed, they live in the package as
`rtserve/_templates` (the wheel force-includes the repository's `templates/` there); in a
source checkout they are the top-level `templates/` beside the `rtserve` package.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
from pathlib import Path

import click

import rtserve

SKIPPED = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "*.pyc")
README = "README.md"
# Templates that need a package rtserve does not install: name -> (module, how to install it).
NEEDS = {"fastapi": ("fastapi", "pip install fastapi")}


def missing_need(name: str) -> str | None:
    """What the template `name` needs that is not installed (how to install it), or None."""
    need = NEEDS.get(name)
    if need is None or importlib.util.find_spec(need[0]) is not None:
        return None
    return f"needs {need[0]}: {need[1]}"


def templates_root() -> Path | None:
    """The folder of the templates: installed (`rtserve/_templates`) or the source checkout's."""
    package = Path(rtserve.__file__).resolve().parent
    for candidate in (package / "_templates", package.parent / "templates"):
        if candidate.is_dir():
            return candidate
    return None


def available_templates(root: Path) -> dict[str, Path]:
    """Template name -> folder, sorted by name; a template is a folder with a README.md."""
    return {
        path.name: path
        for path in sorted(root.iterdir())
        if path.is_dir() and (path / README).is_file() and not path.name.startswith((".", "_"))
    }


def describe(template: Path) -> str:
    """The first line of the template's README, without its Markdown heading marks."""
    with (template / README).open(encoding="utf-8") as f:
        return f.readline().strip().lstrip("#").strip()


@click.command("new", short_help="Create a project from a template.")
@click.argument("template", metavar="TEMPLATE", required=False)  # both needed, but for --list
@click.argument("directory", metavar="DIR", required=False, type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Write into DIR even if it is not empty.")
@click.option("--list", "list_", is_flag=True, help="List the templates and exit.")
def new(template: str | None, directory: Path | None, force: bool, list_: bool) -> None:
    """Create a project in DIR from TEMPLATE (`rtserve new --list` shows them)."""
    root = templates_root()
    if root is None:
        raise click.ClickException("the project templates are missing from this installation")
    templates = available_templates(root)
    if list_:
        width = max((len(name) for name in templates), default=0)
        for name, path in templates.items():
            missing = missing_need(name)
            note = f" ({missing})" if missing else ""
            click.echo(f"{name.ljust(width)}  {describe(path)}{note}")
        return
    if template is None or directory is None:
        raise click.UsageError("give a TEMPLATE and a DIR (rtserve new --list shows templates)")
    source = templates.get(template)
    if source is None:
        raise click.BadParameter(
            f"no template {template!r}; choose one of: {', '.join(templates)}",
            param_hint="TEMPLATE",
        )
    missing = missing_need(template)
    if missing:
        raise click.ClickException(f"the {template!r} template {missing}")
    if directory.exists() and not directory.is_dir():
        raise click.ClickException(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise click.ClickException(
            f"{directory} is not empty; choose another DIR, or --force to write into it "
            "(files of the template replace files of the same name)"
        )
    shutil.copytree(source, directory, ignore=shutil.ignore_patterns(*SKIPPED), dirs_exist_ok=True)
    click.echo(f"Created {directory} from the {template!r} template: {describe(source)}")
    click.echo("\nNext steps:")
    click.echo(f"  cd {shlex.quote(str(directory))}")
    click.echo("  rtserve run         # serves it on http://127.0.0.1:8000")
    click.echo("  pip install pytest  # once, if this environment has no pytest")
    click.echo("  pytest              # runs its tests")
    click.echo(f"\nREADME.md in {directory} says what is where.")
