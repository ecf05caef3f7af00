"""Send a notification to a user, as another backend service would (billing, CI, ...).

It speaks the publish API of rtserve over plain HTTP (the standard library only, no rtserve):
`POST <url>/rt/publish` with `Authorization: Bearer <api key>` and the body
`{"channel": "user:<id>", "data": {...}, "idempotency_key": "..."}`.

    export RTSERVE_API_KEY=dev-only-api-key-change-me-0123456789
    python examples/notification_service/send.py alice "Invoice paid" --body "42.00 EUR"

Every notification has an idempotency key (`--idempotency-key`, or a random one). A failure
that may be passing (no connection, a timeout, a 5xx) is retried with the same key, so the
user gets it at most once; run the command again with the same key within 5 minutes and
nothing is sent twice either.

Exit codes:
    0  sent (the channel's offset and epoch are printed)
    2  usage error (bad arguments, no API key)
    3  the API key was refused (401), or the server has none set (403)
    4  the server refused the notification (400, 404, 413, ...): fix the request
    5  the server could not be reached or kept failing (connection, timeout, 5xx)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

USER_ID = re.compile(r"[A-Za-z0-9_.@-]{1,64}\Z")  # as the app's user ids

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 2, 3, 4, 5


class SendError(Exception):
    """The notification was not sent: `exit_code` (see the module docstring) and why."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def notification(title: str, body: str = "", url: str = "", source: str = "") -> dict[str, Any]:
    """The data of a notification as devices expect it (`kind` "notification")."""
    data: dict[str, Any] = {"kind": "notification", "title": title, "time": round(time.time())}
    for key, value in (("body", body), ("url", url), ("source", source)):
        if value:
            data[key] = value
    return data


def send(
    base_url: str,
    api_key: str,
    user: str,
    data: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
) -> dict[str, Any]:
    """Publish `data` to `user:<user>`; the answer `{"offset", "epoch"}`.

    Retries up to `retries` times (0.5 s, 1 s, 2 s, ... apart) when the server cannot be
    reached or answers 5xx, with the same idempotency key. Raises SendError otherwise.
    """
    if not USER_ID.match(user):
        raise SendError(EXIT_USAGE, f"not a user id: {user!r} (1-64 of A-Z a-z 0-9 _ . @ -)")
    key = idempotency_key or uuid.uuid4().hex
    if not 1 <= len(key) <= 256:
        raise SendError(EXIT_USAGE, "an idempotency key is 1 to 256 characters")
    payload = {"channel": f"user:{user}", "data": data, "idempotency_key": key}
    request = urllib.request.Request(
        base_url.rstrip("/") + "/rt/publish",
        data=json.dumps(payload).encode("utf-8"),
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        method="POST",
    )
    attempt = 0
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            error = _server_error(exc)
            if exc.code in (401, 403):
                hint = (
                    "check RTSERVE_API_KEY (or --api-key): it must be one of the server's keys"
                    if exc.code == 401
                    else "the server has no API key set"
                )
                raise SendError(EXIT_AUTH, f"refused: HTTP {exc.code}: {error}; {hint}") from None
            if exc.code < 500:
                raise SendError(EXIT_REFUSED, f"refused: HTTP {exc.code}: {error}") from None
            problem = f"HTTP {exc.code}: {error}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            problem = f"cannot reach {base_url}: {reason}"
        if attempt >= retries:
            raise SendError(EXIT_UNAVAILABLE, f"{problem} (after {attempt + 1} attempts)")
        time.sleep(0.5 * 2**attempt)
        attempt += 1


def _server_error(exc: urllib.error.HTTPError) -> str:
    """The server's message from an error answer ({"error": {"code", "message"}})."""
    try:
        error = json.loads(exc.read())["error"]
        if "code" in error:
            return f"{error['message']} (code {error['code']})"
        return str(error.get("detail") or error)
    except Exception:
        return exc.reason or "no details"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Send a notification to a user through rtserve's publish API.",
        epilog="Exit codes: 0 sent, 2 usage, 3 API key refused, 4 request refused, "
        "5 server unavailable.",
    )
    parser.add_argument("user", help="the user id: the notification goes to user:<id>")
    parser.add_argument("title")
    parser.add_argument("--body", default="")
    parser.add_argument("--link", default="", help="a URL the notification opens")
    parser.add_argument("--source", default="", help="who sends it: billing, ci, ...")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server's base URL")
    parser.add_argument(
        "--api-key", default=None, help="the publish API key (default: $RTSERVE_API_KEY)"
    )
    parser.add_argument("--idempotency-key", default=None, help="default: a random one")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt")
    parser.add_argument("--retries", type=int, default=3, help="retries after a 5xx or no answer")
    args = parser.parse_args(argv)
    api_key = args.api_key or os.environ.get("RTSERVE_API_KEY")
    if not api_key:
        print("error: no API key: set RTSERVE_API_KEY or pass --api-key", file=sys.stderr)
        return EXIT_USAGE
    if not args.title.strip():
        print("error: the title is empty", file=sys.stderr)
        return EXIT_USAGE
    data = notification(args.title, args.body, args.link, args.source)
    try:
        answer = send(
            args.url,
            api_key,
            args.user,
            data,
            idempotency_key=args.idempotency_key,
            timeout=args.timeout,
            retries=max(0, args.retries),
        )
    except SendError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({"user": args.user, "offset": answer["offset"], "epoch": answer["epoch"]}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
