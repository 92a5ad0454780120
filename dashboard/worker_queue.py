"""One benchmark worker per dashboard server at a time: the others wait in line, first come first served.

The Streamlit server runs every session in one process, so one module-level :data:`QUEUE` serves them all. A
session takes a ticket (:meth:`WorkerQueue.join`), asks its place while it polls (:meth:`WorkerQueue.place`:
0 means its turn, n means n jobs ahead) and leaves when its worker ends (:meth:`WorkerQueue.leave`). A
ticket not asked about for :data:`STALE_S` seconds (a closed browser tab) loses its place.
"""

from __future__ import annotations

import itertools
import threading
import time

STALE_S = 30.0


class WorkerQueue:
    """Tickets in arrival order; the first one holds the worker."""

    def __init__(self, stale_s: float = STALE_S) -> None:
        self._lock = threading.Lock()
        self._seen: dict[int, float] = {}  # ticket -> when it was last asked about (insertion order = line)
        self._numbers = itertools.count(1)
        self._stale_s = stale_s

    def join(self) -> int:
        """A new ticket at the end of the line."""
        with self._lock:
            ticket = next(self._numbers)
            self._seen[ticket] = time.monotonic()
            return ticket

    def place(self, ticket: int) -> int | None:
        """How many jobs are ahead of ``ticket`` (0: its turn), or ``None`` when it is not in line."""
        with self._lock:
            now = time.monotonic()
            for other, seen in list(self._seen.items()):
                if other != ticket and now - seen > self._stale_s:
                    del self._seen[other]
            if ticket not in self._seen:
                return None
            self._seen[ticket] = now
            return list(self._seen).index(ticket)

    def leave(self, ticket: int) -> None:
        with self._lock:
            self._seen.pop(ticket, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


QUEUE = WorkerQueue()
