"""What the app's hooks are given: who is asking, for which channel, with which data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rtserve.broker.base import ClientInfo

if TYPE_CHECKING:
    from rtserve.app.request import Request
    from rtserve.tokens import TokenClaims


@dataclass(slots=True)
class ConnectContext:
    """Given to `on_connect`: the upgrade request, the verified token (if any), the data the
    client sent with `connect`. Return a `ConnectResult` (or None to accept as is) or raise
    ChannelError to refuse."""

    request: Request | None
    claims: TokenClaims | None
    data: Any = None


@dataclass(slots=True)
class ConnectResult:
    """Who the connection is: the user id and the info shown in presence; `data` (any JSON
    value) goes back to the client in the `connect` result of protocol 2 (WebSocket only)."""

    user: str | None = None
    info: dict[str, Any] | None = None
    data: Any = None


@dataclass(slots=True)
class RpcContext:
    """Given to an `rpc` handler (`@app.rpc(method)`): the method, the `data` the client sent
    (None without), who is calling. Return the reply's data (any JSON value, None too), or
    raise ChannelError to refuse."""

    method: str
    data: Any
    client: ClientInfo
    claims: TokenClaims | None = None
    request: Request | None = None

    @property
    def user(self) -> str | None:
        return self.client.user


@dataclass(slots=True)
class ChannelContext:
    """Given to the hooks of a channel rule.

    `params` are the `{name}` parts of the rule's pattern; `data` is the publication for
    `on_publish` (return new data to replace it); `request` is None for server-side calls.
    """

    channel: str
    params: dict[str, str]
    client: ClientInfo
    claims: TokenClaims | None = None
    request: Request | None = None
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def user(self) -> str | None:
        return self.client.user

    @property
    def token_user(self) -> str | None:
        """The user when the token vouches for it; None for an anonymous client and for one
        named otherwise (`on_connect` may take any name the client sends)."""
        return token_user(self.client, self.claims)


def token_user(client: ClientInfo, claims: TokenClaims | None) -> str | None:
    """`client`'s user when its token `claims` vouch for it, else None."""
    if claims is not None and claims.user is not None and claims.user == client.user:
        return claims.user
    return None
