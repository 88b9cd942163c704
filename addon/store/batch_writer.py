"""The writer thread both ledgers share, so the event loop never waits on a disk or a network.

`record()` queues a row and returns at once. One daemon thread takes the rows in batches —
the first row, then whatever follows within BATCH_WINDOW_S, at most BATCH_MAX — and hands
each batch to the ledger's `_store`: one transaction per burst, not per row, and a row for
a response that completed a moment ago is stored within ~50 ms. Between batches the thread
runs the ledger's `_upkeep` (the daily prune; for PostgreSQL also reconnecting and draining
the spool), so none of that touches the request path.

A ledger subclasses `BatchWriter`, sets its own attributes, calls `super().__init__` and
then `_start()`, and fills in the hooks: `_store` (required), `_begin` / `_end` (on the
thread, before the first and after the last batch), `_upkeep`, `_wait_s` and
`_queue_overflow`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from addon.store.ledger_schema import LedgerRow

log = logging.getLogger("orchestrator")

QUEUE_MAX = 100_000  # rows waiting for the thread; beyond it `record()` drops
BATCH_WINDOW_S = 0.05  # a completed request is stored within ~50 ms
BATCH_MAX = 500
PRUNE_EVERY_S = 24 * 3600


class BatchWriter:
    """A queue-fed writer thread with flush and close; see the module doc.

    Counters: every row `record()` accepts is counted once when queued and once when its
    batch has gone through `_store` (stored, spooled or dropped), so `flush()` knows when
    everything queued before it has been handled. `self._cond` guards the counters; a
    subclass that waits on its own numbers (the PostgreSQL spool) updates them under it.
    """

    where: str  # the file path or the redacted URL, for messages

    def __init__(self, *, thread_name: str, retention_days: int, close_timeout_s: float) -> None:
        self.retention_days = retention_days
        self.last_pruned = 0
        self._close_timeout_s = close_timeout_s
        self._q: queue.Queue[LedgerRow | None] = queue.Queue(maxsize=QUEUE_MAX)
        self._cond = threading.Condition()
        self._enqueue_lock = threading.Lock()
        self._enqueued = 0  # rows accepted by record()
        self._handled = 0  # rows whose batch went through _store
        self._next_prune = 0.0
        self._closed = False
        self._overflowing = False  # the queue was full since the thread last took a row
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _start(self) -> None:
        """Start the thread; the subclass calls it last in its `__init__`."""
        self._thread.start()

    # ------------------------------------------------------------------ caller side

    def record(self, row: LedgerRow) -> None:
        """Queue one row; never blocks the event loop and never raises (a full queue drops
        the row and says so through `_queue_overflow`)."""
        with self._enqueue_lock:
            try:
                self._q.put_nowait(row)
            except queue.Full:
                first, self._overflowing = not self._overflowing, True
                self._queue_overflow(row, first)
                return
            self._enqueued += 1

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row queued so far is stored (or, for PostgreSQL while it is
        down, safely spooled to disk); False after `timeout` seconds."""
        return self._wait_handled(timeout)

    def close(self) -> None:
        """Store what is queued and stop the thread; a second call does nothing. Logs an
        error when the thread has not stopped within the ledger's close timeout."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout=self._close_timeout_s)
        if self._thread.is_alive():
            log.error("ledger writer for %s did not stop within %gs; %d rows still queued",
                      self.where, self._close_timeout_s, self._q.qsize())  # fmt: skip

    def queued(self) -> int:
        """Rows waiting for the thread right now (for /status)."""
        return self._q.qsize()

    def _wait_handled(self, timeout: float, also: Callable[[], bool] | None = None) -> bool:
        """Wait until every row queued so far went through `_store` and `also()` holds
        (checked under `self._cond`, so its numbers must change under it)."""
        target = self._enqueued
        with self._cond:
            return self._cond.wait_for(
                lambda: self._handled >= target and (also is None or also()), timeout
            )

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            self._begin()
            while True:
                self._upkeep()
                rows, stop = self._take(self._wait_s())
                if rows:
                    try:
                        self._store(rows)
                    finally:
                        with self._cond:
                            self._handled += len(rows)
                            self._cond.notify_all()
                if stop:
                    return
        finally:
            self._end()

    def _take(self, timeout: float) -> tuple[list[LedgerRow], bool]:
        """One batch: the first row within `timeout` seconds, then whatever follows within
        BATCH_WINDOW_S; and whether `close()` asked the thread to stop."""
        try:
            item = self._q.get(timeout=timeout) if timeout > 0 else self._q.get_nowait()
        except queue.Empty:
            return [], False
        self._overflowing = False
        batch = [item]
        until = time.monotonic() + BATCH_WINDOW_S
        while len(batch) < BATCH_MAX and item is not None:
            left = until - time.monotonic()
            try:
                item = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
        return [r for r in batch if r is not None], None in batch

    def _prune_cutoff(self) -> float | None:
        """The `ts` before which rows go when the daily prune is due (it is then not due
        again for PRUNE_EVERY_S); None when it is not due."""
        now = time.time()
        if now < self._next_prune:
            return None
        self._next_prune = now + PRUNE_EVERY_S
        return now - self.retention_days * 86400

    def _pruned(self, count: int) -> None:
        """Remember and log what the prune just deleted."""
        self.last_pruned = count
        if count:
            log.info("ledger: pruned %d rows older than %d days", count, self.retention_days)

    # ------------------------------------------------------------------ hooks

    def _begin(self) -> None:
        """On the thread, before the first batch."""

    def _end(self) -> None:
        """On the thread, after the last batch (also when the thread dies)."""

    def _upkeep(self) -> None:
        """On the thread, before waiting for each batch."""

    def _wait_s(self) -> float:
        """How long to wait for a row before running `_upkeep` again."""
        return 60.0

    def _store(self, rows: list[LedgerRow]) -> None:
        """Write one batch (on the thread)."""
        raise NotImplementedError

    def _queue_overflow(self, row: LedgerRow, first: bool) -> None:
        """`row` was dropped because the queue is full; `first` is True for the first row
        dropped since the thread last took one."""
