"""The live re-check of the batching decision (batching.LiveCheck), on a clock the test moves:
batched windows that deliver no more rows per second switch batching off; a clear gain later
switches it back on; too little traffic decides nothing."""

from __future__ import annotations

from pifarm.inference.batching import LiveCheck


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def serve(check: LiveCheck, clock: Clock, seconds: float, rows_per_s: dict[bool, float], step: float = 0.01) -> None:
    """Feed `check` as a busy server would: every `step`, the rows the current mode delivers."""
    end = clock.t + seconds
    carry = 0.0
    while clock.t < end:
        clock.t += step
        carry += rows_per_s[check.gather()] * step
        rows, carry = int(carry), carry - int(carry)
        check.record(rows, busy=True)


def test_batching_that_stops_paying_is_switched_off_and_comes_back_for_a_clear_gain():
    clock = Clock()
    changes = []
    check = LiveCheck(True, on_change=lambda enabled, reason: changes.append((enabled, reason)), clock=clock)
    serve(check, clock, 3.0, {False: 400, True: 320})  # batching delivers 0.8x: it loses
    assert check.enabled is False and changes and changes[-1][0] is False
    assert "stopped paying" in changes[-1][1] and "0.80x" in changes[-1][1]
    # while off, no trial for a while: every worker takes single rows
    serve(check, clock, 10.0, {False: 400, True: 320})
    assert check.enabled is False and len(changes) == 1
    serve(check, clock, 40.0, {False: 400, True: 600})  # now a clear gain (1.5x)
    assert check.enabled is True and changes[-1][0] is True and "pays again" in changes[-1][1]


def test_a_small_gain_keeps_batching_on_and_trials_grow_rarer():
    clock = Clock()
    check = LiveCheck(True, clock=clock)
    serve(check, clock, 60.0, {False: 400, True: 480})
    assert check.enabled is True and 2 <= check.trials <= 6 and check.last_ratio > 1.1


def test_idle_or_light_traffic_decides_nothing():
    clock = Clock()
    check = LiveCheck(True, clock=clock)
    for _ in range(1000):
        clock.t += 0.01
        check.record(1, busy=False)  # never a queue: no trial starts
    assert check.trials == 0 and check.enabled
    serve(check, clock, 5.0, {False: 4, True: 4})  # a trickle: windows too thin to judge
    assert check.trials == 0 and check.enabled
