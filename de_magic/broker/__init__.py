"""The broker: where backends register and callers find and call them.

:mod:`.routing` makes every decision, without sockets; :mod:`.server` is the
loop that runs it behind one ROUTER socket.
"""

from .server import Broker

__all__ = ["Broker"]
