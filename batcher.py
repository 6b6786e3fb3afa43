"""Batcher: one worker thread that runs model work in batches, as LitServe, Ray Serve and Triton do.

Jobs of one group (same model, same prompt or question length) queued together run as one batch of
at most max_batch. Interactive jobs (a person's request) run first, oldest first. Only after no person's
job has run for background_idle seconds do the others run: background jobs (an upload's question context)
one at a time, newest first, then bulk jobs (a batch job's captions) in batches, oldest first. So a running
batch job holds up a person by one batch at most; and a bulk batch may let people's batches run inside it,
between its steps (let_people_in), so that a question waits for one step of it. A person's job past
max_queue is refused, a background job past max_background pushes out the oldest one; bulk jobs are
bounded by their one submitter (the job runner keeps two batches queued at most). A job whose caller gave up
is dropped before it runs.
"""

import atexit
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Hashable

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More interactive jobs are waiting than the queue holds."""


@dataclass(eq=False)
class Job:
    """One unit of model work: run(payloads) computes a whole group's results in one call."""

    run: Callable[[list], list]
    group: Hashable
    payload: object
    queued_at: float
    kind: str  # interactive, background or bulk
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs submitted jobs on one thread, batching jobs of the same group."""

    def __init__(self, *, max_batch: int = 8, batch_wait: float = 0.005, max_queue: int = 32, max_background: int = 16,
                 background_idle: float = 0.3, clock: Callable[[], float] = time.monotonic):
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait, max_queue
        self.max_background = max_background
        self.background_idle = background_idle
        self.clock = clock
        self.batch_seconds = 1.0  # a running average, for telling a refused caller when to return
        self._interactive: deque[Job] = deque()
        self._background: deque[Job] = deque()
        self._bulk: deque[Job] = deque()
        self._last_interactive = clock()
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="model-batcher", daemon=True)
        self._thread.start()
        # At exit, let a running batch finish: a thread stopped inside torch aborts the process.
        atexit.register(self.close)

    def close(self, timeout: float = 60.0) -> None:
        """Stop: queued jobs are cancelled, the running batch finishes."""
        with self._changed:
            self._closed = True
            for job in (*self._interactive, *self._background, *self._bulk):
                job.future.cancel()
            for queue in (self._interactive, self._background, self._bulk):
                queue.clear()
            self._changed.notify_all()
        self._thread.join(timeout)

    def submit(self, run: Callable[[list], list], group: Hashable, payload, *, background: bool = False,
               bulk: bool = False) -> Future:
        """Queue one job (a person's, or background, or bulk); its future gets the job's own result.

        QueueFull if a person's queue is full; a full background queue cancels its oldest job instead.
        """
        job = Job(run, group, payload, self.clock(), "background" if background else "bulk" if bulk else "interactive")
        with self._changed:
            if self._closed:
                raise QueueFull()
            if bulk:
                self._bulk.append(job)
            elif background:
                self._background.append(job)
                while len(self._background) > self.max_background:
                    self._background.popleft().future.cancel()
            else:
                self._drop_cancelled()
                if len(self._interactive) >= self.max_queue:
                    raise QueueFull()
                self._interactive.append(job)
                self._last_interactive = job.queued_at
            self._changed.notify()
        return job.future

    def waiting(self) -> int:
        """How many interactive jobs are queued."""
        with self._changed:
            self._drop_cancelled()
            return len(self._interactive)

    def waiting_in_background(self) -> int:
        """How many background jobs are queued."""
        with self._changed:
            return len(self._background)

    def waiting_in_bulk(self) -> int:
        """How many bulk jobs are queued."""
        with self._changed:
            return len(self._bulk)

    def retry_after(self) -> int:
        """Seconds a refused caller should wait: the queue's batches at the average batch time."""
        batches = self.waiting() / self.max_batch + 1
        return max(1, round(batches * self.batch_seconds))

    def _work(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return  # closed
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        """Run one started batch; its callers get their results, or the error (the worker goes on)."""
        started = self.clock()
        try:
            results = batch[0].run([job.payload for job in batch])
        except BaseException as error:
            for job in batch:
                job.future.set_exception(error)
            return
        for job, result in zip(batch, results):
            job.future.set_result(result)
        with self._changed:
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (self.clock() - started)
            if batch[0].kind == "interactive":
                # Idle time counts from the end of a person's work, when their next request may follow.
                self._last_interactive = self.clock()

    def let_people_in(self, allowed: Callable[[Hashable], bool]) -> None:
        """Run now, inside the batch that is running, the people's batches waiting whose group allowed() takes.

        Only a bulk batch's own run calls this, between its steps (ModelService: between a job's images and
        tokens, questions go in), so that a person waits for one step of a bulk batch, not for all of it.
        """
        if threading.current_thread() is not self._thread:
            raise RuntimeError("let_people_in runs only inside a batch, on the worker's thread")
        while True:
            with self._changed:
                self._drop_cancelled()
                first = next((job for job in self._interactive if allowed(job.group)), None)
                if first is None:
                    return
                started = self._start(self._interactive, self._companions(self._interactive, first))
            if started:
                self._run(started)

    def _take(self) -> list[Job]:
        """The next batch to run, started (cancelled jobs dropped); waits until there is one; [] once closed."""
        with self._changed:
            while True:
                if self._closed:
                    return []
                self._drop_cancelled()
                if self._interactive:
                    first = self._interactive[0]
                    batch = self._companions(self._interactive, first)
                    wait = first.queued_at + self.batch_wait - self.clock()
                    if len(batch) < self.max_batch and wait > 0:
                        self._changed.wait(wait)  # a moment for companions arriving together
                        continue
                    started = self._start(self._interactive, batch)
                    if started:
                        return started
                    continue
                if self._background or self._bulk:
                    idle = self._last_interactive + self.background_idle - self.clock()
                    if idle > 0:
                        self._changed.wait(idle)
                        continue
                    if self._background:
                        job = self._background.pop()  # newest first: the image a person is most likely to ask about
                        if job.future.set_running_or_notify_cancel():
                            return [job]
                        continue
                    started = self._start(self._bulk, self._companions(self._bulk, self._bulk[0]))
                    if started:
                        return started
                    continue
                self._changed.wait()

    def _companions(self, queue: deque[Job], first: Job) -> list[Job]:
        """The batch first leads: the queued jobs of its group, oldest first, at most max_batch."""
        return [job for job in queue if job.group == first.group][: self.max_batch]

    @staticmethod
    def _start(queue: deque[Job], batch: list[Job]) -> list[Job]:
        """Take a batch out of its queue and start it; those cancelled meanwhile are left out."""
        for job in batch:
            queue.remove(job)
        return [job for job in batch if job.future.set_running_or_notify_cancel()]

    def _drop_cancelled(self) -> None:
        for queue in (self._interactive, self._background, self._bulk):
            for job in [job for job in queue if job.future.cancelled()]:
                queue.remove(job)
