"""Trusted reverse proxies: forwarded client address and scheme, believed only from them."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from rtserve.protocol.http11 import Header

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Decides the real client address and scheme of a request.

    Forwarding headers (`Forwarded`, else `X-Forwarded-For`/`X-Forwarded-Proto`) are used only
    when the direct peer is in `networks`; the client is the right-most untrusted address.
    """

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def is_trusted(self, address: str) -> bool:
        """True when `address` (an IP literal; anything else is untrusted) is a proxy of ours."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def resolve(self, peer: str, scheme: str, headers: list[Header]) -> tuple[str, str]:
        """(client address, scheme) for a request that reached us from `peer`."""
        if not self.networks or not self.is_trusted(peer):
            return peer, scheme
        chain: list[str] = []
        protos: list[str] = []
        forwarded = [v for n, v in headers if n.lower() == b"forwarded"]
        if forwarded:
            for element in b",".join(forwarded).decode("latin-1").split(","):
                pairs = _forwarded_pairs(element)
                if "for" in pairs:
                    chain.append(_strip_port(pairs["for"]))
                if "proto" in pairs:
                    protos.append(pairs["proto"].lower())
        else:
            for name, value in headers:
                lname = name.lower()
                if lname == b"x-forwarded-for":
                    chain.extend(p.strip() for p in value.decode("latin-1").split(","))
                elif lname == b"x-forwarded-proto":
                    protos.extend(p.strip().lower() for p in value.decode("latin-1").split(","))
        client = peer
        for hop in reversed([h for h in chain if h]):
            client = hop
            if not self.is_trusted(hop):
                break
        if protos and protos[-1] in ("http", "https", "ws", "wss"):
            scheme = protos[-1]
        return client, scheme


def _forwarded_pairs(element: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in element.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            pairs[key.strip().lower()] = value.strip().strip('"')
    return pairs


def _strip_port(node: str) -> str:
    if node.startswith("["):  # [v6]:port
        return node[1 : node.find("]")] if "]" in node else node
    if node.count(":") == 1:
        return node.split(":", 1)[0]
    return node
