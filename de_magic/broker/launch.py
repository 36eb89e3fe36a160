"""Backends on demand: when jobs wait for a backend that has no worker up, the broker runs its launch command.

The config file names, per backend, the command that brings a worker of it up (``sbatch serve_model.sh``, or
any command); :class:`Launches` decides when to run it, without processes or clocks of its own (the routing
core asks it, :mod:`.server` runs the command): at most once per ``launch_interval``, and only while jobs wait
and no worker of the name is up.  From a launch until a worker registers, the listing says a launch is pending.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds between two launches of one backend while its jobs still wait (a batch job may queue that long).
DEFAULT_LAUNCH_INTERVAL = 600.0


@dataclass(frozen=True)
class Launch:
    """How to bring a worker of one backend up: a command (its words), run at most once per ``interval`` s."""

    command: tuple[str, ...]
    interval: float = DEFAULT_LAUNCH_INTERVAL


class Launches:
    """The launch commands of a broker's backends, and when each was last run."""

    def __init__(self, launches: dict[str, Launch]):
        self.launches = launches
        self._last: dict[str, float] = {}  # name -> when it was launched (the routing core's clock)
        self._pending: dict[str, dict] = {}  # name -> what listings say, until a worker of it registers

    def due(self, names, now: float, wall: float) -> list[tuple[str, Launch]]:
        """Of the backends in ``names`` (jobs wait, no worker up), those to launch now: they have a command,
        and its interval has passed since the last launch."""
        out = []
        for name in names:
            launch = self.launches.get(name)
            if launch is not None and now >= self._last.get(name, float("-inf")) + launch.interval:
                self._last[name] = now
                self._pending[name] = {"pending": True, "since": wall, "command": " ".join(launch.command)}
                out.append((name, launch))
        return out

    def failed(self, name: str, why: str) -> None:
        """The command could not be run: the listing says why (tried again after the interval)."""
        self._pending[name]["error"] = why

    def registered(self, name: str) -> None:
        """A worker of ``name`` registered: its launch is no longer pending."""
        self._pending.pop(name, None)

    def describe(self, name: str) -> dict | None:
        return self._pending.get(name)
