"""API descriptions: what a backend serves, described as JSON from plain Python objects.

:mod:`.describe` builds the description (signatures, docstrings, JSON Schema) and picks a
module's members; :mod:`.annotations` writes type hints as text and JSON Schema;
:mod:`.docstrings` reads numpydoc and Google docstrings; :mod:`.arguments` checks a call's
arguments before it runs.  The caller's side uses only :func:`verbatim` and the JSON.
"""

from .annotations import Verbatim, annotation_text, verbatim
from .describe import describe, members_of
from .docstrings import parse_docstring

__all__ = ["Verbatim", "annotation_text", "describe", "members_of", "parse_docstring", "verbatim"]
