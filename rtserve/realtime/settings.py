"""Settings of an App's channel layer (the rules of each channel are in `rules.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rtserve.schema import opt


@dataclass(slots=True)
class ChannelSettings:
    """How clients reach the channels and prove who they are.

    prefix: where the endpoints live (`{prefix}/ws`, `{prefix}/publish`).
    token_secret: HMAC secret(s) for tokens, newest first (None: tokens are not accepted).
    require_token: a connect without a valid token is refused.
    api_key: key(s) for the HTTP publish API (None: the API answers 403).
    max_connections_per_user: open connections one user may hold (0: no limit).
    max_subscriptions: channels one /rt/ws connection may be subscribed to (0: no limit).
    publish_rate_per_ip / publish_burst_per_ip: a token bucket per client address over all its
    publications (WebSocket and HTTP), on top of each rule's per-connection `publish_rate`.
    rpc_rate / rpc_burst: a token bucket per connection over its `rpc` calls (111 beyond).
    connect_timeout: seconds a new connection has to send `connect` (close 4006 after).
    presence_digest_interval: seconds between the batched presence pushes of big channels.
    sse_heartbeat: seconds between the heartbeat comments of an SSE stream.
    heartbeat: seconds between the `ping` pushes to a protocol 2 WebSocket client (0: none),
    so a browser notices a dead connection.
    poll_timeout: seconds a long poll waits by default (a poll may ask for up to 60).
    cors_origins: Origins allowed to use the SSE, poll, history, presence and client publish
    endpoints from a browser page of another origin (`*` for any; empty: no CORS headers).
    """

    prefix: str = opt("/rt", "where the endpoints live: {prefix}/ws, {prefix}/publish")
    token_secret: str | list[str] | None = opt(
        None, "HMAC secret(s) for tokens, newest first, 32+ characters (null: no tokens)"
    )
    require_token: bool = opt(False, "refuse a connect without a valid token")
    api_key: str | list[str] | None = opt(
        None, "key(s) of the HTTP publish API (null: the API answers 403)"
    )
    max_connections_per_user: int = opt(0, "open connections one user may hold (0: any)")
    max_subscriptions: int = opt(
        1000, "channels one WebSocket connection may subscribe to at once (0: any)"
    )
    publish_rate_per_ip: float = opt(
        0.0,
        "client publications per second from one IP address, all its connections and "
        "channels together (0: any)",
    )
    publish_burst_per_ip: int = opt(
        0, "publications one IP address may send at once (0: the rate, rounded up)"
    )
    rpc_rate: float = opt(0.0, "rpc calls per second one connection may make (0: any)")
    rpc_burst: int = opt(10, "rpc calls a connection may make at once before the rate applies")
    connect_timeout: float = opt(
        10.0, "seconds a new connection has to send connect (then 4006)", duration=True
    )
    presence_digest_interval: float = opt(
        1.0, "seconds between the batched presence pushes of big channels", duration=True
    )
    sse_heartbeat: float = opt(
        15.0, "seconds between the ': ping' comments of an SSE stream", duration=True
    )
    heartbeat: float = opt(
        25.0,
        "seconds between the ping pushes to protocol 2 WebSocket clients (0: none)",
        duration=True,
    )
    poll_timeout: float = opt(
        25.0, "seconds a long poll waits when it gives no timeout= (at most 60)", duration=True
    )
    cors_origins: list[str] = field(
        default_factory=list,
        metadata={"help": "Origins the HTTP client endpoints answer with CORS headers ('*': any)"},
    )

    def __post_init__(self) -> None:
        from rtserve.tokens import MIN_SECRET_LENGTH

        # An empty value (`${VAR:-}` with VAR unset) means "not set".
        if self.token_secret == "":
            self.token_secret = None
        if self.api_key == "":
            self.api_key = None

        for secret in self.secrets():
            if len(secret) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"token_secret must be at least {MIN_SECRET_LENGTH} characters "
                    f"(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
                )
        if self.sse_heartbeat <= 0 or not 0 < self.poll_timeout <= 60:
            raise ValueError("sse_heartbeat must be > 0 and poll_timeout in (0, 60]")
        if self.heartbeat < 0:
            raise ValueError("heartbeat must be >= 0 (0: no ping pushes)")
        if not self.prefix.startswith("/"):
            raise ValueError(f"prefix must start with '/': {self.prefix!r}")

    def secrets(self) -> list[str]:
        secret = self.token_secret
        return [] if secret is None else [secret] if isinstance(secret, str) else list(secret)

    def api_keys(self) -> list[str]:
        key = self.api_key
        return [] if key is None else [key] if isinstance(key, str) else list(key)
