"""Channels: rules, the Hub, the wire protocol and its transports (/rt/ws, SSE, long polling,
the publish API). The names an app uses are exported by `rtserve` itself."""
