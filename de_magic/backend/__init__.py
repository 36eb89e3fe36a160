"""The backend side: serving a module's functions and classes next to the data.

:mod:`.server` connects to the broker (:mod:`.brokerlink`) and runs calls in slot threads (:mod:`.slots`);
:mod:`.callcontext` is the call being served, as code inside it sees it;
:mod:`.progress` reports progress to the caller; :mod:`.jobs` runs calls that outlive
their caller and keeps their results; :mod:`.execute`,
:mod:`.shell`, :mod:`.capture` and :mod:`.relay` run ``%%remote`` cells,
capture their output and relay their widgets.
"""

from .callcontext import current_call
from .progress import progress
from .server import Backend

__all__ = ["Backend", "current_call", "progress"]
