"""Channel rules: what a channel keeps and allows, matched to channel names by pattern.

A pattern is a literal name (`news`), or has `{name}` parts, each matching one run of
characters without `:` (`user:{id}`), and `*` matching any run, `:` included (`chat:*`). A
literal rule wins over patterns; among patterns the first added wins. A channel name that
matches no rule is refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from rtserve.broker.base import PublishOptions
from rtserve.realtime.protocol import CHANNEL_CHARACTERS, MAX_CHANNEL_LENGTH
from rtserve.schema import OptionError, opt, ref

PUBLISHERS = ("server", "clients")
SLOW_CONSUMER_POLICIES = ("disconnect", "drop_oldest", "conflate")
DELTA_FORMATS = ("fossil",)
HOOKS = ("on_subscribe", "on_publish", "on_join", "on_leave")
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NOT_IN_NAMES = re.compile(rf"[^{CHANNEL_CHARACTERS}]")


@dataclass(slots=True, eq=False)
class ChannelRule:
    """The settings of the channels a pattern matches.

    history / history_ttl: publications kept for recovery and `history` (count, seconds).
    presence: who is subscribed can be asked; join_leave: subscribers get join/leave pushes
    (batched into one `presence` push a second once the channel has more than
    `presence_digest` subscribers on a node). publish: "server" (only the app and the publish
    API) or "clients" too. token: subscribing needs a token whose channels allow the name.
    max_message_size: bytes of a client publication's JSON data. publish_rate / publish_burst:
    client publications per second per connection (0: no limit). max_subscribers: per node
    (0: no limit). slow_consumer: what happens to a subscriber that cannot keep up —
    "disconnect" (close 4004), "drop_oldest" (keep its newest `max_pending` messages) or
    "conflate" (keep only the latest per `conflate_key` of the data, or per channel).
    delta: "fossil" lets a subscriber ask for each publication as a fossil delta from the one
    before it (see realtime/delta.py).
    Hooks (sync or async): on_subscribe(ctx) / on_publish(ctx) refuse by raising
    ChannelError; on_publish may return new data; on_join(ctx) / on_leave(ctx) observe.
    filters / filter_max_size / max_filters: whether subscribers may pass a filter over
    publication tags, the largest one (bytes of its canonical JSON), and how many distinct
    filters the channel holds at once (each costs every publication one lookup or evaluation).
    """

    pattern: str = dataclasses.field(
        metadata={"help": "channel names this rule covers: literal, 'chat:*' or 'user:{id}'"}
    )
    history: int = opt(0, "publications kept for recovery and history (0: none)")
    history_ttl: float = opt(300.0, "seconds a kept publication lives", duration=True)
    presence: bool = opt(False, "who is subscribed can be asked (presence, presence_stats)")
    join_leave: bool = opt(False, "subscribers get join and leave pushes")
    presence_digest: int = opt(
        100, "above this many subscribers on a node, joins/leaves come batched each interval"
    )
    publish: Literal["server", "clients"] = opt(
        "server", "who may publish: 'server' (app and publish API) or 'clients' too"
    )
    token: bool = opt(False, "subscribing needs a token whose channels allow the name")
    max_message_size: int = opt(65536, "largest client publication, bytes of JSON data", size=True)
    publish_rate: float = opt(0.0, "client publications per second per connection (0: any)")
    publish_burst: int = opt(10, "publications a client may send at once before the rate applies")
    max_subscribers: int = opt(0, "subscribers per node (0: no limit)")
    slow_consumer: Literal["disconnect", "drop_oldest", "conflate"] = opt(
        "disconnect", "a subscriber that cannot keep up: 'disconnect', 'drop_oldest', 'conflate'"
    )
    max_pending: int = opt(1000, "messages held back for a slow subscriber before dropping")
    conflate_key: str | None = opt(
        None, "field of the data whose latest value conflation keeps (None: one per channel)"
    )
    filters: bool = opt(True, "subscribers may pass a tag filter (false: refused, code 103)")
    filter_max_size: int = opt(
        1024, "largest tag filter a subscriber may pass, bytes of its JSON (0: 8 KiB)", size=True
    )
    max_filters: int = opt(
        1000, "distinct tag filters a channel holds at once in one process (0: no limit)"
    )
    delta: str | None = opt(
        None, "subscribers may ask for fossil deltas from the previous publication (None: no)"
    )
    on_subscribe: Callable[..., Any] | None = ref("may refuse a subscription (ChannelError)")
    on_publish: Callable[..., Any] | None = ref(
        "validates, transforms or stores a client publication; may refuse it"
    )
    on_join: Callable[..., Any] | None = ref("called after a client subscribed")
    on_leave: Callable[..., Any] | None = ref("called after a client unsubscribed or left")
    publish_options: PublishOptions = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.publish not in PUBLISHERS:
            raise ValueError(f"publish must be one of {PUBLISHERS}, not {self.publish!r}")
        if self.slow_consumer not in SLOW_CONSUMER_POLICIES:
            raise ValueError(
                f"slow_consumer must be one of {SLOW_CONSUMER_POLICIES}, not {self.slow_consumer!r}"
            )
        for name in (
            "history",
            "max_message_size",
            "max_subscribers",
            "publish_burst",
            "filter_max_size",
            "max_filters",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.delta is not None and self.delta not in DELTA_FORMATS:
            raise OptionError(
                "delta", f"must be one of {DELTA_FORMATS} or null, not {self.delta!r}"
            )
        if self.max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if self.history_ttl < 0 or self.publish_rate < 0:
            raise ValueError("history_ttl and publish_rate must be >= 0")
        check_pattern(self.pattern)
        self.publish_options = PublishOptions(
            history_size=self.history, history_ttl=self.history_ttl if self.history else 0.0
        )

    def publish_options_for(self, idempotency_key: str | None) -> PublishOptions:
        if idempotency_key is None:
            return self.publish_options
        return dataclasses.replace(self.publish_options, idempotency_key=idempotency_key)


RULE_OPTIONS = frozenset(f.name for f in dataclasses.fields(ChannelRule)) - {
    "pattern",
    "publish_options",
}


def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """The regex of a pattern, or None for a literal name."""
    if "*" not in pattern and "{" not in pattern:
        return None
    out = []
    pos = 0
    for m in _PARAM.finditer(pattern):
        out.append(_literal(pattern[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>[^:]+)")
        pos = m.end()
    out.append(_literal(pattern[pos:]))
    return re.compile("".join(out) + r"\Z")


def check_pattern(pattern: str) -> None:
    """OptionError for a pattern no channel name can match (a character names may not have,
    a literal longer than a name may be, a malformed `{name}`)."""
    try:
        compile_pattern(pattern)
    except ValueError as exc:
        raise OptionError("pattern", str(exc)) from None
    bare = _PARAM.sub("", pattern).replace("*", "")
    bad = sorted(set(_NOT_IN_NAMES.findall(bare)))
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        raise OptionError(
            "pattern",
            f"{shown} cannot be in a channel name (only A-Z a-z 0-9 _ - : . @ / = + # ! ~ $), "
            f"so {pattern!r} would match none",
        )
    if not pattern or len(bare) > MAX_CHANNEL_LENGTH:
        raise OptionError(
            "pattern", f"a channel name has 1 to {MAX_CHANNEL_LENGTH} characters: {pattern[:40]!r}"
        )


def _literal(text: str) -> str:
    if "{" in text or "}" in text:
        raise ValueError(f"bad parameter in channel pattern near {text!r}")
    return ".+".join(re.escape(part) for part in text.split("*"))


class ChannelRules:
    """The rules of one App, looked up by channel name (results cached)."""

    def __init__(self) -> None:
        self._literal: dict[str, ChannelRule] = {}
        self._patterns: list[tuple[re.Pattern[str], ChannelRule]] = []
        self._cache: dict[str, tuple[ChannelRule, dict[str, str]] | None] = {}

    def __len__(self) -> int:
        return len(self._literal) + len(self._patterns)

    def __iter__(self) -> Any:
        yield from self._literal.values()
        for _, rule in self._patterns:
            yield rule

    def add(self, rule: ChannelRule) -> ChannelRule:
        if any(r.pattern == rule.pattern for r in self):
            raise ValueError(f"channel pattern {rule.pattern!r} is defined twice")
        regex = compile_pattern(rule.pattern)
        if regex is None:
            self._literal[rule.pattern] = rule
        else:
            self._patterns.append((regex, rule))
        self._cache.clear()
        return rule

    def match(self, channel: str) -> tuple[ChannelRule, dict[str, str]] | None:
        """The rule for `channel` and the values of its `{name}` parts, or None."""
        try:
            return self._cache[channel]
        except KeyError:
            pass
        found: tuple[ChannelRule, dict[str, str]] | None = None
        rule = self._literal.get(channel)
        if rule is not None:
            found = (rule, {})
        else:
            for regex, rule in self._patterns:
                m = regex.match(channel)
                if m is not None:
                    found = (rule, m.groupdict())
                    break
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[channel] = found
        return found
