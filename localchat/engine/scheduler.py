"""The one inference worker: a single thread that runs every torch operation, fed by a queue.

Owns: the queue of jobs (loads and replies), queue positions, the bound on waiting jobs.
Invariant: only the worker thread runs jobs. A second thread running torch ops would start a second
OpenMP team, which measured 28 -> 16 tok/s on a 2-core CPU; callers only wait on queues.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """Too many requests are already waiting; the user should try again shortly."""


@dataclass(order=True)
class _Job:
    seq: int
    run: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    cancel: threading.Event | None = field(compare=False, default=None)


class InferenceWorker:
    """Runs submitted callables one at a time, in submission order, on one daemon thread."""

    def __init__(self, max_waiting: int = 32, name: str = "localchat-inference"):
        self.max_waiting = max_waiting
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._waiting: list[_Job] = []  # submitted, not yet started; guarded by _lock
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._running = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any], cancel: threading.Event | None = None) -> Future:
        """Queue fn; raises Busy when max_waiting jobs are already waiting."""
        with self._lock:
            if self._closed:
                raise Busy("the server is shutting down")
            n = len(self._live())
            if n >= self.max_waiting:
                raise Busy(f"{n} {'reply is' if n == 1 else 'replies are'} already waiting; try again in a moment")
            job = _Job(next(self._seq), fn, Future(), cancel)
            self._waiting.append(job)
            self._jobs.put(job)  # under the lock, so queue order is submission (seq) order
        return job.future

    def position(self, future: Future) -> int | None:
        """How many jobs run before this one (0 = next), or None once it has started."""
        with self._lock:
            for i, job in enumerate(self._live()):
                if job.future is future:
                    return i + (1 if self.busy else 0)
        return None

    @property
    def busy(self) -> bool:
        return self._running

    def waiting(self) -> int:
        with self._lock:
            return len(self._live())

    def _live(self) -> list[_Job]:
        """Waiting jobs not cancelled meanwhile (a cancelled one leaves when the worker reaches it)."""
        return [job for job in self._waiting if not job.future.cancelled()]

    def is_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the worker and wait for its result (for short jobs such as counting tokens)."""
        if self.is_worker_thread():
            return fn()
        return self.submit(fn).result()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._waiting.remove(job)
                self._running = True
            try:
                if job.cancel is not None and job.cancel.is_set():
                    job.future.cancel()
                elif job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.run())
                    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                        job.future.set_exception(exc)
            finally:
                with self._lock:
                    self._running = False

    def close(self) -> None:
        with self._lock:  # jobs already queued still run; later submits get Busy instead of hanging
            self._closed = True
            self._jobs.put(None)
        self._thread.join(timeout=10)
