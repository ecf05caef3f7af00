"""permessage-deflate (RFC 7692): negotiation tables, round trips in every context-takeover
mode, interoperability with the `websockets` library's own implementation, and limits."""

from __future__ import annotations

import os
import random
import time
import tracemalloc
import zlib
from dataclasses import replace
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    enable_client_permessage_deflate,
)
from websockets.extensions.permessage_deflate import PerMessageDeflate as WsDeflate
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension

from rtserve.protocol.deflate import (
    DeflateConfig,
    DeflateError,
    DeflateParams,
    PerMessageDeflate,
    compress_for_broadcast,
    negotiate,
    parse_extensions,
)

DEFAULT = DeflateConfig()
MiB = 1024 * 1024


def text_messages(count: int, seed: int = 0) -> list[bytes]:
    """JSON-ish messages that share vocabulary, as a real-time app sends them."""
    rng = random.Random(seed)
    words = ["channel", "presence", "message", "user", "offset", "epoch", "typing", "chat"]
    out = []
    for i in range(count):
        body = " ".join(rng.choice(words) for _ in range(rng.randint(0, 400)))
        out.append(f'{{"seq": {i}, "data": "{body}"}}'.encode())
    return out


def mirror(params: DeflateParams) -> DeflateParams:
    """The client's view: its compressor follows the client_* params, its inflater server_*."""
    return DeflateParams(
        server_no_context_takeover=params.client_no_context_takeover,
        client_no_context_takeover=params.server_no_context_takeover,
        server_max_window_bits=params.client_max_window_bits,
        client_max_window_bits=params.server_max_window_bits,
    )


# --- negotiation ----------------------------------------------------------------------------

WEBSOCKETS_DEFAULT_OFFER = build_extension(
    [
        (factory.name, factory.get_request_params())
        for factory in enable_client_permessage_deflate(None)
    ]
)

