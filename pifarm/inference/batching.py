"""Micro-batching: when to gather requests into one invoke, and how to stack and split them.

The rule of thumb (from the seed): gather only when at least `min_queue` requests are already
waiting and their mean wait so far is under `max_mean_wait`; then take up to `max_batch` rows,
waiting at most `max_delay` after the first request arrived. A request that finds the queue
empty runs at once, so batching never adds latency when the server is idle, and models whose
calibration showed no gain are never batched at all (`enabled=False`).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Job:
    arrays: list[np.ndarray]
    rows: int | None                      # leading batch rows, None for a model with no batch dim
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    enqueued: float = field(default_factory=time.monotonic)


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
