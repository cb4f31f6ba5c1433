"""A tiny progress protocol so the core can report progress without knowing the frontend.

The core calls `start(description, total)` for each step that can take a while (a total of None:
a step without counts, such as loading a model), `advance(n)` and `finish()`. Frontends choose a
display: a bar on a terminal, one line per step for logs (`LineProgress`), or nothing; `StepTimes`
wraps any of them and records each step's seconds for machine-readable reports.
"""

from __future__ import annotations

import contextlib
import time
from typing import IO, Iterator, Protocol


class Progress(Protocol):
    def start(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    """Progress sink that does nothing (pipes, cron, library use)."""

    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


def or_null(progress: Progress | None) -> Progress:
    return progress if progress is not None else NullProgress()


@contextlib.contextmanager
def step(progress: Progress | None, description: str) -> Iterator[None]:
    """One step without counts (loading a model, an export, a fit): started, then finished."""
    progress = or_null(progress)
    progress.start(description, None)
    try:
        yield
    finally:
        progress.finish()


class StepTimes:
    """Forwards to a display and records the seconds of each step, from its start() to the next
    start() or finish(); steps of the same description add up."""

    def __init__(self, display: Progress | None = None, clock=time.perf_counter):
        self.display = or_null(display)
        self.seconds: dict[str, float] = {}
        self._clock = clock
        self._open: tuple[str, float] | None = None

    def start(self, description: str, total: int | None) -> None:
        self._close()
        self._open = (description, self._clock())
        self.display.start(description, total)

    def advance(self, n: int = 1) -> None:
        self.display.advance(n)

    def finish(self) -> None:
        self._close()
        self.display.finish()

    def _close(self) -> None:
        if self._open is not None:
            name, began = self._open
            self.seconds[name] = round(self.seconds.get(name, 0.0) + self._clock() - began, 3)
            self._open = None


class LineProgress:
    """One line per step on a stream (`description...` then `description: done in 1.2 s`), for logs
    and terminals without a bar."""

    def __init__(self, stream: IO[str], prefix: str = "", clock=time.perf_counter):
        self.stream = stream
        self.prefix = prefix
        self._clock = clock
        self._open: tuple[str, float, int] | None = None

    def start(self, description: str, total: int | None) -> None:
        self._close()
        count = f" ({total})" if total else ""
        self._write(f"{description}{count}...")
        self._open = (description, self._clock(), 0)

    def advance(self, n: int = 1) -> None:
        if self._open is not None:
            name, began, done = self._open
            self._open = (name, began, done + n)

    def finish(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._open is not None:
            name, began, done = self._open
            count = f", {done} done" if done else ""
            self._write(f"{name}: done in {self._clock() - began:.1f} s{count}")
            self._open = None

    def _write(self, line: str) -> None:
        self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()
