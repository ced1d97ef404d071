"""Progress lines: sparse, with a rate that reads well for fast and slow units and the
time left."""

from __future__ import annotations

import logging

import pytest

from tokprob import progress as progress_module
from tokprob.progress import Progress


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    return now


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tokprob"]


def test_fast_units_show_a_rate_and_the_time_left(clock, caplog):
    caplog.set_level(logging.INFO, logger="tokprob")
    bar = Progress(10_000, "α", log_every=30.0)
    clock[0] += 10.0
    bar.update(1_000)  # before log_every: no line yet
    assert _lines(caplog) == []
    clock[0] += 30.0
    bar.update(1_000)
    assert _lines(caplog) == ["α: 2,000/10,000 tokens (20%, 50 tokens/s, about 3 min left)"]


def test_slow_units_show_seconds_each_and_minutes_left(clock, caplog):
    caplog.set_level(logging.INFO, logger="tokprob")
    with Progress(33, "greedy generations", unit="runs", log_every=30.0) as bar:
        clock[0] += 48.0
        bar.update(4)
        clock[0] += 282.0
        bar.update(29)
    assert _lines(caplog) == [
        "greedy generations: 4/33 runs (12%, 12.0 s per run, about 6 min left)",
        "greedy generations: done, 33/33 runs (100%, 10.0 s per run)",
    ]


def test_an_unfinished_loop_says_how_far_it_got(clock, caplog):
    caplog.set_level(logging.INFO, logger="tokprob")
    with pytest.raises(KeyboardInterrupt), Progress(100, "pruning sweep", unit="positions"):
        clock[0] += 5.0
        raise KeyboardInterrupt
    assert _lines(caplog) == ["pruning sweep: stopped, 0/100 positions (0%, 0 positions/s)"]


def test_observers_hear_of_progress_sparsely_and_at_the_end(clock):
    heard: list[tuple[str, float]] = []
    with (progress_module.observed(lambda p: heard.append((p.description, p.percent))),
          Progress(100, "α", notify_every=3.0) as bar):
        bar.update(10)  # within notify_every of the start: not yet
        clock[0] += 3.0
        bar.update(40)
        clock[0] += 1.0
        bar.update(10)
        clock[0] += 3.0
        bar.update(40)
    assert heard == [("α", 0.0), ("α", 50.0), ("α", 100.0), ("α", 100.0)]
    Progress(10, "after the block").close()
    assert len(heard) == 4


def test_a_failing_observer_never_stops_the_work(clock):
    def broken(_):
        raise RuntimeError("the UI is down")

    with progress_module.observed(broken), Progress(5, "α") as bar:
        bar.update(5)
    assert bar.done == 5