NEGOTIATION = [
    # (header values, config, response, params(snct, cnct, sbits, cbits))
    pytest.param(
        ["permessage-deflate; client_max_window_bits"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        (True, False, 15, 15),
        id="chrome",
    ),
    pytest.param(
        ["permessage-deflate"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover",
        (True, False, 15, 15),
        id="firefox",
    ),
    pytest.param(
        [WEBSOCKETS_DEFAULT_OFFER],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        (True, False, 15, 15),
        id="websockets-default",
    ),
    pytest.param(
        ["permessage-deflate; server_max_window_bits=10"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, False, 10, 15),
        id="server-bits-10",
    ),
    pytest.param(
        ["permessage-deflate; server_max_window_bits=8"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=8",
        (True, False, 8, 15),
        id="server-bits-8",
    ),
    pytest.param(
        ["permessage-deflate; client_max_window_bits=10"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        (True, False, 15, 10),
        id="client-bits-10",
    ),
    pytest.param(
        ["permessage-deflate; client_max_window_bits=8"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=8",
        (True, False, 15, 8),
        id="client-offers-8",
    ),
    pytest.param(
        ["permessage-deflate; client_no_context_takeover; server_no_context_takeover"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, True, 15, 15),
        id="both-no-context-takeover",
    ),
    pytest.param(
        ['permessage-deflate; server_max_window_bits="12"; client_max_window_bits="11"'],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
        "client_max_window_bits=11",
        (True, False, 12, 11),
        id="quoted-values",
    ),
    pytest.param(
        ['permessage-deflate;server_max_window_bits="\\1\\1"'],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        (True, False, 11, 15),
        id="quoted-pair",
    ),
    pytest.param(
        ["permessage-deflate ;\tclient_max_window_bits = 9 "],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
        (True, False, 15, 9),
        id="whitespace",
    ),
    pytest.param(
        ["permessage-deflate"],
        DeflateConfig(server_no_context_takeover=False),
        "permessage-deflate",
        (False, False, 15, 15),
        id="config-context-takeover",
    ),
    pytest.param(
        ["permessage-deflate; server_no_context_takeover"],
        DeflateConfig(server_no_context_takeover=False),
        "permessage-deflate; server_no_context_takeover",
        (True, False, 15, 15),
        id="client-asks-no-server-context-takeover",
    ),
    pytest.param(
        ["permessage-deflate"],
        DeflateConfig(server_max_window_bits=12),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        (True, False, 12, 15),
        id="config-server-bits",
    ),
    pytest.param(
        ["permessage-deflate; server_max_window_bits=14"],
        DeflateConfig(server_max_window_bits=12),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
        (True, False, 12, 15),
        id="config-server-bits-below-offer",
    ),
    pytest.param(
        ["permessage-deflate; server_max_window_bits=10"],
        DeflateConfig(server_max_window_bits=12),
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, False, 10, 15),
        id="offer-below-config-server-bits",
    ),
    pytest.param(
        ["permessage-deflate; client_max_window_bits"],
        DeflateConfig(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        (True, False, 15, 10),
        id="config-client-bits",
    ),
    pytest.param(
        ["permessage-deflate; client_max_window_bits=9"],
        DeflateConfig(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
        (True, False, 15, 9),
        id="offer-below-config-client-bits",
    ),
    pytest.param(
        ["permessage-deflate"],
        DeflateConfig(client_max_window_bits=10),
        "permessage-deflate; server_no_context_takeover",
        (True, False, 15, 15),
        id="config-client-bits-not-offered",
    ),
    pytest.param(
        ["permessage-deflate"],
        DeflateConfig(client_no_context_takeover=True),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        (True, True, 15, 15),
        id="config-client-no-context-takeover",
    ),
    pytest.param(
        [b"permessage-deflate; client_max_window_bits"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        (True, False, 15, 15),
        id="bytes-header",
    ),
    # several offers: the first acceptable one wins
    pytest.param(
        ["permessage-deflate; server_max_window_bits=7,permessage-deflate; client_max_window_bits"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=15",
        (True, False, 15, 15),
        id="first-invalid-second-accepted",
    ),
    pytest.param(
        ["permessage-deflate; foo=1", "permessage-deflate; server_max_window_bits=11"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=11",
        (True, False, 11, 15),
        id="across-header-values",
    ),
    pytest.param(
        ["permessage-deflate; server_max_window_bits=10, permessage-deflate"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10",
        (True, False, 10, 15),
        id="first-acceptable-wins",
    ),
    pytest.param(
        ['x-custom; a="1, permessage-deflate; foo", permessage-deflate'],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover",
        (True, False, 15, 15),
        id="comma-inside-quotes",
    ),
    pytest.param(
        ["x-webkit-deflate-frame, permessage-deflate ;; broken, , permessage-deflate"],
        DEFAULT,
        "permessage-deflate; server_no_context_takeover",
        (True, False, 15, 15),
        id="other-and-broken-elements-skipped",
    ),
]


@pytest.mark.parametrize(("headers", "config", "response", "expected"), NEGOTIATION)
def test_negotiation(
    headers: list[str | bytes],
    config: DeflateConfig,
    response: str,
    expected: tuple[bool, bool, int, int],
) -> None:
    result = negotiate(headers, config)
    assert result is not None
    params, header = result
    assert header == response
    assert params == DeflateParams(*expected)
    # The response is valid syntax for an independent parser.
    [(name, _)] = parse_extension(header)
    assert name == "permessage-deflate"


REFUSED = [
    "",
    "x-webkit-deflate-frame",
    "permessage-deflate; foo",
    "permessage-deflate; foo=1",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
    "permessage-deflate; server_no_context_takeover=1",
    'permessage-deflate; client_no_context_takeover="true"',
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=08",
    "permessage-deflate; server_max_window_bits=+9",
    "permessage-deflate; server_max_window_bits=abc",
    'permessage-deflate; server_max_window_bits=""',
    'permessage-deflate; server_max_window_bits="1 0"',
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=0",
    "permessage-deflate;",
    "permessage-deflate; =10",
    "permessage-deflate client_max_window_bits",
    'permessage-deflate; server_max_window_bits="10',
    "; permessage-deflate",
    "PERMESSAGE-DEFLATE",
    "permessage-deflate\x00",
]


@pytest.mark.parametrize("header", REFUSED)
def test_invalid_offers_refused(header: str) -> None:
    assert negotiate([header], DEFAULT) is None
    # ... without hiding a valid offer in a later header value
    assert negotiate([header, "permessage-deflate"], DEFAULT) is not None


def test_disabled_config_negotiates_nothing() -> None:
    assert negotiate(["permessage-deflate"], DeflateConfig(enabled=False)) is None
    assert negotiate([], DEFAULT) is None


def test_parse_extensions() -> None:
    assert parse_extensions('a; b; c=1; d="x\\"y" , , e, f g, h;i') == [
        None,  # the unquoted value x"y is not a token
        ("e", []),
        None,
        ("h", [("i", None)]),
    ]
    assert parse_extensions('a; b; c=1; d="xy",b') == [
        ("a", [("b", None), ("c", "1"), ("d", "xy")]),
        ("b", []),
    ]
    assert parse_extensions("") == []
    assert parse_extensions(" , ,") == []


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_negotiate_never_raises(header: str) -> None:
    for prefix in ("", "permessage-deflate; ", "permessage-deflate, "):
        result = negotiate([prefix + header], DEFAULT)
        if result is not None:
            assert parse_extension(result[1])[0][0] == "permessage-deflate"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"server_max_window_bits": 7},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 8},
        {"compress_level": 10},
        {"mem_level": 0},
        {"min_size": -1},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DeflateConfig(**kwargs)


def test_params_validation() -> None:
    with pytest.raises(ValueError):
        DeflateParams(True, True, 7, 15)
    with pytest.raises(ValueError):
        DeflateParams(True, True, 15, 16)


# --- round trips -------------------------------------------------------------------------------

MODES = [
    pytest.param(snct, cnct, id=f"server_nct={snct}-client_nct={cnct}")
    for snct in (True, False)
    for cnct in (True, False)
]


@pytest.mark.parametrize(("server_nct", "client_nct"), MODES)
@pytest.mark.parametrize("bits", [(15, 15), (8, 8), (10, 12)])
def test_round_trip_every_mode(server_nct: bool, client_nct: bool, bits: tuple[int, int]) -> None:
    params = DeflateParams(server_nct, client_nct, *bits)
    server = PerMessageDeflate(params, DEFAULT)
    client = PerMessageDeflate(mirror(params), DEFAULT)
    for message in [*text_messages(40), b"", b"x", os.urandom(5000), b"\0" * 70000]:
        assert client.decompress(server.compress(message), len(message)) == message
        assert server.decompress(client.compress(message), len(message)) == message


@pytest.mark.parametrize(("server_nct", "client_nct"), MODES)
def test_context_takeover_carries_state(server_nct: bool, client_nct: bool) -> None:
    params = DeflateParams(server_nct, client_nct, 15, 15)
    server = PerMessageDeflate(params, DEFAULT)
    client = PerMessageDeflate(mirror(params), DEFAULT)
    message = text_messages(1, seed=7)[0] + os.urandom(200)
    down = [server.compress(message) for _ in range(3)]
    up = [client.compress(message) for _ in range(3)]
    if server_nct:
        assert down[0] == down[1] == down[2]
    else:
        assert len(down[1]) < len(down[0]) // 4
    if client_nct:
        assert up[0] == up[1] == up[2]
    else:
        assert len(up[1]) < len(up[0]) // 4
    assert [client.decompress(d, MiB) for d in down] == [message] * 3
    assert [server.decompress(u, MiB) for u in up] == [message] * 3


def test_empty_message_is_one_byte() -> None:
    # An empty stored block less its 4-octet tail: the single octet 0x00 of RFC 7692's example.
    server = PerMessageDeflate(DeflateParams(True, True, 15, 15), DEFAULT)
    assert server.compress(b"") == b"\x00"
    assert server.decompress(b"\x00", 0) == b""


def test_should_compress() -> None:
    deflate = PerMessageDeflate(DeflateParams(True, True, 15, 15), DeflateConfig(min_size=100))
    assert not deflate.should_compress(99)
    assert deflate.should_compress(100)


@st.composite
def deflate_params(draw: st.DrawFn) -> DeflateParams:
    return DeflateParams(
        draw(st.booleans()),
        draw(st.booleans()),
        draw(st.integers(8, 15)),
        draw(st.integers(8, 15)),
    )


@given(
    params=deflate_params(),
    level=st.integers(0, 9),
    mem_level=st.integers(1, 9),
    messages=st.lists(
        st.binary(max_size=3000)
        | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(1, 200)),
        min_size=1,
        max_size=8,
    ),
)
@settings(max_examples=150, deadline=None)
def test_round_trip_property(
    params: DeflateParams, level: int, mem_level: int, messages: list[bytes]
) -> None:
    config = DeflateConfig(compress_level=level, mem_level=mem_level)
    server = PerMessageDeflate(params, config)
    client = PerMessageDeflate(mirror(params), config)
    for message in messages:
        assert client.decompress(server.compress(message), len(message)) == message
        assert server.decompress(client.compress(message), len(message)) == message


# --- interoperability with the websockets library ---------------------------------------------

ClientBits = int | Literal[True] | None


def handshake(
    factory: ClientPerMessageDeflateFactory, config: DeflateConfig
) -> tuple[PerMessageDeflate, WsDeflate]:
    """Negotiate like a websockets client would, and build both ends."""
    offer = build_extension([(factory.name, factory.get_request_params())])
    result = negotiate([offer], config)
    assert result is not None, offer
    params, response = result
    [(name, response_params)] = parse_extension(response)
    assert name == "permessage-deflate"
    client = factory.process_response_params(response_params, [])
    assert client.local_no_context_takeover == params.client_no_context_takeover
    assert client.remote_no_context_takeover == params.server_no_context_takeover
    assert client.remote_max_window_bits == params.server_max_window_bits
    assert client.local_max_window_bits == params.client_max_window_bits
    return PerMessageDeflate(params, config), client


def exchange(server: PerMessageDeflate, client: WsDeflate, messages: list[bytes]) -> None:
    for message in messages:
        frame = Frame(Opcode.BINARY, server.compress(message), rsv1=True)
        assert client.decode(frame, max_size=None).data == message
        frame = client.encode(Frame(Opcode.BINARY, message))
        assert frame.rsv1
        assert server.decompress(bytes(frame.data), len(message)) == message


FACTORIES: list[dict[str, Any]] = [
    {},
    {"client_max_window_bits": None},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_max_window_bits": 10},
    {"server_max_window_bits": 8},
    {"client_max_window_bits": 9},
    {"server_no_context_takeover": True, "client_no_context_takeover": True},
]
CONFIGS = [
    DEFAULT,
    DeflateConfig(server_no_context_takeover=False),
    DeflateConfig(client_no_context_takeover=True),
    DeflateConfig(server_max_window_bits=12, client_max_window_bits=10),
    DeflateConfig(server_max_window_bits=8, compress_level=9, mem_level=9),
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("factory_kwargs", FACTORIES)
def test_websockets_interop(config: DeflateConfig, factory_kwargs: dict[str, Any]) -> None:
    server, client = handshake(ClientPerMessageDeflateFactory(**factory_kwargs), config)
    messages = [*text_messages(20, seed=3), b"", os.urandom(3000)]
    # long-range repeats exercise the window limits
    block = os.urandom(700)
    messages += [block + b"-" + block, block * 3]
    exchange(server, client, messages)


@given(
    server_nct=st.booleans(),
    client_nct=st.booleans(),
    server_bits=st.none() | st.integers(8, 15),
    client_bits=st.none() | st.just(True) | st.integers(9, 15),
    config=st.builds(
        DeflateConfig,
        server_max_window_bits=st.integers(8, 15),
        client_max_window_bits=st.integers(9, 15),
        server_no_context_takeover=st.booleans(),
        client_no_context_takeover=st.booleans(),
    ),
    messages=st.lists(st.binary(max_size=2000), min_size=1, max_size=5),
)
@settings(max_examples=150, deadline=None)
def test_websockets_interop_property(
    server_nct: bool,
    client_nct: bool,
    server_bits: int | None,
    client_bits: ClientBits,
    config: DeflateConfig,
    messages: list[bytes],
) -> None:
    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )
    server, client = handshake(factory, config)
    exchange(server, client, [*messages, *messages])


# --- limits and corrupt input -----------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """~100 KB that inflates to 100 MiB (DEFLATE tops out near 1032:1, so no smaller)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    parts = [compressor.compress(zeros) for _ in range(100)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]


@pytest.mark.parametrize("client_nct", [True, False])
def test_decompression_bomb_stops_at_max_size(bomb: bytes, client_nct: bool) -> None:
    assert len(bomb) < 120_000
    deflate = PerMessageDeflate(DeflateParams(True, client_nct, 15, 15), DEFAULT)
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(DeflateError) as caught:
            deflate.decompress(bomb, MiB)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (caught.value.code, caught.value.reason) == (1009, "message too big")
    assert elapsed < 1.0
    assert peak < 4 * MiB  # the input copy, 1 MiB of output and zlib's state; not 100 MiB


def test_max_size_is_inclusive() -> None:
    params = DeflateParams(True, True, 15, 15)
    message = os.urandom(1000) * 5
    payload = PerMessageDeflate(mirror(params), DEFAULT).compress(message)
    deflate = PerMessageDeflate(params, DEFAULT)
    assert deflate.decompress(payload, len(message)) == message
    with pytest.raises(DeflateError) as caught:
        deflate.decompress(payload, len(message) - 1)
    assert caught.value.code == 1009


CORRUPT = [
    pytest.param(b"\x07", id="reserved-block-type"),
    pytest.param(b"\xff\xff\xff\xff", id="reserved-block-type-2"),
    pytest.param(b"\x00\x05\x00\x00\x00hello", id="bad-stored-length"),
    pytest.param(b"\x00\x05\x00\xfa\xffhel", id="truncated-stored-block"),
]


@pytest.mark.parametrize("client_nct", [True, False])
@pytest.mark.parametrize("payload", CORRUPT)
def test_corrupt_input(payload: bytes, client_nct: bool) -> None:
    deflate = PerMessageDeflate(DeflateParams(True, client_nct, 15, 15), DEFAULT)
    with pytest.raises(DeflateError) as caught:
        deflate.decompress(payload, MiB)
    assert caught.value.code == 1007


def test_truncated_message_without_context_takeover() -> None:
    params = DeflateParams(True, True, 15, 15)
    payload = PerMessageDeflate(mirror(params), DEFAULT).compress(b"".join(text_messages(5)))
    with pytest.raises(DeflateError) as caught:
        PerMessageDeflate(params, DEFAULT).decompress(payload[: len(payload) // 2], MiB)
    assert caught.value.code == 1007


def test_back_reference_without_context_is_corrupt() -> None:
    """A client that keeps context though it promised not to is caught."""
    context_client = PerMessageDeflate(DeflateParams(False, False, 15, 15), DEFAULT)
    message = text_messages(1, seed=1)[0]
    context_client.compress(message)
    second = context_client.compress(message)  # refers back into the first message
    server = PerMessageDeflate(DeflateParams(True, True, 15, 15), DEFAULT)
    with pytest.raises(DeflateError) as caught:
        server.decompress(second, MiB)
    assert caught.value.code == 1007


def test_final_block_resets_stream() -> None:
    """RFC 7692 allows a message to end with a BFINAL block; the next one starts afresh."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = compressor.compress(b"hello") + compressor.flush(zlib.Z_FINISH) + b"\x00"
    for client_nct in (True, False):
        deflate = PerMessageDeflate(DeflateParams(True, client_nct, 15, 15), DEFAULT)
        assert deflate.decompress(payload, MiB) == b"hello"
        assert deflate.decompress(payload, MiB) == b"hello"


# --- broadcast ----------------------------------------------------------------------------------


def test_broadcast_decodes_on_every_client_context() -> None:
    config = DEFAULT
    messages = text_messages(10, seed=11)
    # Clients negotiated in different ways: websockets ends (fresh inflater per message when
    # server_no_context_takeover) and raw zlib inflaters that keep their context forever.
    ws_clients = [
        handshake(ClientPerMessageDeflateFactory(**kwargs), config)[1]
        for kwargs in ({}, {"client_no_context_takeover": True}, {"server_max_window_bits": 15})
    ]
    raw_clients = [zlib.decompressobj(wbits=-15) for _ in range(3)]
    per_connection = PerMessageDeflate(DeflateParams(True, False, 15, 15), config)
    # Some clients have already decoded other messages, some have decoded other broadcasts.
    for i, client in enumerate(raw_clients):
        for message in text_messages(i * 3, seed=i):
            assert client.decompress(per_connection.compress(message) + b"\0\0\xff\xff") == message
    for message in messages:
        shared = compress_for_broadcast(message, config)
        for ws_client in ws_clients:
            frame = ws_client.decode(Frame(Opcode.TEXT, shared, rsv1=True), max_size=None)
            assert frame.data == message
        for raw in raw_clients:
            assert raw.decompress(shared + b"\0\0\xff\xff") == message
        # It is what a connection would have compressed on its own.
        assert shared == per_connection.compress(message)


@pytest.mark.parametrize("window_bits", range(8, 16))
def test_broadcast_window_bits(window_bits: int) -> None:
    block = random.Random(window_bits).randbytes(1 << 14)
    message = block + block[:5000] + block
    shared = compress_for_broadcast(message, DEFAULT, window_bits=window_bits)
    for client_bits in range(8, 16):
        params = DeflateParams(True, False, client_bits, 15)
        decoder = zlib.decompressobj(wbits=-client_bits)
        if params.accepts_broadcast(window_bits):
            assert decoder.decompress(shared + b"\0\0\xff\xff") == message
        elif client_bits < 15 and window_bits == 15:
            # Why the broadcaster must group by window: a 15-bit payload reaches too far back.
            with pytest.raises(zlib.error):
                decoder.decompress(shared + b"\0\0\xff\xff")


def test_accepts_broadcast_rule() -> None:
    assert DeflateParams(True, False, 15, 15).accepts_broadcast(15)
    assert DeflateParams(True, False, 15, 15).accepts_broadcast(10)
    assert not DeflateParams(True, False, 10, 15).accepts_broadcast(15)
    assert not DeflateParams(False, False, 15, 15).accepts_broadcast(15)
    # zlib deflates "8 bits" with 9, whose distances (<= 250) fit an 8-bit window.
    assert DeflateParams(True, False, 8, 15).accepts_broadcast(9)
    assert DeflateParams(True, False, 9, 15).accepts_broadcast(8)
    with pytest.raises(ValueError):
        compress_for_broadcast(b"x", DEFAULT, window_bits=16)


# --- memory -------------------------------------------------------------------------------------


def retained_bytes(params: DeflateParams, config: DeflateConfig = DEFAULT) -> int:
    """zlib memory a connection keeps after sending and receiving a few messages."""
    messages = text_messages(5, seed=5)
    uploads = [PerMessageDeflate(mirror(params), config).compress(m) for m in messages]
    deflate = PerMessageDeflate(params, config)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for message, upload in zip(messages, uploads, strict=True):
            deflate.compress(message)
            deflate.decompress(upload, MiB)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before


def test_no_context_takeover_keeps_no_zlib_state() -> None:
    assert retained_bytes(DeflateParams(True, True, 15, 15)) < 2048


def test_context_takeover_keeps_zlib_state() -> None:
    inflater_only = retained_bytes(DeflateParams(True, False, 15, 15))
    assert 32 * 1024 < inflater_only < 64 * 1024
    both = retained_bytes(DeflateParams(False, False, 15, 15))
    assert both > inflater_only + 128 * 1024
    big = retained_bytes(DeflateParams(False, True, 15, 15), replace(DEFAULT, mem_level=8))
    assert big > 256 * 1024
