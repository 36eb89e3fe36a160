"""What must work on every Python that pyproject.toml claims: CI runs this file on each one it finds.

Each test crosses the pickling paths that differ between CPython versions: pickled arguments (the C
pickler's ``persistent_id``/``persistent_load``), a remote reference sent back in place (a persistent id
on the way out, a persistent load on the worker), and a ``%%remote`` cell in a real kernel.
"""

from __future__ import annotations

import sys

import numpy as np

from de_magic.wire import serialize

from conftest import Cluster
from kernel import Kernel

MB = 1 << 20


def test_frames_with_persistent_ids_round_trip_on_this_python():
    marker = object()
    data = {"array": np.arange(MB // 8, dtype="f8"), "marker": marker, "tag": sys.version_info[:2]}
    frames = serialize.dumps(data, persistent_id=lambda o: ("ref", "m") if o is marker else None)
    assert len(frames) == 2  # the array travelled out of band
    back = serialize.loads(frames, persistent_load=lambda pid: ("loaded", pid))
    assert back["marker"] == ("loaded", ("ref", "m")) and back["tag"] == sys.version_info[:2]
    assert np.array_equal(back["array"], data["array"])


def test_pickled_arguments_and_a_reference_used_in_place(cluster: Cluster):
    cluster.start_backend("tests/refs_backend.py", "refs")
    be = cluster.client["refs"]
    groups = {"a": [be.open_dataset(1), be.open_dataset(1)]}  # pickled xarray arguments, 1 MiB each
    assert be.totals(groups) == {"a": [MB // 8, MB // 8]}
    kept = be.open_dataset.options(keep=True)(1)  # stays on the worker
    doubled = be.scale.options(keep=True)(kept, 2.0)  # passed back in place, as a persistent id
    assert be.total(doubled) == 2 * MB // 8
    doubled.release()
    kept.release()


def test_a_remote_cell_runs_in_a_kernel(hello: Cluster, tmp_path):
    kernel = Kernel({"DE_MAGIC_BROKER": hello.url}, tmp_path)
    try:
        reply, _ = kernel.run("%load_ext de_magic\n%remote_connect")
        assert reply["content"]["status"] == "ok"
        reply, outputs = kernel.run("%%remote hello_world --pull y\nimport numpy as np\ny = np.arange(3) * 2\nprint('sum', y.sum())")
        assert reply["content"]["status"] == "ok", reply["content"]
        assert any(m["msg_type"] == "stream" and "sum 6" in m["content"]["text"] for m in outputs)
        reply, outputs = kernel.run("y.tolist()")
        assert outputs[-1]["content"]["data"]["text/plain"] == "[0, 2, 4]"
    finally:
        kernel.close()
