"""Stall detection for a relayed upstream stream, without a timer object per read.

`asyncio.timeout` around every read of a long stream arms and cancels a timer per event;
`Watchdog` keeps one timer per stall period and looks, when it fires, at how long the read in
progress has been waiting. The relay sets `since` before each read and clears it after, so
the time it spends writing to a slow client never counts as an upstream stall.
"""

from __future__ import annotations

import asyncio

import aiohttp


class Stalled(Exception):
    """Raised into an upstream response's reader when one read waited `stall_s`."""


class Watchdog:
    """Stall detection without a timer per read: one timer per stall period, checking
    whether the read in progress (if any) has waited `stall_s`; if so the reader gets
    `Stalled`. Time spent writing to a slow client does not count."""

    def __init__(self, content: aiohttp.StreamReader, stall_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._content, self._stall = content, stall_s
        self.since: float | None = None  # loop time the current read began waiting
        self.fired = False
        self._handle = self._loop.call_later(stall_s, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        since = self.since
        if since is not None and now - since >= self._stall:
            self.fired = True
            self._content.set_exception(Stalled())
            return
        self._handle = self._loop.call_at((since or now) + self._stall, self._check)

    def cancel(self) -> None:
        self._handle.cancel()
