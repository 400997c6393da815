"""Micro-batching: when to gather requests into one invoke, and how to stack and split them.

The rule of thumb (from the seed): gather only when at least `min_queue` requests are already
waiting and their mean wait so far is under `max_mean_wait`; then take up to `max_batch` rows,
waiting at most `max_delay` after the first request arrived. A request that finds the queue
empty runs at once, so batching never adds latency when the server is idle, and models whose
calibration showed no gain are never batched at all (`enabled=False`).

A calibration is a short timing that the machine's noise can flip, so `LiveCheck` re-checks the
decision while serving: under load it alternates unbatched and batched windows and compares the
rows each delivers per second, switching batching off as soon as it stops paying (and, much
more rarely, back on when it pays clearly).
"""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Job:
    arrays: list[np.ndarray]
    rows: int | None                      # leading batch rows, None for a model with no batch dim
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)
    started: float = 0.0                  # when a worker took it (queue time = started - enqueued)


@dataclass(frozen=True)
class BatchPolicy:
    enabled: bool
    max_batch: int = 8
    max_delay: float = 0.002
    min_queue: int = 1
    max_mean_wait: float = 0.005

    def should_gather(self, waiting: int, mean_wait: float) -> bool:
        """True when a worker that just took a job should gather more into the same invoke."""
        return self.enabled and waiting >= self.min_queue and mean_wait < self.max_mean_wait

    def fits(self, rows_so_far: int, job: Job) -> bool:
        return job.rows is not None and rows_so_far + job.rows <= self.max_batch


def mean_wait(jobs, now: float) -> float:
    jobs = list(jobs)
    return sum(now - j.enqueued for j in jobs) / len(jobs) if jobs else 0.0


def stack(jobs: list[Job]) -> list[np.ndarray]:
    """One array per model input: every job's rows, in job order."""
    if len(jobs) == 1:
        return jobs[0].arrays
    return [np.concatenate([j.arrays[k] for j in jobs], axis=0) for k in range(len(jobs[0].arrays))]


def split(outputs: list[np.ndarray], jobs: list[Job]) -> list[list[np.ndarray]]:
    """Each job's slice of the batched outputs (the inverse of `stack`)."""
    if len(jobs) == 1:
        return [outputs]
    out, start = [], 0
    for j in jobs:
        n = j.rows or 0
        out.append([o[start : start + n] for o in outputs])
        start += n
    return out


class LiveCheck:
    """Batched against unbatched windows while serving; the decision follows live throughput.

    A trial runs only under load: `pairs` pairs of windows of `window` seconds each, one
    unbatched and one batched (the order alternates, off-on then on-off, so a load that rises
    or falls through the trial favours neither), each delivering some rows; the ratio is taken
    within a pair (neighbouring windows see the same machine noise) and its median decides. Batching stays on only while it
    delivers at least `keep` times the unbatched rows per second; once off, it comes back only
    for a clear gain (`regain`). Trials repeat at growing intervals while the verdict holds, so
    a settled model spends almost no time in the losing mode.
    """

    KEEP = 1.03     # batched windows must deliver 3% more rows per second to stay on
    REGAIN = 1.15   # and 15% more to come back once switched off

    def __init__(self, enabled: bool, on_change: Callable[[bool, str], None] | None = None,
                 window: float = 0.3, pairs: int = 4, first_interval: float = 0.5,
                 min_rows: int = 8, clock: Callable[[], float] = time.monotonic):
        self.enabled = enabled
        self._on_change = on_change or (lambda enabled, reason: None)
        self._window, self._pairs, self._min_rows, self._clock = window, pairs, min_rows, clock
        self._lock = threading.Lock()
        self._interval = first_interval
        # A calibration that said "batch" is checked at once under load; one that said "no" only
        # after a while (its trial runs batched windows, which is what it expects to lose).
        self._next = clock() + (first_interval if enabled else 30.0)
        self._trial: list[tuple[bool, float]] | None = None  # windows: (batched, rows per second)
        self._win_start = 0.0
        self._win_rows = 0
        self.trials = 0
        self.last_ratio: float | None = None

    def gather(self) -> bool:
        """Whether a worker taking a job now may gather a batch."""
        t = self._trial
        if t is None:
            return self.enabled
        return len(t) % 4 in (1, 2)  # windows: off, on, on, off, off, on, on, off

    def record(self, rows: int, busy: bool) -> None:
        """After each invoke: `rows` done; `busy` when requests were still waiting (load)."""
        now = self._clock()
        with self._lock:
            if self._trial is None:
                if busy and now >= self._next:
                    self._trial, self._win_start, self._win_rows = [], now, 0
                return
            self._win_rows += rows
            elapsed = now - self._win_start
            if elapsed < self._window:
                return
            if self._win_rows < self._min_rows:
                # too little traffic to judge: abandon, keep the current decision, retry later
                self._trial, self._next = None, now + self._interval
                return
            self._trial.append((len(self._trial) % 4 in (1, 2), self._win_rows / elapsed))
            self._win_start, self._win_rows = now, 0
            if len(self._trial) < 2 * self._pairs:
                return
            windows, self._trial = self._trial, None
        ratios = []
        for a, b in zip(windows[::2], windows[1::2]):
            on, off = (b, a) if b[0] else (a, b)
            ratios.append(on[1] / max(off[1], 1e-9))
        self._decide(statistics.median(ratios), now)

    def _decide(self, ratio: float, now: float) -> None:
        self.trials += 1
        self.last_ratio = ratio
        was = self.enabled
        self.enabled = ratio >= (self.KEEP if was else self.REGAIN)
        if self.enabled == was:
            self._interval = min(self._interval * 2 if self._interval >= 5 else 5.0, 120.0)
        else:
            self._interval = 30.0
        self._next = now + self._interval
        if self.enabled != was:
            verb = "pays again" if self.enabled else "stopped paying"
            self._on_change(self.enabled, f"live check: batching {verb} (batched windows delivered "
                                          f"{ratio:.2f}x the unbatched rows per second); "
                                          f"{'gathering batches' if self.enabled else 'not gathering batches'}")
