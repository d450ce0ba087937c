"""Progress a person can follow: tqdm's bar on a terminal; in a file or a CI log (not a terminal), a
logging line at most every ``LOG_INTERVAL`` seconds with done/total, the rate and the time left."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, Self, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

LOG_INTERVAL = 30.0  # seconds between progress lines in a log; tests set it small
SMOOTHING = 0.3  # weight of the latest interval's rate in the smoothed rate (tqdm's default)

T = TypeVar("T")

_last_line: tuple[Callable[[], float], float] | None = None  # (clock, time) of the latest line of any LogProgress


class Progress(Protocol):
    """What work reports its progress to: a tqdm bar or a ``LogProgress`` (the part of tqdm's
    interface the package uses)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def interactive() -> bool:
    """Whether progress goes to a terminal (bars) rather than to a file or a CI log (lines)."""
    return sys.stderr.isatty()


def progress(total: int | None, desc: str, unit: str = "img", bar: bool = True, leave: bool = True) -> Progress:
    """Progress through ``total`` ``unit``s of ``desc``: on a terminal tqdm's bar (none without ``bar``,
    for work inside Keras' own bar), otherwise a ``LogProgress``. ``leave`` keeps the last state."""
    if interactive():
        return tqdm(total=total, desc=desc, unit=unit, disable=not bar, leave=leave)
    return LogProgress(total, desc, unit, leave=leave)


def track(items: Iterable[T], total: int, desc: str, unit: str = "img") -> Iterator[T]:
    """``items``, counted into ``progress(total, desc, unit)`` as each is taken."""
    with progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update()


class LogProgress:
    """tqdm's interface for a log: a line ``desc: n/total unit (p %), postfix, rate, ETA m:ss`` at an
    update at least ``LOG_INTERVAL`` seconds after the last line, and with ``leave`` a last line at
    ``close`` when any was written. The first is due ``LOG_INTERVAL`` seconds after the start, or
    after the last line of the work before when that was less than ``LOG_INTERVAL`` seconds earlier
    (so steps that follow each other keep one line every ``LOG_INTERVAL`` seconds).

    The rate leaves out everything up to the first update (the warm-up: starting worker processes,
    tracing a model; Keras' bar leaves out its first step for the same reason) and is smoothed over
    the intervals between lines as tqdm smooths it; there is no rate, and no ETA, until an interval
    after the first update has counted items."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "img",
        leave: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.desc, self.unit, self.leave, self.clock = total, desc, unit, leave, clock
        self.n, self.postfix, self.lines = 0, "", 0
        self.start = self.last_line = clock()
        if _last_line and _last_line[0] is clock and self.start - _last_line[1] < LOG_INTERVAL:
            self.last_line = _last_line[1]
        self.mark: tuple[float, int] | None = None  # (time, n) where the current rate interval began
        self.rate: float | None = None  # units per second, smoothed

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line when ``LOG_INTERVAL`` seconds have passed since the last."""
        now = self.clock()
        self.n += n
        if self.mark is None:
            self.mark = (now, self.n)  # the first update ends the warm-up
        if now - self.last_line >= LOG_INTERVAL:
            self._measure(now)
            self._write(now, self.line())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Show ``s`` (e.g. the loss) after the counts from the next line on."""
        self.postfix = s

    def line(self) -> str:
        """The progress as one line."""
        parts = [f"{self.desc}: {self.n}/{self.total if self.total is not None else '?'} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        parts += [self.postfix] if self.postfix else []
        if self.rate:
            parts.append(_rate(self.rate, self.unit))
            if self.total is not None:
                parts.append(f"ETA {tqdm.format_interval(max(self.total - self.n, 0) / self.rate)}")
        return ", ".join(parts)

    def close(self) -> None:
        """With ``leave``, a last line (the count, the time taken, the mean rate) if any line was written."""
        if self.leave and self.lines:
            now = self.clock()
            elapsed = now - self.start
            mean = f", {_rate(self.n / elapsed, self.unit)}" if elapsed > 0 and self.n else ""
            self._write(now, f"{self.desc}: {self.n} {self.unit} in {tqdm.format_interval(elapsed)}{mean}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, now: float, line: str) -> None:
        """Log ``line``, written at ``now``."""
        global _last_line
        log.info("%s", line)
        self.last_line, self.lines, _last_line = now, self.lines + 1, (self.clock, now)

    def _measure(self, now: float) -> None:
        """Fold the rate since the last mark into the smoothed rate, once the interval counted items."""
        since, counted = self.mark
        if now > since and self.n > counted:
            latest = (self.n - counted) / (now - since)
            self.rate = latest if self.rate is None else SMOOTHING * latest + (1 - SMOOTHING) * self.rate
            self.mark = (now, self.n)


def _rate(per_second: float, unit: str) -> str:
    """``12.3 img/s``, or below one a second ``4.5 s/img``."""
    return f"{per_second:.1f} {unit}/s" if per_second >= 1 else f"{1 / per_second:.1f} s/{unit}"
