"""Progress for every long phase: a tqdm bar on a terminal, plain periodic lines in logs.

``bar(total=..., desc=...)`` is a drop-in for ``tqdm(...)`` (``update``, ``close``,
``set_postfix_str``, iteration, ``with``). When the stream is not a terminal (a log file, CI,
``nohup``), tqdm's carriage-return redraws would pile up into one unreadable line, so a
:class:`PlainProgress` writes one line every ``interval`` seconds instead
(``exact patching: 1200/5000 edges (24%), 31 s, ~98 s left``) and one when it closes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

__all__ = ["PlainProgress", "bar"]


def _seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class PlainProgress:
    """A tqdm-like counter that writes a plain line every ``interval`` seconds."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        interval: float = 30.0,
        file: IO[str] | None = None,
        disable: bool = False,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.n = initial
        self._initial = initial
        self.interval = interval
        self.file = file
        self.disable = disable
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self._start
        done = f"{self.n:g}"
        if self.total:
            done += f"/{self.total:g} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            done += f" {self.unit}"
        text = f"{self.desc}: {done}, {_seconds(elapsed)}"
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        if self.total and rate > 0 and self.n < self.total:
            text += f", ~{_seconds((self.total - self.n) / rate)} left"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _write(self) -> None:
        out = self.file if self.file is not None else sys.stderr
        out.write(self._line() + "\n")
        out.flush()
        self._last = time.monotonic()

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable and time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        if not self._closed and not self.disable:
            self._write()
        self._closed = True

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    initial: float = 0,
    disable: bool = False,
    interval: float = 30.0,
    file: IO[str] | None = None,
) -> Any:
    """A progress bar for a phase: tqdm on a terminal, :class:`PlainProgress` lines otherwise.

    ``disable=True`` (the API's ``progress=False``, the CLI's ``-q``) shows nothing.
    """
    out = file if file is not None else sys.stderr
    if disable or (hasattr(out, "isatty") and out.isatty()):
        from tqdm.auto import tqdm

        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, disable=disable, file=out
        )
    return PlainProgress(
        iterable, total=total, desc=desc, unit=unit, initial=initial, interval=interval, file=out
    )
