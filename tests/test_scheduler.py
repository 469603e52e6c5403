"""InferenceWorker: one thread, submission order, queue positions, the waiting bound, cancellation."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from localchat.engine.scheduler import Busy, InferenceWorker

WAIT = 5  # seconds; a broken worker fails the test instead of hanging it


class Gate:
    """A job that holds the worker until released, so tests can line up waiting jobs."""

    def __init__(self, timeout: float = WAIT) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.timeout = timeout

    def __call__(self) -> str:
        self.started.set()
        assert self.release.wait(self.timeout), "gate never released"
        return "gate"


@pytest.fixture()
def worker() -> Iterator[InferenceWorker]:
    w = InferenceWorker(max_waiting=32)
    yield w
    w.close()


def hold(worker: InferenceWorker, timeout: float = WAIT) -> tuple[Gate, Future]:
    gate = Gate(timeout)
    future = worker.submit(gate)
    assert gate.started.wait(WAIT)
    return gate, future


def test_jobs_run_in_submission_order_on_one_thread(worker: InferenceWorker) -> None:
    ran: list[tuple[int, int, bool]] = []

    def job(i: int) -> int:
        ran.append((i, threading.get_ident(), worker.is_worker_thread()))
        return i * i

    futures = [worker.submit(lambda i=i: job(i)) for i in range(30)]
    assert [f.result(timeout=WAIT) for f in futures] == [i * i for i in range(30)]
    assert [i for i, _, _ in ran] == list(range(30))
    threads = {t for _, t, _ in ran}
    assert len(threads) == 1
    assert threads != {threading.get_ident()}
    assert all(on_worker for _, _, on_worker in ran)
    assert not worker.is_worker_thread()


def test_order_matches_positions_when_many_threads_submit() -> None:
    worker = InferenceWorker(max_waiting=10_000)
    # 480 submits with constant thread switches, then 480 position() calls, can take longer
    # than WAIT on a slow 2-core machine: the gate must hold until the positions are all read
    gate, gate_future = hold(worker, timeout=120)
    ran: list[Future] = []
    futures: list[Future] = []
    lock = threading.Lock()

    def submitter() -> None:
        for _ in range(60):
            holder: list[Future] = []
            f = worker.submit(lambda holder=holder: ran.append(holder[0]))
            holder.append(f)
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=submitter) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a gap between numbering and queueing shows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    finally:
        sys.setswitchinterval(interval)
    assert len(futures) == 8 * 60
    positions = {id(f): worker.position(f) for f in futures}
    assert not gate_future.done(), "the gate let go before the positions were read"
    assert sorted(positions.values()) == list(range(1, len(futures) + 1))
    gate.release.set()
    for f in futures:
        f.result(timeout=WAIT)
    # what position() promised is what happened
    assert [positions[id(f)] for f in ran] == list(range(1, len(futures) + 1))
    assert gate_future.result(timeout=WAIT) == "gate"
    worker.close()


def test_positions_of_waiting_jobs(worker: InferenceWorker) -> None:
    gate, gate_future = hold(worker)
    try:
        assert worker.busy
        a, b, c = (worker.submit(lambda: None) for _ in range(3))
        assert worker.position(gate_future) is None  # already running
        assert [worker.position(f) for f in (a, b, c)] == [1, 2, 3]
        assert worker.waiting() == 3
    finally:
        gate.release.set()
    c.result(timeout=WAIT)
    assert [worker.position(f) for f in (a, b, c)] == [None, None, None]
    assert worker.waiting() == 0
    assert worker.position(Future()) is None  # never submitted


def test_busy_when_too_many_wait() -> None:
    worker = InferenceWorker(max_waiting=2)
    gate, _ = hold(worker)
    try:
        first = worker.submit(lambda: 1)
        worker.submit(lambda: 2)
        with pytest.raises(Busy, match="2 replies are already waiting; try again in a moment"):
            worker.submit(lambda: 3)
        assert worker.waiting() == 2  # the refused job was not queued
    finally:
        gate.release.set()
    assert first.result(timeout=WAIT) == 1
    assert worker.submit(lambda: 4).result(timeout=WAIT) == 4  # room again
    worker.close()


def test_busy_message_for_one_waiting() -> None:
    worker = InferenceWorker(max_waiting=1)
    gate, _ = hold(worker)
    try:
        worker.submit(lambda: None)
        with pytest.raises(Busy, match="^1 reply is already waiting"):
            worker.submit(lambda: None)
    finally:
        gate.release.set()
        worker.close()


def test_job_cancelled_before_it_starts_never_runs(worker: InferenceWorker) -> None:
    ran: list[str] = []
    gate, _ = hold(worker)
    try:
        cancel_early = threading.Event()
        cancel_early.set()
        early = worker.submit(lambda: ran.append("early"), cancel_early)
        cancel_later = threading.Event()
        later = worker.submit(lambda: ran.append("later"), cancel_later)
        after = worker.submit(lambda: ran.append("after"), threading.Event())
        cancel_later.set()  # the user pressed Stop while the reply was still waiting
    finally:
        gate.release.set()
    assert after.result(timeout=WAIT) is None
    assert early.cancelled() and later.cancelled()
    assert ran == ["after"]


def test_cancel_event_set_while_running_does_not_cancel_the_future(worker: InferenceWorker) -> None:
    cancel = threading.Event()

    def job() -> str:
        cancel.set()  # the job itself is responsible for noticing the event while running
        return "finished"

    assert worker.submit(job, cancel).result(timeout=WAIT) == "finished"


def test_exceptions_reach_the_caller_and_the_worker_goes_on(worker: InferenceWorker) -> None:
    problem = ValueError("bad input")

    def fail() -> None:
        raise problem

    failed = worker.submit(fail)
    with pytest.raises(ValueError, match="bad input") as info:
        failed.result(timeout=WAIT)
    assert info.value is problem
    assert worker.submit(lambda: "still alive").result(timeout=WAIT) == "still alive"
    assert not worker.busy


def test_call_runs_on_the_worker(worker: InferenceWorker) -> None:
    assert worker.call(lambda: worker.is_worker_thread()) is True
    with pytest.raises(KeyError):
        worker.call(lambda: {}["missing"])


def test_call_from_the_worker_thread_itself_does_not_deadlock(worker: InferenceWorker) -> None:
    def outer() -> tuple[int, bool]:
        return worker.call(lambda: 21 * 2), worker.is_worker_thread()

    assert worker.submit(outer).result(timeout=WAIT) == (42, True)


def test_close_runs_queued_jobs_then_refuses_new_ones() -> None:
    worker = InferenceWorker()
    gate, _ = hold(worker)
    queued = worker.submit(lambda: "queued")
    gate.release.set()
    worker.close()
    assert queued.result(timeout=WAIT) == "queued"
    with pytest.raises(Busy, match="shutting down"):
        worker.submit(lambda: None)


def test_one_member_with_ten_requests_does_not_starve_another(worker: InferenceWorker) -> None:
    gate, _ = hold(worker)
    ran: list[str] = []
    many = [worker.submit(lambda i=i: ran.append(f"ann{i}"), owner="ann") for i in range(10)]
    bobs = worker.submit(lambda: ran.append("bob"), owner="bob")
    assert worker.position(many[0]) == 1 and worker.position(bobs) == 2  # right after Ann's first
    assert worker.position(many[1]) == 3 and worker.position(many[9]) == 11
    gate.release.set()
    bobs.result(WAIT)
    for f in many:
        f.result(WAIT)
    assert ran == ["ann0", "bob", *[f"ann{i}" for i in range(1, 10)]]


def test_members_take_turns_and_loads_keep_their_place(worker: InferenceWorker) -> None:
    gate, _ = hold(worker)
    ran: list[str] = []
    jobs = [
        worker.submit(lambda: ran.append("a1"), owner="a"),
        worker.submit(lambda: ran.append("a2"), owner="a"),
        worker.submit(lambda: ran.append("load")),  # no owner: a turn of its own
        worker.submit(lambda: ran.append("b1"), owner="b"),
        worker.submit(lambda: ran.append("c1"), owner="c"),
        worker.submit(lambda: ran.append("b2"), owner="b"),
    ]
    cancelled = worker.submit(lambda: ran.append("never"), owner="c")
    cancelled.cancel()
    positions = [worker.position(j) for j in jobs]
    gate.release.set()
    for j in jobs:
        j.result(WAIT)
    assert ran == ["a1", "load", "b1", "c1", "a2", "b2"]
    assert positions == [1, 5, 2, 3, 4, 6]  # what each was told while waiting matches what happened


class FakeBatch:
    """A stand-in for the batch of replies: each reply needs `steps` steps; logs what happens."""

    def __init__(self, size: int) -> None:
        self.size, self.rows, self.log = size, [], []
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.rows)

    def room(self) -> int:
        return self.size - len(self.rows)

    def reading_only(self) -> bool:
        return False

    def join(self, name: str, steps: int) -> None:
        self.rows.append([name, steps])
        self.log.append(f"+{name}")

    def step(self) -> None:
        for row in self.rows:
            row[1] -= 1
        for name, _ in [r for r in self.rows if r[1] <= 0]:
            self.log.append(f"-{name}")
        self.rows = [r for r in self.rows if r[1] > 0]


def test_replies_join_a_running_batch_and_a_load_waits_for_it_to_empty(worker: InferenceWorker) -> None:
    batch = FakeBatch(size=2)
    worker.stepper = batch
    gate, held = hold(worker)  # line everything up before the worker looks at the queue
    joins = [worker.submit(lambda n=n: batch.join(n, 3), owner=n, joins=True) for n in ("ann", "bob", "cy")]
    load = worker.submit(lambda: batch.log.append("load"))
    after = worker.submit(lambda: batch.join("dee", 1), owner="dee", joins=True)
    assert [worker.position(f) for f in joins] == [1, 2, 3]  # a job (the gate) runs: all wait for it
    gate.release.set()
    for f in [*joins, load, after]:
        f.result(timeout=WAIT)
    worker.close()
    log = batch.log
    assert log[:2] == ["+ann", "+bob"]  # both start at once: the batch has room for two
    assert log.index("+cy") > min(log.index("-ann"), log.index("-bob"))  # cy waits for room
    assert log.index("load") > log.index("-cy")  # the load waits until no reply decodes...
    assert log.index("+dee") > log.index("load")  # ...and a reply queued after it runs after it


def test_a_quick_job_runs_between_steps_and_positions_count_the_room(worker: InferenceWorker) -> None:
    batch = FakeBatch(size=2)
    worker.stepper = batch
    release = threading.Event()
    slow_steps = threading.Event()

    def step() -> None:  # replies that never end, until the test clears them
        slow_steps.set()
        release.wait(WAIT)
        time.sleep(0.001)

    batch.step = step  # type: ignore[method-assign]
    worker.submit(lambda: batch.join("ann", 1000), owner="ann", joins=True).result(timeout=WAIT)
    assert slow_steps.wait(WAIT)
    waiting = [worker.submit(lambda n=n: batch.join(n, 1000), owner=n, joins=True) for n in ("bob", "cy", "dee")]
    assert [worker.position(f) for f in waiting] == [0, 1, 2]  # bob takes the free place at the next turn
    assert worker.busy
    release.set()
    assert worker.call(lambda: len(batch), quick=True) >= 1  # answered while the batch still decodes
    waiting[0].result(timeout=WAIT)
    assert batch.rows[0][0] == "ann" and len(batch) == 2
    for f in waiting[1:]:
        f.cancel()
    batch.rows.clear()


class Reads:
    """A stand-in batch that records which replies each prompt read took together."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self.joining: list[str] = []
        self.reads: list[list[str]] = []
        self.read = threading.Event()

    def __len__(self) -> int:
        return len(self.joining)

    def room(self) -> int:
        return self.size - len(self.joining)

    def reading_only(self) -> bool:
        return bool(self.joining)

    def step(self) -> None:
        self.reads.append(self.joining)
        self.joining = []
        self.read.set()


