"""Progress of Dask work as one de-magic bar: ``progress(collection_or_futures)``.

In a backend function (or a ``%%remote`` cell) on a Dask backend,
``ds = progress(ds.mean(), desc="mean")`` starts computing the collection on
the cluster, reports how many of its graph's tasks are done as the call's
progress (the caller sees one live bar, not one per task), and returns once
all are done: the collection persisted (``.compute()`` then only gathers),
or the futures as given.  Counting is Dask's own (its scheduler-side
``Progress`` plugin, as ``distributed.progress`` uses).  ``dask`` is imported
only when such work is tracked.
"""

from __future__ import annotations

import sys


def is_dask_work(obj) -> bool:
    """Whether ``obj`` is a Dask collection, a future, or a list of futures (without importing Dask)."""
    if "dask" not in sys.modules:
        return False  # nobody made Dask work without importing dask
    import dask

    if dask.is_dask_collection(obj):
        return True
    future = getattr(sys.modules.get("distributed"), "Future", None)
    items = obj if isinstance(obj, (list, tuple)) and obj else [obj]
    return future is not None and all(isinstance(item, future) for item in items)


def track(work, bar_class, desc: str = "", interval: float = 0.1, unit: str = "tasks"):
    """Compute ``work`` on the cluster, reporting its tasks done as progress on a ``bar_class`` bar
    (:class:`de_magic.backend.progress.progress`); return it when all are done."""
    import dask
    from distributed import futures_of, get_client, rejoin, secede
    from distributed.diagnostics.progressbar import ProgressBar
    from distributed.worker import thread_state

    class Relay(ProgressBar):
        """Dask's progress feed, drawn as a de-magic bar."""

        def _draw_bar(self, remaining: int, all: int, **kwargs) -> None:  # noqa: A002 - Dask's name
            bar.total, bar.n = all, all - remaining
            bar.update(0)

    client = get_client()
    if dask.is_dask_collection(work):
        work = client.persist(work)
    bar = bar_class(desc=desc, interval=interval, unit=unit)
    relay = Relay(futures_of(work), scheduler=client.scheduler.address, interval=interval)
    # in a task, give the worker its thread back while we only watch (it may be the one that computes)
    in_task = getattr(thread_state, "key", None) is not None
    if in_task:
        secede()
    try:
        client.sync(relay.listen)
    finally:
        if in_task:
            rejoin()
        bar.close()
    return work
