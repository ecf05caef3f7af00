"""Publication tags and the subscription filters over them: parse, check, compile, match.

Tags are a small map of strings a publisher sets on a publication (`check_tags`). A filter
is a JSON tree a subscriber sends once, at subscribe::

    {"eq": ["region", "eu"]}                 the tag `region` is "eu"
    {"in": ["symbol", ["A", "B"]]}           the tag `symbol` is one of these
    {"and": [F, ...]} / {"or": [F, ...]}     all / any of one or more filters
    {"not": F}                               F does not match

A missing tag equals nothing. `parse_filter` checks the tree (shape, depth, nodes, size) and
compiles it to a `TagFilter`: a plain Python predicate over the tags (no client code is ever
evaluated) and the filter's canonical text, which is the same for filters that differ only in
key order, the order of `and`/`or` members or of `in` values, so identical filters share one
evaluation per publication (`FilterGroups`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rtserve.realtime.protocol import ChannelError, ErrorCode

if TYPE_CHECKING:
    from rtserve.realtime.rules import ChannelRule

MAX_TAGS = 32  # tags on one publication
MAX_TAG_KEY = 64  # characters of a tag's name
MAX_TAG_VALUE = 256  # characters of a tag's value
MAX_FILTER_SIZE = 8192  # bytes of a filter's canonical JSON, whatever a rule allows
MAX_FILTER_DEPTH = 8  # operators nested in one another
MAX_FILTER_NODES = 64  # operators in one filter
MAX_IN_VALUES = 256  # values of one `in`

Tags = Mapping[str, str]
Matcher = Callable[[Tags], bool]
NO_TAGS: Tags = {}
_S = TypeVar("_S")


def check_tags(value: Any) -> dict[str, str] | None:
    """`value` as publication tags (None for null or {}); ChannelError 107 when it is not a
    map of at most MAX_TAGS strings with names of 1 to MAX_TAG_KEY and values of at most
    MAX_TAG_VALUE characters."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ChannelError(ErrorCode.BAD_REQUEST, "tags must be an object of strings")
    if len(value) > MAX_TAGS:
        raise ChannelError(ErrorCode.BAD_REQUEST, f"at most {MAX_TAGS} tags")
    for key, item in value.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_TAG_KEY:
            raise ChannelError(
                ErrorCode.BAD_REQUEST, f"a tag name has 1 to {MAX_TAG_KEY} characters"
            )
        if not isinstance(item, str) or len(item) > MAX_TAG_VALUE:
            raise ChannelError(
                ErrorCode.BAD_REQUEST,
                f"tag {key[:40]!r}: a tag value is a string of at most {MAX_TAG_VALUE} characters",
            )
    return dict(value) if value else None


class FilterError(ChannelError):
    """A filter that cannot be used (code 118): malformed, too deep, too big."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.BAD_FILTER, f"bad filter: {message}")


class TagFilter:
    """A checked filter: `matches(tags)`, its canonical JSON text (`key`) and its size.

    `lookup` is (tag, values) when the filter can only match tags whose `tag` is one of
    `values` (an `eq`, an `in`, or an `and` with one of them among its members), so that
    FilterGroups finds its group with a dict lookup; `exact` when that is all it asks (an
    `eq`, an `in`: no evaluation after the lookup)."""

    __slots__ = ("exact", "key", "lookup", "matches", "size")

    def __init__(
        self,
        key: str,
        matches: Matcher,
        lookup: tuple[str, frozenset[str]] | None = None,
        exact: bool = False,
    ) -> None:
        self.key = key
        self.matches = matches
        self.lookup = lookup
        self.exact = exact and lookup is not None
        self.size = len(key.encode())

    def __repr__(self) -> str:
        return f"TagFilter({self.key})"


def parse_filter(value: Any) -> TagFilter:
    """The filter a client sent (already parsed JSON, or JSON text); FilterError (118) when it
    is not a filter or exceeds MAX_FILTER_DEPTH, MAX_FILTER_NODES or MAX_FILTER_SIZE."""
    if isinstance(value, str):
        if len(value) > MAX_FILTER_SIZE * 2:
            raise FilterError(f"at most {MAX_FILTER_SIZE} bytes")
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise FilterError("not JSON") from None
    budget = [MAX_FILTER_NODES]
    canonical, matches = _compile(value, 1, budget)
    key = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
    if len(key.encode()) > MAX_FILTER_SIZE:
        raise FilterError(f"at most {MAX_FILTER_SIZE} bytes")
    ((op, _),) = canonical.items()
    return TagFilter(key, matches, _lookup(canonical), exact=op in ("eq", "in"))


def _lookup(canonical: dict[str, Any]) -> tuple[str, frozenset[str]] | None:
    """(tag, values) that every tags the filter matches must have, if its form shows one: an
    `eq` or `in`, or the narrowest of those among an `and`'s members."""
    ((op, arg),) = canonical.items()
    if op == "eq":
        return arg[0], frozenset((arg[1],))
    if op == "in":
        return arg[0], frozenset(arg[1])
    if op == "and":
        found = [lookup for member in arg if (lookup := _lookup(member)) is not None]
        return min(found, key=lambda lookup: len(lookup[1])) if found else None
    return None