@pytest.fixture()
def reads(worker: InferenceWorker, monkeypatch: pytest.MonkeyPatch) -> Reads:
    from localchat.engine import scheduler

    monkeypatch.setattr(scheduler, "GATHER_SECONDS", 60.0)  # long: a wait that should not happen hangs the test
    batch = Reads()
    worker.stepper = batch
    return batch


def join(worker: InferenceWorker, batch: Reads, name: str) -> Future:
    return worker.submit(lambda: batch.joining.append(name), owner=name, joins=True)


def test_replies_announced_together_are_read_in_one_pass(worker: InferenceWorker, reads: Reads) -> None:
    for _ in range(3):
        worker.expect()  # three requests arrive; their checks take a while
    join(worker, reads, "ann").result(WAIT)
    time.sleep(0.05)  # ann's prompt would be read alone by now, were it not waiting for the others
    assert reads.reads == []
    join(worker, reads, "bob")
    join(worker, reads, "cy")
    assert reads.read.wait(WAIT)
    assert reads.reads == [["ann", "bob", "cy"]]


def test_without_announcements_a_prompt_is_read_at_once(worker: InferenceWorker, reads: Reads) -> None:
    join(worker, reads, "ann")
    assert reads.read.wait(WAIT)  # with a 60 s gather window, only a read that does not wait comes in time
    reads.read.clear()
    join(worker, reads, "bob")
    assert reads.read.wait(WAIT)
    assert reads.reads == [["ann"], ["bob"]]


