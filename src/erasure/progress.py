"""Progress of long loops (drawing images, building pools, training), readable in a terminal and in a log.

In a terminal: a tqdm bar, with an ETA and any postfix (the loss); bars of tasks running at once in
threads each keep a line of their own (tqdm gives each a free position). Anywhere else (Prefect's
log, CI, a file) a bar's carriage returns and cursor moves arrive as raw escape codes, so there
is no bar but one plain line every 30 seconds and one at the end:

    Pip: target: 48/96 img, 30 s, ETA 31 s
    erasing 2/4 Vasquez: 300/300 step in 4 min 10 s, loss 0.0213
"""

from __future__ import annotations

import sys
import threading
import time

from tqdm.auto import tqdm

INTERVAL = 30.0  # seconds between two lines of one loop outside a terminal
_write = threading.Lock()  # whole lines only, when concurrent tasks report at once


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


class Progress:
    """`with Progress(total, desc, unit) as p: ... p.update(n); p.set_postfix(loss=...)`."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
                 file=None, interval: float | None = None):
        self.total, self.desc, self.unit, self.n, self.enabled = total, desc, unit, initial, enabled
        self.file = file if file is not None else sys.stderr
        self.interval = INTERVAL if interval is None else interval
        self._initial, self._postfix, self._closed = initial, {}, False
        self._start = self._last = time.monotonic()
        # leave=None: a bar at position 0 stays when done; those of concurrent tasks below it are cleared.
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file, leave=None,
                          dynamic_ncols=True) if enabled and _isatty(self.file) else None)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval and self.n < self.total:
            self._line(done=False)

    def set_postfix(self, **values) -> None:
        self._postfix = {k: v for k, v in values.items() if v is not None}
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def write(self, message: str) -> None:
        """A message between the bars (tqdm.write keeps them intact), or a plain line."""
        if not self.enabled:
            return
        if self._bar is not None:
            tqdm.write(message, file=self.file)
        else:
            self._print(message)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            self._line(done=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, done: bool) -> None:
        now = time.monotonic()
        self._last = now
        elapsed, did = now - self._start, self.n - self._initial
        head = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        if done:
            text = f"{head} in {_duration(elapsed)}"
        else:
            left = self.total - self.n
            eta = f", ETA {_duration(elapsed / did * left)}" if did > 0 else ""
            text = f"{head}, {_duration(elapsed)}{eta}"
        text += "".join(f", {k} {v}" for k, v in self._postfix.items())
        self._print(text)

    def _print(self, text: str) -> None:
        with _write:
            self.file.write(text + "\n")
            self.file.flush()
