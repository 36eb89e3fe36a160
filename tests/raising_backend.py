"""A backend whose functions raise exceptions that cannot be built from a message alone."""

from __future__ import annotations

import json


class NeedsKeywords(Exception):
    """A user exception whose constructor requires keyword-only arguments."""

    def __init__(self, message: str, *, code: int):
        super().__init__(message)
        self.code = code

    def __repr__(self) -> str:  # reads an attribute a rebuilt copy does not have
        return f"NeedsKeywords(code={self.code})"


def parse(text: str) -> object:
    """Parse JSON text (raises JSONDecodeError on bad text)."""
    return json.loads(text)


def fail_with_code(code: int) -> None:
    """Raise :class:`NeedsKeywords`."""
    raise NeedsKeywords("failed with a code", code=code)