def test_a_full_batch_does_not_wait_for_replies_that_could_not_join(worker: InferenceWorker, reads: Reads) -> None:
    reads.size = 1  # one reply at a time (a 4-bit model, say): nobody else can share the read
    worker.expect()
    worker.expect()
    join(worker, reads, "ann")
    assert reads.read.wait(WAIT)  # with a 60 s gather window, only a read that does not wait comes in time
    assert reads.reads == [["ann"]]


def test_an_announced_reply_that_never_comes_holds_a_read_only_for_the_gather_window(
    worker: InferenceWorker, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localchat.engine import scheduler

    monkeypatch.setattr(scheduler, "GATHER_SECONDS", 0.2)
    worker.expect()
    worker.expect()  # refused before it asked for a reply (a bad request, say)
    join(worker, reads, "ann")
    stop = time.monotonic() + WAIT
    while time.monotonic() < stop and not reads.read.is_set():
        worker.expect()  # announcements keep coming: the window does not grow with them
        time.sleep(0.01)
    assert reads.read.is_set()
    assert reads.reads == [["ann"]]


def test_the_idle_hook_runs_once_each_time_the_work_runs_out() -> None:
    worker = InferenceWorker()
    calls: list[str] = []
    idle = threading.Event()

    def on_idle() -> None:
        calls.append(threading.current_thread().name)
        idle.set()

    worker.on_idle = on_idle
    try:
        for round_ in range(2):
            idle.clear()
            assert worker.call(lambda r=round_: r) == round_
            assert idle.wait(5)
            time.sleep(0.05)  # idle a while: no more calls
            assert len(calls) == round_ + 1
        assert set(calls) == {"localchat-inference"}  # on the worker, never on the caller's thread
        worker.on_idle = lambda: 1 / 0  # a failing hook is logged, and the worker goes on
        assert worker.call(lambda: "still here") == "still here"
        assert worker.call(lambda: "and here") == "and here"
    finally:
        worker.close()
