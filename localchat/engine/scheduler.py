"""The one inference worker: a single thread that runs every torch operation, fed by a queue.

Owns: the queue of jobs (loads and replies), its fair order, queue positions, the bound on waiting
jobs, and the turns between starting jobs and stepping the running batch. A reply's job only starts
it (reads its prompt and joins the batch, see batch.py); the worker then alternates: take the next
job in fair order if it may start now, else advance every running reply by one token. A reply may
join while the batch has room; any other job (a load, an unload) waits until the batch has emptied,
and nothing queued after it starts before it but short jobs such as counting tokens, so a model
switch is orderly. Invariants: only the worker thread runs jobs (a second thread running torch ops would start
a second OpenMP team, which measured 28 -> 16 tok/s on a 2-core CPU; callers only wait); waiting
jobs are served round-robin between owners (household members), first come first served within
one owner, so ten requests from one member never starve another member's one.
Replies that arrive together are read together: a front end announces each request the moment it
arrives (`expect`), before its checks and parsing, and a prompt that would be read alone waits up
to GATHER_SECONDS for the announced ones, so their prompts share one forward pass. Nobody waits
when nothing is announced: a single user's reply starts at once.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)
# How long a prompt read alone waits for replies announced at about the same time. Measured on a
# 2-core CPU: four API requests sent at once reached the worker over 2-13 ms.
GATHER_SECONDS = 0.025
MAX_EXPECTED = 64


class Busy(RuntimeError):
    """Too many requests are already waiting; the user should try again shortly."""


@dataclass(order=True)
class _Job:
    seq: int
    run: Callable[[], Any] = field(compare=False)
    future: Future = field(compare=False)
    cancel: threading.Event | None = field(compare=False, default=None)
    owner: str = field(compare=False, default="")
    joins: bool = field(compare=False, default=False)  # a reply: may start while others decode
    quick: bool = field(compare=False, default=False)  # a short job that may run between two steps


class Stepper(Protocol):
    """The running batch of replies, as the worker sees it."""

    def __len__(self) -> int: ...

    def room(self) -> int: ...

    def reading_only(self) -> bool:
        """Replies have joined but none decodes yet: the next step only reads prompts."""
        ...

    def step(self) -> None: ...


class InferenceWorker:
    """Runs submitted callables on one daemon thread, in fair order (round-robin between owners,
    submission order within one), and steps the batch of replies between them."""

    def __init__(self, max_waiting: int = 32, name: str = "localchat-inference"):
        self.max_waiting = max_waiting
        self._waiting: list[_Job] = []  # submitted, not yet started, in submission order
        self._rotation: list[str] = []  # owners with waiting jobs, the next to be served first
        self._changed = threading.Condition()  # guards everything above; notified on submit/close
        self._lock = self._changed
        self._seq = itertools.count()
        self._expected: deque[float] = deque()  # when each announced reply arrived (monotonic)
        self._gather_until = 0.0  # prompts waiting to be read wait for announced replies until then
        self._running = False
        self._closed = False
        self.stepper: Stepper | None = None  # set by the backend: the batch of replies decoding now
        # set by the backend: run on the worker each time it runs out of work (hand freed memory back)
        self.on_idle: Callable[[], None] | None = None
        self._idle = True
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(
        self,
        fn: Callable[[], Any],
        cancel: threading.Event | None = None,
        owner: str | None = None,
        *,
        joins: bool = False,
        quick: bool = False,
    ) -> Future:
        """Queue fn for `owner` (a household member; None: a job of its own, such as a load);
        raises Busy when max_waiting jobs are already waiting. `joins`: fn starts a reply that
        joins the running batch (it may start while others decode); `quick`: fn is short and
        may run between two decode steps."""
        with self._changed:
            if self._closed:
                raise Busy("the server is shutting down")
            n = len(self._live())
            if n >= self.max_waiting:
                raise Busy(f"{n} {'reply is' if n == 1 else 'replies are'} already waiting; try again in a moment")
            for stale in [j for j in self._waiting if j.future.cancelled()]:
                self._take(stale, served=False)  # a stopped job keeps no turn for its owner
            if joins and self._expected:
                self._expected.popleft()  # an announced reply is here
            seq = next(self._seq)
            job = _Job(seq, fn, Future(), cancel, owner if owner is not None else f"job-{seq}", joins, quick)
            self._waiting.append(job)
            if job.owner not in self._rotation:
                self._rotation.append(job.owner)
            self._changed.notify()
        return job.future

    def expect(self) -> None:
        """A reply is on its way (a request arrived and is being checked): if a prompt is about to
        be read alone, it waits a moment for this one. Unused announcements expire by themselves."""
        with self._changed:
            self._forget_expired(time.monotonic())
            if len(self._expected) < MAX_EXPECTED:  # a flood of refused requests cannot grow it
                self._expected.append(time.monotonic())

    def _forget_expired(self, now: float) -> None:
        while self._expected and self._expected[0] < now - GATHER_SECONDS:
            self._expected.popleft()  # announced but never came (a refused request, say)

    def _gather_wait(self) -> float:
        """Seconds the prompts waiting to be read should still wait for announced replies (0: none);
        under the lock, with a batch that only reads prompts."""
        now = time.monotonic()
        self._forget_expired(now)
        if not self._expected:
            return 0.0
        if self._gather_until <= 0:
            self._gather_until = now + GATHER_SECONDS  # from the first prompt that waits: bounded
        return max(0.0, self._gather_until - now)

    def _order(self) -> list[_Job]:
        """The live waiting jobs in the order they will run: one per owner per round."""
        queues: dict[str, list[_Job]] = {}
        for job in self._live():
            queues.setdefault(job.owner, []).append(job)
        owners = [o for o in self._rotation if o in queues]
        order: list[_Job] = []
        while owners:
            for owner in list(owners):
                order.append(queues[owner].pop(0))
                if not queues[owner]:
                    owners.remove(owner)
        return order

    def position(self, future: Future) -> int | None:
        """How many replies must finish before this one starts (0 = it starts at the next turn),
        or None once it has started. While a batch runs, the first `room` waiting jobs join it."""
        with self._changed:
            order = self._order()
            for i, job in enumerate(order):
                if job.future is future:
                    blocked = any(not (j.joins or j.quick) for j in order[:i])  # a load waits for the batch
                    if self._stepping() and not blocked:
                        room = self.stepper.room() if self.stepper is not None else 0
                        return 0 if i < room else i - room + 1
                    return i + (1 if self.busy else 0)
        return None

    def _stepping(self) -> bool:
        return self.stepper is not None and len(self.stepper) > 0

    @property
    def busy(self) -> bool:
        """A job is running or replies are decoding."""
        return self._running or self._stepping()

    def may_start(self, job: _Job) -> bool:
        """Can this job start now? Anything can when no reply decodes; while some do, another
        reply may join if there is room, and a quick job may run between two steps."""
        if not self._stepping():
            return True
        return job.quick or (job.joins and self.stepper is not None and self.stepper.room() > 0)

    def waiting(self) -> int:
        with self._lock:
            return len(self._live())

    def _live(self) -> list[_Job]:
        """Waiting jobs not cancelled meanwhile (a cancelled one leaves when the worker reaches it)."""
        return [job for job in self._waiting if not job.future.cancelled()]

    def is_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[[], Any], quick: bool = False) -> Any:
        """Run fn on the worker and wait for its result. `quick`: a short job (such as counting
        tokens) that may run between two decode steps; otherwise it waits for the batch to end."""
        if self.is_worker_thread():
            return fn()
        return self.submit(fn, quick=quick).result()

    def _next(self) -> _Job | None | bool:
        """The next job in fair order if it may start now; False: step the batch first; None:
        closed and nothing left. Waits while there is nothing to do; under the lock."""
        while True:
            for job in [j for j in self._waiting if j.future.cancelled()]:
                self._take(job, served=False)  # stopped while waiting: it never runs
            order = self._order()
            if order and self.may_start(order[0]):
                return self._take(order[0], served=True)
            quick = next((job for job in order if job.quick), None)
            if quick is not None:  # short jobs pass a head that waits for room
                return self._take(quick, served=True)
            if self._stepping():
                stepper = self.stepper
                gather = stepper is not None and stepper.reading_only() and stepper.room() > 0 and not self._closed
                wait = self._gather_wait() if gather else 0.0
                if wait > 0:
                    self._changed.wait(wait)  # a submit wakes us; the announced reply joins this read
                    continue
                self._gather_until = 0.0
                return False  # the head waits for room (or for the batch to end); decode on
            if self._closed:
                return None
            if not self._idle and self.on_idle is not None:
                self._idle = True
                self._changed.release()  # not under the lock: a submit meanwhile is seen below
                try:
                    self.on_idle()
                except Exception:  # noqa: BLE001 - housekeeping never stops the worker
                    log.exception("the idle hook failed")
                finally:
                    self._changed.acquire()
                continue
            self._changed.wait()

    def _take(self, job: _Job, served: bool) -> _Job:
        self._waiting.remove(job)
        more = any(other.owner == job.owner for other in self._waiting)
        if served or not more:
            self._rotation.remove(job.owner)
            if served and more:
                self._rotation.append(job.owner)  # its next job waits for everyone else's turn
        return job

    def _loop(self) -> None:
        while True:
            with self._changed:
                job = self._next()
                if job is None:
                    return
                self._running = job is not False
            self._idle = False
            if job is False:
                self._step()
                continue
            try:
                if job.cancel is not None and job.cancel.is_set():
                    job.future.cancel()
                elif job.future.set_running_or_notify_cancel():
                    try:
                        job.future.set_result(job.run())
                    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                        job.future.set_exception(exc)
            finally:
                with self._changed:
                    self._running = False

    def _step(self) -> None:
        try:
            if self.stepper is not None:
                self.stepper.step()
        except BaseException:  # noqa: BLE001 - the batch handed the error to its replies
            log.exception("a decode step failed")

    def close(self) -> None:
        with self._changed:  # jobs already queued still run; later submits get Busy instead of hanging
            self._closed = True
            self._changed.notify()
        self._thread.join(timeout=10)
