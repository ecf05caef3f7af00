"""The echo server the Autobahn|Testsuite fuzzes: 64 MiB messages, permessage-deflate offered.

python -m rtserve run bench.autobahn_echo:app --port 9001 --no-access-log
"""

from rtserve import App, WebSocketHandler

MiB = 1024 * 1024
app = App()


@app.websocket(
    "/",
    max_message_size=64 * MiB,
    max_frame_size=64 * MiB,
    max_queued_bytes=256 * MiB,
    compression=True,
    origins=["*"],
)
class Echo(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.send(message)
