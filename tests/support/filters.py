"""What a tag filter means, written the obvious way: the reference the tests check the
server's compiled matchers and deliveries against."""

from __future__ import annotations

from typing import Any


def reference_match(tree: Any, tags: dict[str, str]) -> bool:
    """Whether the filter `tree` (eq, in, and, or, not) matches `tags`."""
    ((op, arg),) = tree.items()
    if op == "eq":
        return bool(tags.get(arg[0]) == arg[1])
    if op == "in":
        return bool(tags.get(arg[0]) in arg[1])
    if op == "and":
        return all(reference_match(t, tags) for t in arg)
    if op == "or":
        return any(reference_match(t, tags) for t in arg)
    return not reference_match(arg, tags)
