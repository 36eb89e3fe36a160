"""Errors in plain scripts as the notebook shows them: the user's frames, and the remote traceback.

A failed call travels up through a dozen frames of the client, its I/O thread's answers and the
proxies before it reaches the user's line; none of them says anything a user could act on. The
notebook drops them (notebook/magics.py); in a plain ``python script.py`` this excepthook does, for
uncaught errors only. ``DE_MAGIC_FULL_TRACEBACKS=1`` keeps every frame (for work on de-magic itself).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

_PACKAGE = str(Path(__file__).resolve().parent.parent) + os.sep
FULL = "DE_MAGIC_FULL_TRACEBACKS"


def install() -> None:
    """Trim de-magic's frames from uncaught errors, unless another hook (IPython, a debugger) was set."""
    if sys.excepthook is sys.__excepthook__ and not os.environ.get(FULL):
        sys.excepthook = _hook


def _hook(etype: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    seen = set()
    error: BaseException | None = value
    while error is not None and id(error) not in seen:  # the chain printed with it, trimmed alike
        seen.add(id(error))
        error.__traceback__ = trim(error.__traceback__)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    sys.__excepthook__(etype, value, value.__traceback__)


def trim(tb: TracebackType | None) -> TracebackType | None:
    """``tb`` without the frames of de-magic's own modules (the user's frames, wherever they are, stay)."""
    frames = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
            frames.append(tb)
        tb = tb.tb_next
    kept = None
    for frame in reversed(frames):
        kept = TracebackType(kept, frame.tb_frame, frame.tb_lasti, frame.tb_lineno)
    return kept
