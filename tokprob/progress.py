"""Progress of long loops: a live bar on a terminal, sparse log lines everywhere else.

Log lines go to the `tokprob` logger at most every `log_every` seconds, so a Prefect run
log gets a handful of lines, not one per batch. Observers (`observed`) hear of progress
every few seconds: the orchestration layer shows it in the Prefect UI, the library stays
free of Prefect.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("tokprob")

Observer = Callable[["Progress"], None]
_observers: list[Observer] = []


@contextmanager
def observed(observer: Observer) -> Iterator[None]:
    """Call `observer(progress)` on every Progress that moves inside this block: at its
    start, at most every `notify_every` seconds, and when it closes."""
    _observers.append(observer)
    try:
        yield
    finally:
        _observers.remove(observer)


class Progress:
    """Counts work done towards a known total."""

    def __init__(self, total: int, description: str, unit: str = "tokens",
                 log_every: float = 30.0, notify_every: float = 3.0) -> None:
        self.total = total
        self.description = description
        self.unit = unit
        self.log_every = log_every
        self.notify_every = notify_every
        self.done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self._last_notice = self.started
        self._notify()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=description, unit=unit, unit_scale=True,
                             mininterval=0.5, leave=False, file=sys.stderr)

    def update(self, amount: int) -> None:
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
        now = time.monotonic()
        if now - self._last_log >= self.log_every and self.done < self.total:
            self._last_log = now
            log.info("%s: %s", self.description, self._status(now))
        if now - self._last_notice >= self.notify_every:
            self._last_notice = now
            self._notify()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        ended = "done" if self.done >= self.total else "stopped"
        log.info("%s: %s, %s", self.description, ended, self._status(time.monotonic()))
        self._notify()

    @property
    def percent(self) -> float:
        """Share of the total done, 0 to 100."""
        return min(100.0, 100.0 * self.done / self.total) if self.total else 100.0

    def status(self) -> str:
        """Done, total, rate and time left, in words."""
        return self._status(time.monotonic())

    def _notify(self) -> None:
        for observer in list(_observers):
            try:
                observer(self)
            except Exception as error:  # showing progress must never stop the work
                log.debug("progress observer failed: %s", error)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def rate(self) -> float:
        """Units per second so far."""
        return self.done / max(time.monotonic() - self.started, 1e-9)

    def _status(self, now: float) -> str:
        share = 100.0 * self.done / self.total if self.total else 100.0
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        # Slow units (a generation run, a fit) read better as seconds each.
        speed = f"{rate:,.0f} {self.unit}/s" if rate >= 1 or not self.done \
            else f"{elapsed / self.done:,.1f} s per {self.unit.rstrip('s')}"
        status = f"{self.done:,}/{self.total:,} {self.unit} ({share:.0f}%, {speed}"
        if 0 < self.done < self.total:
            status += f", about {_duration((self.total - self.done) / rate)} left"
        return status + ")"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
