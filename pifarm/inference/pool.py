"""A pool of worker threads per model version, each owning its own interpreters.

Workers grow from `min_workers` towards `max_workers` while requests queue up and shrink back
after `idle_seconds` without work. A worker takes the oldest job and, when the batch policy says
so, gathers more rows into the same invoke. TFLite's invoke releases the GIL, so threads give
real parallelism. Every wait is bounded; `close()` lets queued jobs finish, then the threads end.

Each invoke reports its phases (input, infer, output ns) to `on_execute` for the statistics
extension, and, when a `LiveCheck` is set, its rows: the live check then decides per window
whether workers gather batches.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from pifarm.errors import InferenceError
from pifarm.inference.batching import BatchPolicy, Job, LiveCheck, mean_wait, split, stack
from pifarm.inference.model import Session
from pifarm.inference.settings import ModelSettings

log = logging.getLogger(__name__)


class Overloaded(InferenceError):
    """The model's queue is full; the client should retry."""

    http_status = 503


class Retired(Exception):
    """This pool was swapped out; the caller should submit to the current version instead."""


class WorkerPool:
    def __init__(self, name: str, make_session: Callable[[], Session], first: Session, settings: ModelSettings,
                 policy: BatchPolicy, on_batch: Callable[[int], None] | None = None,
                 on_queue: Callable[[int], None] | None = None,
                 on_execute: Callable[[list[Job], int, int, int, int], None] | None = None):
        self.name = name
        self._make = make_session
        self._settings = settings
        self.policy = policy
        self._on_batch = on_batch or (lambda n: None)
        self._on_queue = on_queue or (lambda n: None)
        # (jobs, rows, input ns, infer ns, output ns) after every invoke; replaced by the server
        self.on_execute = on_execute
        self.live: LiveCheck | None = None   # set once batching = "auto" calibrated this version
        self._cv = threading.Condition()
        self._queue: deque[Job] = deque()
        self._workers = 0
        self._idle = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        with self._cv:
            self._spawn(first)
            for _ in range(settings.min_workers - 1):
                self._spawn(None)

    # -- client side -----------------------------------------------------------------------
    def submit(self, arrays: list[np.ndarray], rows: int | None) -> concurrent.futures.Future:
        return self.put(Job(arrays, rows)).future

    def put(self, job: Job) -> Job:
        """Queue `job` (its future gets the outputs); Retired if this version was swapped out."""
        with self._cv:
            if self._closed:
                raise Retired(self.name)
            if len(self._queue) >= self._settings.queue_limit:
                raise Overloaded(f"model {self.name}: {len(self._queue)} requests already queued; retry later")
            self._queue.append(job)
            depth = len(self._queue)
            if depth > self._idle and self._workers < self._settings.max_workers:
                self._spawn(None)
            self._cv.notify()
        self._on_queue(depth)
        return job

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def workers(self) -> int:
        return self._workers

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; queued and running ones finish on this version's interpreters."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            threads = list(self._threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- worker side -----------------------------------------------------------------------
    def _spawn(self, session: Session | None) -> None:
        self._workers += 1
        t = threading.Thread(target=self._run, args=(session,), name=f"infer-{self.name}-{self._workers}", daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _run(self, session: Session | None) -> None:
        try:
            if session is None:
                session = self._make()
        except Exception as e:  # an extra worker that cannot build an interpreter just goes away
            log.warning("model %s: extra worker could not start: %s", self.name, e)
            with self._cv:
                self._workers -= 1
            return
        while True:
            batch = self._take()
            if batch is None:
                return
            self._execute(session, batch)

    def _take(self) -> list[Job] | None:
        with self._cv:
            self._idle += 1
            try:
                while not self._queue:
                    if self._closed:
                        self._workers -= 1
                        return None
                    # Only a worker above min_workers has an idle deadline; the others sleep until
                    # work comes (an idle node must not wake them for nothing).
                    spare = self._workers > self._settings.min_workers
                    woke = self._cv.wait(timeout=(self._settings.idle_seconds or None) if spare else None)
                    if not woke and not self._queue and self._workers > self._settings.min_workers:
                        self._workers -= 1
                        return None
            finally:
                self._idle -= 1
            job = self._queue.popleft()
            batch = [job]
            live = self.live
            gather = self.policy.should_gather(len(self._queue), mean_wait(self._queue, time.monotonic())) \
                if live is None else (live.gather() and self.policy.min_queue <= len(self._queue)
                                      and mean_wait(self._queue, time.monotonic()) < self.policy.max_mean_wait)
            if job.rows is not None and gather:
                rows = job.rows
                deadline = job.enqueued + self.policy.max_delay
                while rows < self.policy.max_batch:
                    while self._queue and self.policy.fits(rows, self._queue[0]):
                        nxt = self._queue.popleft()
                        batch.append(nxt)
                        rows += nxt.rows or 0
                    remaining = deadline - time.monotonic()
                    if rows >= self.policy.max_batch or self._queue or remaining <= 0 or self._closed:
                        break
                    self._cv.wait(remaining)
            now = time.monotonic()
            for j in batch:
                j.started = now
            depth = len(self._queue)
        self._on_queue(depth)
        return batch

    def _execute(self, session: Session, batch: list[Job]) -> None:
        try:
            t0 = time.perf_counter_ns()
            stacked = stack(batch)
            t1 = time.perf_counter_ns()
            outputs = session.run(stacked)
            t2 = time.perf_counter_ns()
            parts = split(outputs, batch)
            t3 = time.perf_counter_ns()
        except Exception as e:
            err = InferenceError(f"model {self.name}: invoke failed: {' '.join(str(e).split())[:200]}")
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(err)
            return
        for j, part in zip(batch, parts):
            if not j.future.done():
                j.future.set_result(part)
        rows = sum(j.rows or 1 for j in batch)
        self._on_batch(rows)
        if self.on_execute is not None:
            s_in, s_infer, s_out = session.phases
            self.on_execute(batch, rows, t1 - t0 + s_in, s_infer, t3 - t2 + s_out)
        live = self.live
        if live is not None:
            live.record(rows, bool(self._queue) or len(batch) > 1)  # load: others waiting, or gathered
