"""MkDocs hook: links from docs/ to repository files outside docs/ (mkdocs.yml loads this).

The Markdown in docs/ links to files such as `../config.example.yaml` and `../bench/README.md`
so that the links work when the pages are read in the repository. Those files are not part of
the site, and `mkdocs build --strict` fails on links it cannot resolve. This hook checks each
such link against the repository (a missing file is still a warning, so strict still fails)
and renders the link as its text alone in the site.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.hooks.repo_links")

# [text](../path) or [text](../path#fragment); not images, not absolute URLs.
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>\.\./[^)\s#]+)(?:#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = docs_dir.parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def replace(match: re.Match[str]) -> str:
        rel = posixpath.normpath(posixpath.join("docs", page_dir, match["target"]))
        if rel.startswith("docs/") or rel.startswith(".."):
            return match[0]  # inside docs/ or above the repository: leave it to mkdocs
        if not (repo_root / rel).exists():
            log.warning(
                "Doc file '%s' links to '%s', which is not in the repository.",
                page.file.src_uri,
                rel,
            )
        return match["text"]

    return _LINK.sub(replace, markdown)
