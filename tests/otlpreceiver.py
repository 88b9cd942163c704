"""A loopback OTLP/HTTP (JSON) receiver for tests and benches: records every POST."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Post:
    """One POST the receiver got: its path, headers (lower-case names) and raw body."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class OtlpReceiver:
    """`http.server` on 127.0.0.1:0 answering every POST with 200 `{}` and keeping it."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self._cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the exporter expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                post = Post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer._cond:
                    outer.posts.append(post)
                    outer._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def snapshot(self, path: str | None = None) -> list[Post]:
        with self._cond:
            return [p for p in self.posts if path is None or p.path == path]

    def wait_until(self, ok: Callable[[OtlpReceiver], bool], timeout: float = 15.0) -> None:
        """Block until `ok(self)` holds (re-checked on every POST); AssertionError after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ok(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met; {len(self.posts)} posts")
                self._cond.wait(min(left, 0.5))

    def spans(self) -> Iterator[dict[str, Any]]:
        """Every span received so far."""
        for p in self.snapshot("/v1/traces"):
            for rs in p.json()["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    yield from ss["spans"]


def attrs(item: dict[str, Any]) -> dict[str, Any]:
    """An OTLP span's or data point's attributes as a plain dict of Python values."""
    out: dict[str, Any] = {}
    for kv in item.get("attributes", []):
        ((kind, v),) = kv["value"].items()
        out[kv["key"]] = int(v) if kind == "intValue" else v
    return out