def check_filter_allowed(rule: ChannelRule, tag_filter: TagFilter | None) -> None:
    """What a channel's rule says of `tag_filter` (None: no filter, always fine): ChannelError
    103 when the rule forbids filters, 118 when this one is larger than its `filter_max_size`
    bytes (0: no cap but MAX_FILTER_SIZE)."""
    if tag_filter is None:
        return
    if not rule.filters:
        raise ChannelError(ErrorCode.PERMISSION_DENIED, "this channel takes no filters")
    max_size = rule.filter_max_size
    if max_size and tag_filter.size > max_size:
        raise FilterError(f"{tag_filter.size} bytes; this channel takes at most {max_size}")


def _compile(node: Any, depth: int, budget: list[int]) -> tuple[Any, Matcher]:
    """(canonical form, matcher) of one operator node; `budget` counts the nodes left."""
    if depth > MAX_FILTER_DEPTH:
        raise FilterError(f"nested deeper than {MAX_FILTER_DEPTH}")
    budget[0] -= 1
    if budget[0] < 0:
        raise FilterError(f"more than {MAX_FILTER_NODES} operators")
    if not isinstance(node, dict) or len(node) != 1:
        raise FilterError("each node is an object with one operator: eq, in, and, or, not")
    ((op, arg),) = node.items()
    if op == "eq":
        name, wanted = _operands(op, arg)
        if not isinstance(wanted, str):
            raise FilterError('eq takes ["tag", "value"]')
        return {"eq": [name, wanted]}, _equals(name, wanted)
    if op == "in":
        name, values = _operands(op, arg)
        if (
            not isinstance(values, list)
            or not 0 < len(values) <= MAX_IN_VALUES
            or not all(isinstance(v, str) for v in values)
        ):
            raise FilterError(f'in takes ["tag", [1 to {MAX_IN_VALUES} strings]]')
        unique = sorted(set(values))
        return {"in": [name, unique]}, _one_of(name, frozenset(unique))
    if op in ("and", "or"):
        if not isinstance(arg, list) or not arg:
            raise FilterError(f"{op} takes a list of one or more filters")
        members: dict[str, Matcher] = {}
        for item in arg:
            canonical, matcher = _compile(item, depth + 1, budget)
            members.setdefault(_text(canonical), matcher)
        ordered = sorted(members)
        if len(ordered) == 1:  # one member (or one repeated): the filter is that member
            return json.loads(ordered[0]), members[ordered[0]]
        matchers = tuple(members[k] for k in ordered)
        combined = _all_of(matchers) if op == "and" else _any_of(matchers)
        return {op: [json.loads(k) for k in ordered]}, combined
    if op == "not":
        canonical, matcher = _compile(arg, depth + 1, budget)
        return {"not": canonical}, _negated(matcher)
    raise FilterError(f"unknown operator {str(op)[:20]!r} (eq, in, and, or, not)")


def _operands(op: str, arg: Any) -> tuple[str, Any]:
    if not isinstance(arg, list) or len(arg) != 2 or not isinstance(arg[0], str):
        raise FilterError(f'{op} takes ["tag", ...]')
    return arg[0], arg[1]


def _text(canonical: Any) -> str:
    return json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)


def _equals(name: str, wanted: str) -> Matcher:
    return lambda tags: tags.get(name) == wanted


def _one_of(name: str, values: frozenset[str]) -> Matcher:
    return lambda tags: tags.get(name) in values


# all()/any() over a generator would make a generator per evaluation: a plain loop is the
# cheaper of the two on the fan-out path.
def _all_of(matchers: tuple[Matcher, ...]) -> Matcher:
    def all_match(tags: Tags) -> bool:
        for matcher in matchers:  # noqa: SIM110
            if not matcher(tags):
                return False
        return True

    return all_match


