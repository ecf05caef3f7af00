"""Zero-copy file bodies where the event loop cannot do it (uvloop has no loop.sendfile).

The kernel's sendfile runs in a worker thread on a duplicate of the socket descriptor, after
the transport's own buffer has drained; nothing else writes to the connection meanwhile,
because its response is in progress. The thread stops when the connection closes or the client
takes nothing for `stall_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from typing import TYPE_CHECKING, Any

from rtserve.errors import RtserveError

if TYPE_CHECKING:
    from rtserve.server.connection import HTTPConnection

POLL_SLICE_MS = 250


class SendStalled(RtserveError, ConnectionError):
    """The client took no bytes for too long."""


async def wait_write_buffer_empty(conn: HTTPConnection) -> None:
    """Return once everything written through the transport has reached the socket."""
    transport = conn.transport
    if not transport.get_write_buffer_size():
        return
    high, low = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)  # pauses now, resumes when empty
    try:
        await conn.drain()
    finally:
        if not conn.closed:
            transport.set_write_buffer_limits(high=high, low=low)


def send_blocking(
    stop: threading.Event,
    sock_fd: int,
    file_fd: int,
    offset: int,
    count: int,
    stall_timeout: float,
) -> int:
    """Send `count` bytes of `file_fd` from `offset` to `sock_fd` (runs in a worker thread)."""
    poller = select.poll()
    poller.register(sock_fd, select.POLLOUT)
    sent = 0
    stalled_ms = 0
    while sent < count:
        if stop.is_set():
            break
        try:
            n = os.sendfile(sock_fd, file_fd, offset + sent, count - sent)
        except BlockingIOError:
            if poller.poll(POLL_SLICE_MS):
                stalled_ms = 0
            else:
                stalled_ms += POLL_SLICE_MS
                if stalled_ms >= stall_timeout * 1000:
                    raise SendStalled(f"client took nothing for {stall_timeout:.0f}s") from None
            continue
        if n == 0:
            break  # the file is shorter than announced
        sent += n
    return sent


async def sendfile_in_thread(conn: HTTPConnection, file_fd: int, offset: int, count: int) -> int:
    """Send a file range with the kernel's sendfile without blocking the loop; bytes sent."""
    await wait_write_buffer_empty(conn)
    if conn.closed:
        return 0
    sock = conn.transport.get_extra_info("socket")
    # Duplicates keep both descriptors ours, whoever closes the originals meanwhile; they are
    # closed only when the thread is done with them (never while it may still use them).
    sock_fd = os.dup(sock.fileno())
    file_fd = os.dup(file_fd)
    stop = threading.Event()
    state = conn.state
    done = state.loop.run_in_executor(
        state.file_executor(),
        send_blocking,
        stop,
        sock_fd,
        file_fd,
        offset,
        count,
        state.settings.timeouts.send,
    )

    def close_duplicates(_: object) -> None:
        os.close(sock_fd)
        os.close(file_fd)

    done.add_done_callback(close_duplicates)
    watch = conn.closed_future()
    waiting: set[asyncio.Future[Any]] = {done, watch}
    try:
        while not done.done():
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if conn.closed:
                stop.set()
                break
            if watch.done():  # half-closed only: keep sending, but stop watching
                await asyncio.shield(done)
        return done.result() if done.done() else 0
    except asyncio.CancelledError:
        stop.set()
        raise
