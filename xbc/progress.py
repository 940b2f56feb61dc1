"""Progress on a terminal for long commands (compile, simulate, bench).

One status line on ``stderr``, redrawn in place with ``\\r``::

    squeeze            [###########.............]  23/53  4.1s

Rules:

* Output only when the stream is a terminal (``stream.isatty()``) and the caller did not ask for
  quiet (``Progress(enabled=False)``, i.e. ``--quiet`` / ``--json``); setting the environment
  variable ``XBC_NO_PROGRESS`` (any non-empty value) also silences it. Piped or redirected output
  therefore never contains progress bytes.
* Rate-limited: at most one redraw per ``interval`` seconds (default 0.1 s), except that a new
  stage and the completion of a stage are always drawn, so every stage is visible.
* :meth:`Progress.close` (or leaving the ``with`` block) erases the line, so the command's real
  output starts on a clean line.

``update(stage, done, total)`` has the signature of :attr:`xbc.passmanager.PassContext.progress`,
so ``compile_model(..., progress=Progress().update)`` works directly.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def is_terminal(stream) -> bool:
    """True if ``stream`` is an interactive terminal (False for pipes, files, closed streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """``update(stage, done, total)`` redraws one status line on ``stream`` (TTY only)."""

    def __init__(self, enabled: bool = True, stream=None, *, interval: float = 0.1, width: int = 24,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(enabled) and not os.environ.get("XBC_NO_PROGRESS") and is_terminal(self.stream)
        self.interval = interval
        self.width = width
        self.clock = clock
        self._last = float("-inf")
        self._stage: str | None = None
        self._stage_t0 = 0.0
        self._shown = 0  # length of the line on screen

    # -- drawing ----------------------------------------------------------------------
    def update(self, stage: str, done: int, total: int) -> None:
        """Report that ``done`` of ``total`` steps of ``stage`` are finished."""
        if not self.enabled:
            return
        now = self.clock()
        new_stage = stage != self._stage
        if new_stage:
            self._stage = stage
            self._stage_t0 = now
        finished = total > 0 and done >= total
        if not (new_stage or finished) and now - self._last < self.interval:
            return
        self._last = now
        frac = min(1.0, done / total) if total > 0 else 1.0
        filled = int(self.width * frac)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{stage[:18]:<18} [{bar}] {done:>{len(str(total))}}/{total}  {now - self._stage_t0:.1f}s"
        self._write(line)

    def message(self, text: str) -> None:
        """Show a free-text status (e.g. ``building resnet50``); rate limits do not apply."""
        if not self.enabled:
            return
        self._stage = None
        self._last = self.clock()
        self._write(text[:78])

    def track(self, items: Iterable[T], stage: str, total: int | None = None) -> Iterator[T]:
        """Iterate ``items`` while reporting ``stage`` progress."""
        if total is None:
            try:
                total = len(items)  # type: ignore[arg-type]
            except TypeError:
                total = 0
        done = 0
        self.update(stage, 0, total)
        for item in items:
            yield item
            done += 1
            self.update(stage, done, total)

    def _write(self, line: str) -> None:
        pad = " " * max(0, self._shown - len(line))
        try:
            self.stream.write("\r" + line + pad)
            self.stream.flush()
        except (OSError, ValueError):  # terminal went away: stop drawing, never fail the command
            self.enabled = False
            return
        self._shown = len(line)

    def close(self) -> None:
        """Erase the status line (no output if nothing was drawn)."""
        if self._shown:
            try:
                self.stream.write("\r" + " " * self._shown + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._shown = 0
        self._stage = None

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
