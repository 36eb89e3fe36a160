"""The caller's side: finding backends and calling them, with no UI of its own.

:mod:`.client` talks to a broker; its proxies make remote members look local;
:mod:`.jobs` starts calls that outlive this process and comes back to them;
:mod:`.session` keeps a namespace on a backend (the Python API behind
``%%remote``); :mod:`.progress` renders progress as text, or as whatever a UI
layer registers; :mod:`.generate` writes client modules.
"""

from .client import Client
from .session import RemoteSession

__all__ = ["Client", "RemoteSession"]
