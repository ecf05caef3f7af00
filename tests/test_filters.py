"""The tag filter language (realtime/filters.py), sans-I/O: parsing, its caps, canonical keys,
matching against a reference evaluator, and the grouping that shares one evaluation per
distinct filter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtserve.realtime.filters import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_NODES,
    MAX_IN_VALUES,
    MAX_TAG_VALUE,
    MAX_TAGS,
    FilterError,
    FilterGroups,
    TagFilter,
    check_filter_allowed,
    check_tags,
    parse_filter,
)
from rtserve.realtime.protocol import ChannelError, ErrorCode
from rtserve.realtime.rules import ChannelRule
from tests.support.filters import reference_match

EU = {"region": "eu", "symbol": "A"}
US = {"region": "us", "symbol": "B"}

MATCHES = [
    ({"eq": ["region", "eu"]}, EU, True),
    ({"eq": ["region", "eu"]}, US, False),
    ({"eq": ["missing", "eu"]}, EU, False),
    ({"in": ["symbol", ["A", "C"]]}, EU, True),
    ({"in": ["symbol", ["A", "C"]]}, US, False),
    ({"not": {"eq": ["region", "eu"]}}, US, True),
    ({"not": {"eq": ["missing", "x"]}}, {}, True),
    ({"and": [{"eq": ["region", "eu"]}, {"eq": ["symbol", "A"]}]}, EU, True),
    ({"and": [{"eq": ["region", "eu"]}, {"eq": ["symbol", "B"]}]}, EU, False),
    ({"or": [{"eq": ["region", "us"]}, {"eq": ["symbol", "A"]}]}, EU, True),
    ({"or": [{"eq": ["region", "us"]}, {"eq": ["symbol", "B"]}]}, EU, False),
    ({"eq": ["region", "eu"]}, {}, False),
]


@pytest.mark.parametrize(("tree", "tags", "expected"), MATCHES)
def test_matches(tree: Any, tags: dict[str, str], expected: bool) -> None:
    assert parse_filter(tree).matches(tags) is expected
    assert parse_filter(json.dumps(tree)).matches(tags) is expected  # as query-string text


BAD = [
    ("not json", "not JSON"),
    ([], "one operator"),
    ({}, "one operator"),
    ({"eq": ["a", "b"], "in": ["a", ["b"]]}, "one operator"),
    ({"eq": ["a"]}, "eq takes"),
    ({"eq": ["a", 1]}, "eq takes"),
    ({"eq": [1, "a"]}, "eq takes"),
    ({"in": ["a", []]}, "in takes"),
    ({"in": ["a", "b"]}, "in takes"),
    ({"in": ["a", [1]]}, "in takes"),
    ({"in": ["a", ["x"] * (MAX_IN_VALUES + 1)]}, "in takes"),
    ({"and": []}, "one or more"),
    ({"or": {"eq": ["a", "b"]}}, "one or more"),
    ({"regex": ["a", ".*"]}, "unknown operator"),
    ({"eval": "1+1"}, "unknown operator"),
]


@pytest.mark.parametrize(("tree", "message"), BAD)
def test_bad_filters_are_refused_with_code_118(tree: Any, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(tree)
    assert info.value.code == ErrorCode.BAD_FILTER and int(ErrorCode.BAD_FILTER) == 118
    assert message in info.value.message


def test_depth_nodes_and_size_are_capped() -> None:
    leaf: Any = {"eq": ["a", "b"]}
    deep = leaf
    for _ in range(MAX_FILTER_DEPTH - 1):
        deep = {"not": deep}
    parse_filter(deep)  # at the cap
    with pytest.raises(FilterError, match="deeper"):
        parse_filter({"not": deep})
    wide = {"or": [{"eq": ["a", str(i)]} for i in range(MAX_FILTER_NODES - 1)]}
    parse_filter(wide)
    with pytest.raises(FilterError, match="operators"):
        parse_filter({"or": [{"eq": ["a", str(i)]} for i in range(MAX_FILTER_NODES)]})
    big = {"in": ["a", ["x" * 100 + str(i) for i in range(MAX_IN_VALUES)]]}
    with pytest.raises(FilterError, match="bytes"):
        parse_filter(big)
    with pytest.raises(FilterError):  # a parser's recursion limit is no crash either
        parse_filter("[" * 100000)


def test_canonical_key_ignores_order_and_repeats() -> None:
    one = parse_filter(
        {"or": [{"in": ["s", ["B", "A", "A"]]}, {"and": [{"eq": ["r", "eu"]}, {"eq": ["t", "x"]}]}]}
    )
    two = parse_filter(
        {"or": [{"and": [{"eq": ["t", "x"]}, {"eq": ["r", "eu"]}]}, {"in": ["s", ["A", "B"]]}]}
    )
    assert one.key == two.key
    assert one.size == len(one.key.encode())
    assert parse_filter({"eq": ["r", "eu"]}).key != parse_filter({"eq": ["r", "us"]}).key


def test_rule_checks() -> None:
    small = parse_filter({"eq": ["region", "eu"]})
    check_filter_allowed(ChannelRule("a", filter_max_size=0), small)
    check_filter_allowed(ChannelRule("a", filter_max_size=small.size), small)
    check_filter_allowed(ChannelRule("a", filters=False), None)  # no filter: nothing to say
    with pytest.raises(ChannelError) as info:
        check_filter_allowed(ChannelRule("a", filters=False), small)
    assert info.value.code == ErrorCode.PERMISSION_DENIED
    with pytest.raises(FilterError, match="at most 10"):
        check_filter_allowed(ChannelRule("a", filter_max_size=10), small)


def test_tags_are_checked() -> None:
    assert check_tags(None) is None
    assert check_tags({}) is None
    assert check_tags({"region": "eu"}) == {"region": "eu"}
    for bad in (
        ["region"],
        {"region": 1},
        {"": "x"},
        {"k" * 65: "x"},
        {"region": "x" * (MAX_TAG_VALUE + 1)},
        {str(i): "x" for i in range(MAX_TAGS + 1)},
    ):
        with pytest.raises(ChannelError) as info:
            check_tags(bad)
        assert info.value.code == ErrorCode.BAD_REQUEST


_NAMES = st.sampled_from(["region", "symbol", "tier"])
_VALUES = st.sampled_from(["eu", "us", "A", "B", ""])
_LEAVES = st.one_of(
    st.tuples(_NAMES, _VALUES).map(lambda t: {"eq": list(t)}),
    st.tuples(_NAMES, st.lists(_VALUES, min_size=1, max_size=4)).map(
        lambda t: {"in": [t[0], t[1]]}
    ),
)
_TREES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda m: {"and": m}),
        st.lists(inner, min_size=1, max_size=3).map(lambda m: {"or": m}),
        inner.map(lambda t: {"not": t}),
    ),
    max_leaves=8,
)
_TAGS = st.dictionaries(_NAMES, _VALUES, max_size=3)


@settings(max_examples=300, deadline=None)
@given(_TREES, _TAGS)
def test_compiled_filter_agrees_with_the_reference(tree: Any, tags: dict[str, str]) -> None:
    try:
        compiled = parse_filter(tree)
    except FilterError:
        return  # past a cap (depth): refused, which is what caps are for
    assert compiled.matches(tags) is reference_match(tree, tags)
    again = parse_filter(json.loads(compiled.key))  # the canonical form means the same
    assert again.key == compiled.key and again.matches(tags) is compiled.matches(tags)


def _counted(tree: Any, calls: list[str]) -> TagFilter:
    """`parse_filter(tree)` whose evaluations are recorded in `calls`."""
    tag_filter = parse_filter(tree)
    inner = tag_filter.matches

    def counted(tags: Any) -> bool:
        calls.append(tag_filter.key)
        return bool(inner(tags))

    tag_filter.matches = counted
    return tag_filter


def test_groups_share_one_evaluation_per_distinct_filter() -> None:
    calls: list[str] = []
    groups: FilterGroups[str] = FilterGroups()
    assert not groups.filtered
    groups.add("plain", None)
    assert not groups.filtered
    for i in range(100):
        region = "eu" if i % 2 else "us"
        groups.add(f"not{i}", _counted({"not": {"eq": ["region", region]}}, calls))
        groups.add(f"eq{i}", _counted({"eq": ["region", region]}, calls))
        groups.add(f"in{i}", _counted({"in": ["region", [region, "ap"]]}, calls))
    assert groups.filtered and len(groups) == 7
    got = groups.matching({"region": "eu"})
    assert len(calls) == 2  # the two `not` filters; `eq` and `in` are looked up
    odd = range(1, 100, 2)
    wanted = {"plain"} | {f"not{i}" for i in range(0, 100, 2)}
    wanted |= {f"eq{i}" for i in odd} | {f"in{i}" for i in odd}
    assert set(got) == wanted and len(got) == len(wanted)
    assert set(groups.matching({"region": "ap"})) == {"plain"} | {f"not{i}" for i in range(100)} | {
        f"in{i}" for i in range(100)
    }
    assert groups.filter_of("eq1") is not None and groups.filter_of("plain") is None
    for i in range(100):
        for kind in ("not", "eq", "in"):
            groups.remove(f"{kind}{i}")
    groups.remove("eq1")  # twice is harmless
    assert not groups.filtered and len(groups) == 1
    assert groups.matching(None) == ["plain"]
    assert groups._by_value == {} and groups._evaluated == {}  # nothing left behind


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), _TREES), min_size=1, max_size=12), _TAGS, st.data())
def test_groups_deliver_what_each_filter_alone_would(
    trees: list[Any], tags: dict[str, str], data: st.DataObject
) -> None:
    groups: FilterGroups[int] = FilterGroups()
    filters: dict[int, TagFilter | None] = {}
    for i, tree in enumerate(trees):
        try:
            filters[i] = None if tree is None else parse_filter(tree)
        except FilterError:
            continue
        groups.add(i, filters[i])
    for i in data.draw(st.lists(st.sampled_from(sorted(filters)), unique=True)) if filters else []:
        groups.remove(i)
        del filters[i]
    got = groups.matching(tags)
    assert len(got) == len(set(got))
    assert set(got) == {i for i, f in filters.items() if f is None or f.matches(tags)}


def test_an_and_with_an_eq_is_evaluated_only_when_its_value_comes() -> None:
    calls: list[str] = []
    groups: FilterGroups[int] = FilterGroups()
    for i in range(50):
        tree = {"and": [{"eq": ["group", str(i)]}, {"not": {"eq": ["muted", "yes"]}}]}
        groups.add(i, _counted(tree, calls))
    assert parse_filter(tree).lookup == ("group", frozenset({"49"}))
    assert groups.matching({"group": "7"}) == [7] and len(calls) == 1
    assert groups.matching({"group": "7", "muted": "yes"}) == [] and len(calls) == 2
    assert groups.matching({"other": "7"}) == [] and len(calls) == 2  # found none: no call
    narrowest = parse_filter({"and": [{"in": ["a", ["1", "2"]]}, {"eq": ["b", "3"]}]})
    assert narrowest.lookup == ("b", frozenset({"3"})) and not narrowest.exact
    assert parse_filter({"or": [{"eq": ["a", "1"]}]}).exact  # one member: the eq itself
    assert parse_filter({"or": [{"eq": ["a", "1"]}, {"eq": ["b", "1"]}]}).lookup is None


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["eq", "in", "and", "or", "not", "x"]), inner, max_size=2)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_any_json_is_a_filter_or_a_filter_error(value: Any) -> None:
    try:
        tag_filter = parse_filter(value)
    except FilterError as error:
        assert error.code == ErrorCode.BAD_FILTER and error.message.startswith("bad filter: ")
        return
    assert isinstance(tag_filter.matches({"a": "b"}), bool)
    assert parse_filter(tag_filter.key).key == tag_filter.key  # the canonical form is stable
