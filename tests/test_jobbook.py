"""The job store's decisions, driven directly: no threads, no disk, no clocks.

The state machine starts, runs, finishes and cancels jobs and lets time pass at random, against a
plain model (a list in start order), and checks what issue 18 found broken: jobs start in the order
they were started, at most ``capacity`` at once; a waiting job never starts once cancelled; every
bound holds (waiting, kept answers by time, bytes and count, gone records).
"""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from de_magic.backend import jobbook
from de_magic.backend.jobbook import (CANCELLED, DONE, EVICTED, EXPIRED, LOST, NEVER_STARTED, QUEUED, RUNNING, Job,
                                      JobBook)
from de_magic.wire.errors import Busy


def job(n: int) -> Job:
    return Job(f"svc:w:{n:06d}", "alice", "f")


def test_jobs_start_in_order_at_most_capacity_at_once_and_the_queue_is_bounded():
    book = JobBook("svc", capacity=2, max_queue=3, ttl=60, max_bytes=1000, max_kept=10)
    jobs = [job(i) for i in range(5)]
    for j in jobs:
        book.admit(j)
    with pytest.raises(Busy, match="has 3 jobs waiting already"):
        book.admit(job(5))
    assert [book.take(), book.take(), book.take()] == [jobs[0], jobs[1], None]
    book.finish(jobs[0], DONE, 10, now=0.0)
    assert book.take() is jobs[2]


def test_a_cancelled_waiting_job_never_starts_and_cancels_cannot_pile_up():
    book = JobBook("svc", capacity=1, max_queue=10_000, ttl=60, max_bytes=1000, max_kept=10)
    first = job(0)
    book.admit(first)
    assert book.take() is first
    waiting = [job(i) for i in range(1, 1001)]
    for j in waiting:
        book.admit(j)
        assert book.withdraw(j)
    assert len(book.queue) <= 64 + 1 and book.waiting == 0  # compacted, as the broker's queues
    last = job(2000)
    book.admit(last)
    book.finish(first, DONE, 1, now=0.0)
    assert book.take() is last


def test_finished_jobs_go_oldest_first_by_time_bytes_and_count():
    book = JobBook("svc", capacity=1, max_queue=10, ttl=10, max_bytes=100, max_kept=3)
    done = []
    for i in range(5):
        j = job(i)
        book.admit(j)
        assert book.take() is j
        done.append(book.finish(j, DONE, 10, now=float(i)))
    assert [j.status for j in book.jobs.values()] == [EVICTED, EVICTED, DONE, DONE, DONE]
    assert "within 3 (--max-jobs)" in book.jobs[job(0).token].reason
    big = job(9)
    book.admit(big)
    book.take()
    book.finish(big, DONE, 95, now=5.0)  # over the bytes: the older ones go
    assert [j.status for j in book.kept.values()] == [DONE] and book.kept_bytes == 95
    assert [j.token for j in book.expire(now=16.0)] == [big.token] and big.status == EXPIRED


def test_the_waiting_jobs_of_a_stopping_backend_are_said_never_to_have_started():
    book = JobBook("svc", capacity=1, max_queue=10, ttl=10, max_bytes=100, max_kept=3)
    running, waiting = job(0), job(1)
    book.admit(running)
    book.admit(waiting)
    book.take()
    assert book.stop() == [waiting]
    assert (waiting.status, waiting.reason) == (LOST, NEVER_STARTED)
    assert running.status == RUNNING  # its thread loses it, when the interrupt lands


def test_records_of_gone_jobs_are_bounded(monkeypatch):
    monkeypatch.setattr(jobbook, "MAX_GONE", 5)
    book = JobBook("svc", capacity=1, max_queue=100, ttl=10, max_bytes=100, max_kept=1)
    for i in range(20):
        j = job(i)
        book.admit(j)
        book.take()
        book.finish(j, DONE, 1, now=float(i))
    assert len(book.gone) == 5 and len(book.jobs) == 6 and len(book.kept) == 1


class Jobs(RuleBasedStateMachine):
    """Random starts, finishes, cancels and time: the book against a list of jobs in start order."""

    @initialize(capacity=st.integers(1, 3), max_queue=st.integers(0, 5), max_bytes=st.integers(0, 100),
                max_kept=st.integers(0, 4), ttl=st.floats(1, 20))
    def setup(self, capacity, max_queue, max_bytes, max_kept, ttl):
        self.book = JobBook("svc", capacity, max_queue, ttl, max_bytes, max_kept)
        self.capacity, self.max_queue, self.max_bytes, self.max_kept, self.ttl = (
            capacity, max_queue, max_bytes, max_kept, ttl)
        self.waiting: list[Job] = []  # the model: waiting jobs in start order
        self.running: list[Job] = []
        self.started: list[int] = []  # numbers of jobs in the order they started
        self.cancelled: set[int] = set()
        self.now = 0.0
        self.n = 0

    def _pump(self):
        while (j := self.book.take()) is not None:
            expected = self.waiting.pop(0)  # the oldest waiting job, none other
            assert j is expected and j.status == RUNNING
            self.running.append(j)
            self.started.append(int(j.token))
        assert len(self.running) <= self.capacity
        assert not self.waiting or len(self.running) == self.capacity  # no job waits while a place is free

    @rule()
    def start(self):
        j = job(self.n)
        self.n += 1
        full = len(self.waiting) - (self.capacity - len(self.running)) >= self.max_queue
        try:
            self.book.admit(j)
        except Busy:
            assert full
            return
        assert not full
        self.waiting.append(j)
        self._pump()

    @precondition(lambda self: self.running)
    @rule(data=st.data(), size=st.integers(0, 60))
    def finish(self, data, size):
        j = data.draw(st.sampled_from(self.running))
        self.running.remove(j)
        dropped = self.book.finish(j, DONE, size, self.now)
        assert all(d.status in (EXPIRED, EVICTED) for d in dropped)
        self._pump()

    @precondition(lambda self: self.waiting)
    @rule(data=st.data())
    def cancel_waiting(self, data):
        j = data.draw(st.sampled_from(self.waiting))
        assert self.book.withdraw(j)
        self.waiting.remove(j)
        self.cancelled.add(int(j.token))
        self.book.finish(j, CANCELLED, 0, self.now, was_running=False)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def cancel_running(self, data):
        assert not self.book.withdraw(data.draw(st.sampled_from(self.running)))  # the store interrupts it

    @rule(seconds=st.floats(0, 10))
    def time_passes(self, seconds):
        self.now += seconds
        self.book.expire(self.now)

    @invariant()
    def bounds_hold(self):
        if not hasattr(self, "book"):
            return
        book = self.book
        assert book.waiting == len(self.waiting) <= self.max_queue
        assert book.running == len(self.running)
        assert self.started == sorted(self.started)  # in start order
        assert not self.cancelled & set(self.started)
        assert book.kept_bytes == sum(j.size for j in book.kept.values())
        assert book.kept_bytes <= self.max_bytes and len(book.kept) <= self.max_kept
        assert all(self.now - j.finished <= self.ttl for j in book.kept.values())
        assert all(j.status in (QUEUED, RUNNING) or j.token in book.kept or j.token in book.gone
                   for j in book.jobs.values())


Jobs.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
TestJobs = Jobs.TestCase
