"""Progress reports from backend code to whoever called it.

``for x in progress(items, desc="..."):`` inside a backend function (or a
remote cell) sends ``progress`` events to the caller of the current call,
at most every ``interval`` seconds plus the first and last step, so a tight
loop does not flood the wire.  Outside a de-magic call it still iterates and
reports nothing, so backend code stays runnable locally.  Bars may nest:
each carries its own id and its parent's.
"""

from __future__ import annotations

import contextvars
import itertools
import time
from typing import Iterable, Iterator, TypeVar

from .callcontext import current_call
from .daskprogress import is_dask_work, track

T = TypeVar("T")

_ids = itertools.count(1)
#: Ids of the bars open in this context, innermost last: a new bar nests under the last one.
_open: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("de_magic_progress_open", default=())


class progress(Iterator[T]):
    """Iterate ``iterable`` and report progress to the caller (tqdm-like).

    Given Dask work (a collection, futures) instead, compute it and report its tasks done
    (see :mod:`de_magic.backend.daskprogress`).
    """

    def __new__(cls, iterable=None, *args, **kwargs):
        if iterable is not None and is_dask_work(iterable):
            return track(iterable, cls, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
                 interval: float = 0.1, unit: str = "it"):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self._it = iter(iterable) if iterable is not None else None
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.n = 0
        self.id = next(_ids)
        stack = _open.get()
        self.parent = stack[-1] if stack else None
        self._call = current_call.get()
        self._start = time.monotonic()
        self._last = 0.0
        self._closed = False
        self._yielded = False
        _open.set(stack + (self.id,))
        self._report(force=True)

    def __iter__(self) -> "progress[T]":
        return self

    def __next__(self) -> T:
        if self._it is None:
            raise TypeError("progress() without an iterable: use update()")
        if self._yielded:  # the item handed out last time is done
            self.update()
        try:
            item = next(self._it)
        except StopIteration:
            self._yielded = False
            self.close()
            raise
        self._yielded = True
        return item

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps (for manual use without an iterable)."""
        self.n += n
        self._report()

    def close(self) -> None:
        """Report the final state; called automatically at the end of iteration."""
        if self._closed:
            return
        self._closed = True
        _open.set(tuple(i for i in _open.get() if i != self.id))
        self._report(force=True)

    def __del__(self) -> None:
        # a loop left with ``break`` drops its bar here: it must not stay the parent of later bars
        if not getattr(self, "_closed", True):
            self.close()

    def __enter__(self) -> "progress[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _report(self, force: bool = False) -> None:
        if self._call is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        self._call.emit("progress", {
            "id": self.id, "parent": self.parent, "desc": self.desc, "n": self.n, "total": self.total,
            "unit": self.unit, "elapsed": now - self._start, "done": self._closed,
        })
