"""HTTP GET for the refresh sidecar: guarded, bounded, retried, identified.

``Fetcher.get(url)`` returns the body of one source or raises ``FetchError``, whose
message names the URL, what went wrong and what to do. Behaviour:

* one ``httpx.Client`` (``trust_env=False``: no proxy or netrc from the environment) with
  connect/read timeouts, a total deadline per attempt and a response size cap;
* the ``User-Agent`` ``local-ai-orchestrator/<version> (+refresh)``;
* redirects are followed by hand, each hop re-checked by ``addon.refresh.urlguard`` (https, host
  on the allowlist, DNS answers public), at most ``max_redirects`` of them;
* 429, 5xx, timeouts and connection errors are retried up to ``attempts`` times with
  exponential backoff and jitter; ``Retry-After`` is honoured (seconds or HTTP date) up to
  ``max_backoff_s``. Other 4xx, unsafe URLs and oversize bodies fail at once.

Waiting goes through the injected ``sleep`` (returns True when the sidecar is stopping),
so tests and the ``--every`` loop never block on real time they cannot interrupt.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from importlib import metadata
from types import TracebackType
from urllib.parse import urljoin

import httpx

from addon.errors import FetchError
from addon.refresh.sources.schema import FetchSettings
from addon.refresh.urlguard import (
    Guard,
    GuardedBackend,
    GuardedTransport,
    Resolver,
    UnsafeURLError,
    check_url,
    system_resolver,
)

Sleep = Callable[[float], bool]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _Retry(Exception):
    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Fetched:
    url: str  # the URL the body came from (after redirects)
    body: bytes
    attempts: int
    seconds: float


def user_agent() -> str:
    try:
        version = metadata.version("local-ai-orchestrator")
    except metadata.PackageNotFoundError:
        version = "0"
    return f"local-ai-orchestrator/{version} (+refresh)"


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Fetcher:
    """GETs source URLs under one policy. Use as a context manager or call ``close``."""

    def __init__(
        self,
        settings: FetchSettings,
        allowed_hosts: Collection[str],
        *,
        local_hosts: Collection[str] = (),  # hosts of providers marked local: true
        allow_loopback: bool = False,
        resolver: Resolver = system_resolver,
        sleep: Sleep = _sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._sleep = sleep
        self._rng = rng or random.Random()
        public = Guard(
            frozenset(h.lower() for h in allowed_hosts),
            allow_http=allow_loopback,
            allow_loopback=allow_loopback,
        )
        local = Guard(
            frozenset(h.lower() for h in local_hosts),
            allow_http=True,
            allow_loopback=True,
            allow_private=True,
            remedy="a local provider's /models may only lead to hosts of providers marked "
            "local: true in orchestrator.yaml",
        )
        tls = httpx.create_ssl_context()  # system/certifi CAs; one per Fetcher (slow to build)
        self._public = (public, self._client(public, resolver, tls))
        self._local = (local, self._client(local, resolver, tls))

    def _client(self, guard: Guard, resolver: Resolver, tls: ssl.SSLContext) -> httpx.Client:
        settings = self.settings
        return httpx.Client(
            transport=GuardedTransport(GuardedBackend(guard, resolver), tls),
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                settings.read_timeout_s, connect=settings.connect_timeout_s, pool=None
            ),
            headers={"User-Agent": user_agent(), "Accept": "application/json, */*;q=0.5"},
        )

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._public[1].close()
        self._local[1].close()

    def get(self, url: str, *, local: bool = False) -> Fetched:
        """The body at ``url``. ``local``: a local provider's URL, which may be http and
        loopback/private but must stay on a local provider's host (every hop). Thread-safe:
        the Hugging Face source fetches a few repos at once."""
        guard, client = self._local if local else self._public
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                final, body = self._attempt(url, guard, client)
                return Fetched(final, body, attempt, time.monotonic() - started)
            except _Retry as exc:
                if attempt >= self.settings.attempts:
                    raise FetchError(
                        url,
                        f"{exc.problem} (gave up after {attempt} attempts)",
                        "the source may be down; its previous data is kept; try again later",
                    ) from None
                delay = self._backoff(attempt) if exc.retry_after is None else exc.retry_after
                if delay > self.settings.max_backoff_s:
                    raise FetchError(
                        url,
                        f"{exc.problem}; the server asks to wait {delay:.0f} s",
                        f"that is over fetch.max_backoff_s ({self.settings.max_backoff_s:g} s); "
                        "its previous data is kept; try again later",
                    ) from None
                if self._sleep(delay):
                    raise FetchError(url, f"{exc.problem}; stopped while waiting to retry",
                                     "the sidecar is shutting down") from None  # fmt: skip

    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_s * 2 ** (attempt - 1)
        return min(self.settings.max_backoff_s, base) * self._rng.uniform(0.5, 1.0)

    def _attempt(self, url: str, guard: Guard, client: httpx.Client) -> tuple[str, bytes]:
        current = url
        for _ in range(self.settings.max_redirects + 1):
            try:
                check_url(current, guard)
                with client.stream("GET", current) as response:
                    status = response.status_code
                    if status in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError(url, f"HTTP {status} redirect without a Location",
                                             "report it to the source; fix the url")  # fmt: skip
                        current = urljoin(current, location)
                        continue
                    if status == 429 or status >= 500:
                        wait = retry_after(response.headers.get("retry-after"), time.time())
                        raise _Retry(f"HTTP {status} from {current}", wait)
                    if status >= 400:
                        raise FetchError(url, f"HTTP {status} {response.reason_phrase} from "
                                         f"{current}", _remedy(status))  # fmt: skip
                    return current, self._read(url, response)
            except UnsafeURLError as exc:
                where = "" if current == url else f"redirect to {current} refused: "
                raise FetchError(url, where + exc.problem, exc.remedy) from None
            except httpx.TimeoutException as exc:
                raise _Retry(f"timed out ({_timeout_kind(exc)})") from None
            except httpx.TransportError as exc:
                raise _Retry(f"connection failed ({type(exc).__name__}: {exc})") from None
        raise FetchError(url, f"more than {self.settings.max_redirects} redirects",
                         "point the url at the final location") from None  # fmt: skip

    def _read(self, url: str, response: httpx.Response) -> bytes:
        cap = self.settings.max_bytes
        remedy = f"raise fetch.max_bytes ({cap} bytes) in rules/sources.yaml if this is expected"
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise FetchError(url, f"response is {int(length)} bytes, over the cap", remedy)
        deadline = time.monotonic() + self.settings.total_timeout_s
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > cap:
                raise FetchError(url, f"response exceeds {cap} bytes", remedy)
            if time.monotonic() > deadline:
                raise _Retry(f"download took longer than {self.settings.total_timeout_s:g} s")
        return bytes(body)


def _timeout_kind(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timeout; raise fetch.connect_timeout_s if the host is slow"
    return "no data within the read timeout; raise fetch.read_timeout_s if the host is slow"


def _remedy(status: int) -> str:
    if status == 404:
        return "check the url in rules/sources.yaml (the file or repo may have moved)"
    if status in (401, 403):
        return "the source refuses anonymous access; pick another url or disable the source"
    return "check the url in rules/sources.yaml"
