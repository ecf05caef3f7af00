"""Helpers shared by the test modules, one job per module; a test module imports from here (or
from tests/rawhttp.py, channel_peer.py, redis_support.py, scaffold_server.py, brokers.py),
never from another test module (tests/test_layout.py checks that).

- net: `free_port`
- waiting: `until` (poll a plain check), `eventually` (poll an async check)
- project_run: `rtserve run` of a small project in a process (`Run`, `make_project`, `write`,
  `get`, `answer`, `alive`, `children`)
- live_project: `LiveProject`, `rtserve run --port 0 --no-reload` of a given project
- sse: `SSE`, an EventSource-like reader over http.client
- broker_events: `Recorder`, BrokerEvents that a test can wait on
- browser: `join`, a page joining the chat scaffold's room
- h2client: `H2Client`, a raw HTTP/2 client (h2 on a blocking socket) for well- and
  ill-behaved requests
- tls: `dev_tls`, TLS settings with a fresh development certificate
"""
