"""A loopback HTTP server that plays the public data sources for refresh tests.

It serves the REAL snapshots from ``../shared/fixtures/sources/`` (read at test time,
never copied) at the paths production uses, so the sidecar fetches them over HTTP exactly
as it would from openrouter.ai, raw.githubusercontent.com and huggingface.co. Each path
can be given a script of behaviours, one per request (the last one repeats):

* ``"ok"`` — the body with Content-Length;
* an int — that status with a small body (``429``/``503`` may carry ``retry_after``);
* ``"hang"`` — send nothing until the server stops (the client's read timeout fires);
* ``"cut"`` — only the first half of the body, with a matching Content-Length;
* ``"short"`` — promise the whole body, send half, close (an incomplete response);
* ``Redirect(location)`` — a 302 to ``location``.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "sources"

OPENROUTER = "/api/v1/models"
ARENA = "/lmarena/arena-catalog/main/data/leaderboard-text.json"
LITELLM = "/BerriAI/litellm/main/model_prices_and_context_window.json"
HF = "/api/models/"
LOCAL = "/v1/models"
HF_REPOS = (
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen3-32B",
    "Qwen/Qwen3-Next-80B-A3B-Instruct",
    "openai/gpt-oss-20b",
    "openai/gpt-oss-120b",
    "mistralai/Magistral-Small-2509",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "baidu/ERNIE-4.5-21B-A3B-Thinking",
    "google/gemma-3-1b-it",
)
LOCAL_MODELS = (
    b'{"object": "list", "data": ['
    b'{"id": "Qwen/Qwen3-32B", "object": "model", "owned_by": "vllm", "max_model_len": 32768},'
    b'{"id": "my-finetune-v2", "object": "model", "owned_by": "library"},'
    b'{"object": "model"}]}'
)


def fixture_files() -> dict[str, Path]:
    """Production path -> the fixture file it serves."""
    files = {
        OPENROUTER: FIXTURES / "openrouter_models_2026-05-22.json",
        ARENA: FIXTURES / "lmarena_leaderboard_text_2025-12-11.json",
        LITELLM: FIXTURES / "litellm_model_prices_2026-11-23.json",
    }
    for repo in HF_REPOS:
        files[HF + repo] = FIXTURES / f"hf_model_{repo.replace('/', '__')}.json"
    return files


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up early (timeouts, the size cap) is expected here."""


@dataclass(frozen=True)
class Redirect:
    location: str
    status: int = 302


Step = str | int | Redirect


@dataclass
class Route:
    body: bytes
    script: list[Step] = field(default_factory=lambda: ["ok"])
    retry_after: str | None = None


class SourceServer:
    """Start with ``with SourceServer() as server:``; ``server.url(path)`` to fetch."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.agents: list[str] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self._httpd = _Quiet(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve_fixtures(self) -> SourceServer:
        for path, file in fixture_files().items():
            self.routes[path] = Route(file.read_bytes())
        self.routes[LOCAL] = Route(LOCAL_MODELS)
        return self

    def script(self, path: str, *steps: Step, retry_after: str | None = None) -> None:
        route = self.routes.setdefault(path, Route(b""))
        route.script = list(steps)
        route.retry_after = retry_after

    def __enter__(self) -> SourceServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _next(self, path: str) -> tuple[Route | None, Step]:
        with self._lock:
            route = self.routes.get(path)
            count = self.hits[path]
            self.hits[path] += 1
        if route is None:
            return None, 404
        return route, route.script[min(count, len(route.script) - 1)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                server.agents.append(self.headers.get("User-Agent", ""))
                route, step = server._next(self.path)
                body = route.body if route else b""
                if step == "ok":
                    self._send(200, body, {"Content-Type": "application/json"})
                elif step == "cut":
                    self._send(200, body[: len(body) // 2], {})
                elif step == "short":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif step == "hang":
                    server.released.wait(30)
                    self.close_connection = True
                elif isinstance(step, Redirect):
                    self._send(step.status, b"", {"Location": step.location})
                elif isinstance(step, int):
                    headers = {}
                    if route and route.retry_after is not None:
                        headers["Retry-After"] = route.retry_after
                    self._send(step, f"status {step}".encode(), headers)
                else:
                    raise AssertionError(f"unknown step {step!r}")

        return Handler