def _any_of(matchers: tuple[Matcher, ...]) -> Matcher:
    def any_matches(tags: Tags) -> bool:
        for matcher in matchers:  # noqa: SIM110
            if matcher(tags):
                return True
        return False

    return any_matches


def _negated(matcher: Matcher) -> Matcher:
    return lambda tags: not matcher(tags)


class FilterGroups(Generic[_S]):
    """The subscribers of one channel grouped by filter (its canonical text; None: no
    filter), so a publication costs one evaluation per distinct filter, not one per
    subscriber; and groups whose filter asks for "tag is one of values" (TagFilter.lookup)
    are found by one dict lookup per tag name, whatever their number, and only those found
    are evaluated (none for a plain `eq` or `in`)."""

    __slots__ = ("_by_value", "_evaluated", "_groups", "_of")

    def __init__(self) -> None:
        self._groups: dict[str | None, tuple[TagFilter | None, dict[_S, None]]] = {}
        self._of: dict[_S, str | None] = {}
        # tag name -> tag value -> the groups whose filter asks for it (and maybe more)
        self._by_value: dict[str, dict[str, list[tuple[TagFilter, dict[_S, None]]]]] = {}
        self._evaluated: dict[str, tuple[TagFilter, dict[_S, None]]] = {}  # the other groups

    @property
    def filtered(self) -> bool:
        """Whether any subscriber has a filter (else every publication goes to all)."""
        return len(self._groups) > (1 if None in self._groups else 0)

    def __len__(self) -> int:
        """Distinct filters (no filter counts as one)."""
        return len(self._groups)

    def __contains__(self, key: str | None) -> bool:
        """Whether a group of this filter key (None: no filter) has members."""
        return key in self._groups

    def add(self, subscriber: _S, tag_filter: TagFilter | None) -> None:
        self.remove(subscriber)
        key = None if tag_filter is None else tag_filter.key
        entry = self._groups.get(key)
        if entry is None:
            entry = self._groups[key] = (tag_filter, {})
            self._index(tag_filter, entry[1], add=True)
        entry[1][subscriber] = None
        self._of[subscriber] = key

    def remove(self, subscriber: _S) -> None:
        if subscriber not in self._of:
            return
        key = self._of.pop(subscriber)
        tag_filter, members = self._groups[key]
        del members[subscriber]
        if not members:
            del self._groups[key]
            self._index(tag_filter, members, add=False)

    def _index(self, tag_filter: TagFilter | None, members: dict[_S, None], *, add: bool) -> None:
        """Enter (or take out) a new (or emptied) group in the lookup or the evaluated."""
        if tag_filter is None:
            return
        if tag_filter.lookup is None:
            if add:
                self._evaluated[tag_filter.key] = (tag_filter, members)
            else:
                del self._evaluated[tag_filter.key]
            return
        name, values = tag_filter.lookup
        by_value = self._by_value.setdefault(name, {})
        entry = (tag_filter, members)
        for value in values:
            if add:
                by_value.setdefault(value, []).append(entry)
                continue
            groups = by_value[value]
            groups.remove(entry)
            if not groups:
                del by_value[value]
        if not by_value:
            del self._by_value[name]

    def filter_of(self, subscriber: _S) -> TagFilter | None:
        key = self._of.get(subscriber)
        return None if key is None else self._groups[key][0]

    def matching(self, tags: Tags | None) -> list[_S]:
        """The subscribers `tags` are for: those without a filter, and those whose filter
        matches (a lookup per tag name, then an evaluation of the groups found that need
        one, and of each group without a lookup)."""
        tags = tags or NO_TAGS
        out: list[_S] = []
        plain = self._groups.get(None)
        if plain is not None:
            out.extend(plain[1])
        if tags:
            for name, by_value in self._by_value.items():
                value = tags.get(name)
                if value is not None:
                    for tag_filter, members in by_value.get(value, ()):
                        if tag_filter.exact or tag_filter.matches(tags):
                            out.extend(members)
        for tag_filter, members in self._evaluated.values():
            if tag_filter.matches(tags):
                out.extend(members)
        return out


def keeps(tag_filter: TagFilter | None, tags: Tags | None) -> bool:
    """Whether a subscriber with `tag_filter` (None: none) gets a publication with `tags`."""
    return tag_filter is None or tag_filter.matches(tags or NO_TAGS)
