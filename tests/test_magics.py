"""The %remote magics in real IPython kernels (jupyter_client), against real broker and backend processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from de_magic.caller.session import CellError, RemoteSession
from de_magic.wire.errors import BackendLost, Refused

from conftest import ROOT, Cluster, Processes, free_port, rss_kib, wait_for
from kernel import Kernel, parent


def magics_kernel(url: str, cwd) -> Kernel:
    """A kernel with de-magic loaded and connected to ``url``."""
    kernel = Kernel({"DE_MAGIC_BROKER": url}, cwd)
    reply, _ = kernel.run("%load_ext de_magic\n%remote_connect")
    assert reply["content"]["status"] == "ok"
    return kernel


def text(outputs: list[dict], stream: str | None = None) -> str:
    """All stream text (of one stream, if given) and text/plain data of ``outputs``."""
    parts = []
    for msg in outputs:
        content = msg["content"]
        if msg["msg_type"] == "stream" and stream in (None, content["name"]):
            parts.append(content["text"])
        elif stream is None and "data" in content:
            parts.append(content["data"].get("text/plain", ""))
    return "".join(parts)


def bundles(outputs: list[dict]) -> list[dict]:
    return [msg["content"]["data"] for msg in outputs if msg["msg_type"] in ("display_data", "execute_result")]


@pytest.fixture(scope="module")
def code_cluster():
    """A broker with ``hello_world`` (runs code) and ``ocean_model`` (does not), shared by this module."""
    procs = Processes()
    c = Cluster(procs)
    try:
        c.start_broker()
        c.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
        c.start_backend("de_magic.demo.ocean", "ocean_model")
        yield c
    finally:
        c.client.close()
        procs.stop_all()


@pytest.fixture(scope="module")
def kernel(code_cluster, tmp_path_factory):
    k = magics_kernel(code_cluster.url, tmp_path_factory.mktemp("kernel"))
    try:
        yield k
    finally:
        k.close()


def test_output_streams_while_the_cell_runs(kernel):
    code = "%%remote hello_world\nimport time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')"
    reply, outputs = kernel.run(code)
    assert reply["content"]["status"] == "ok"
    streams = [(msg["time"], msg["content"]["text"]) for msg in outputs if msg["msg_type"] == "stream"]
    assert "".join(s for _, s in streams) == "first\nsecond\n"
    first_at = next(t for t, s in streams if "first" in s)
    ended_at = max(m["time"] for m in kernel.log if parent(m) == parent(reply))
    assert ended_at - first_at > 0.7, "the first line arrived only with the end of the cell"


def test_namespace_push_pull_and_eval(kernel):
    reply, _ = kernel.run("a = 20")
    reply, outputs = kernel.run("%%remote hello_world --push a --pull b\nb = a * 2 + 2\nc = 'kept'")
    assert reply["content"]["status"] == "ok", outputs
    reply, outputs = kernel.run("b")
    assert text(outputs) == "42"
    reply, outputs = kernel.run("%%remote hello_world\nprint(c, b)")
    assert text(outputs) == "kept 42\n"
    reply, outputs = kernel.run("x = %remote hello_world b + 1\nx")
    assert text(outputs) == "43"


def test_rich_outputs_come_back_as_mimebundles(kernel):
    code = ("%%remote hello_world\n"
            "import pandas as pd, matplotlib.pyplot as plt\n"
            "frame = pd.DataFrame({'t': [1.0, 2.0, 3.0]})\n"
            "display('shown first')\n"
            "plt.plot(frame.t)\n"
            "frame")
    reply, outputs = kernel.run(code)
    assert reply["content"]["status"] == "ok", outputs
    found = bundles(outputs)
    assert found[0]["text/plain"] == "'shown first'"
    assert any("text/html" in b and "<table" in b["text/html"] for b in found), found
    assert any("image/png" in b for b in found), "no image/png for the figure"
    # the figure is closed after being shown: the next cell shows no image
    reply, outputs = kernel.run("%%remote hello_world\nplt.get_fignums()")
    assert text(outputs) == "[]"


def test_remote_exception_fails_the_cell_with_the_remote_traceback(kernel):
    reply, outputs = kernel.run("%%remote hello_world\nprint('before')\ndef ratio(a, b):\n    return a / b\nratio(1, 0)")
    assert reply["content"]["status"] == "error"
    assert text(outputs, "stdout") == "before\n"
    (error,) = [msg["content"] for msg in outputs if msg["msg_type"] == "error"]
    coloured = "\n".join(error["traceback"])
    assert "\x1b[" in coloured, "the traceback is not coloured like a local one"
    tb = re.sub(r"\x1b\[[0-9;]*m", "", coloured)
    assert "ZeroDivisionError" in tb and "return a / b" in tb and "ratio(1, 0)" in tb
    assert "Cell In[" in tb and "hello_world" in tb


def test_noblock_returns_a_handle_and_remote_result_shows_the_outputs(kernel):
    reply, outputs = kernel.run("%%remote hello_world --noblock --pull z\nimport time\ntime.sleep(0.5)\nz = 5\nprint('done')")
    assert reply["content"]["status"] == "ok"
    assert "still running" in text(outputs)
    reply, outputs = kernel.run("%remote_result\nz")
    assert reply["content"]["status"] == "ok", outputs
    assert text(outputs) == "done\n5"


STEPS = "%%remote hello_world --noblock --pull total\nimport time\ntotal = 0\nfor i in range(8):\n" \
        "    print('step', i, flush=True)\n    total += i\n    time.sleep(0.4)"


def started_job(kernel: Kernel, code: str = STEPS) -> str:
    """Start a ``%%remote --noblock`` cell; its job id."""
    reply, outputs = kernel.run(code)
    assert reply["content"]["status"] == "ok", outputs
    return re.search(r"as job (\S+);", text(outputs)).group(1)


def streamed(kernel: Kernel, code: str) -> tuple[list[tuple[float, str]], dict]:
    """Run ``code``; its stdout pieces with their arrival times, and its reply."""
    reply, outputs = kernel.run(code)
    return [(m["time"], m["content"]["text"]) for m in outputs if m["msg_type"] == "stream"
            and m["content"]["name"] == "stdout"], reply


def test_remote_result_streams_a_running_job_and_replays_it_after_a_restart(kernel, code_cluster, tmp_path):
    from de_magic import Client

    steps = "".join(f"step {i}\n" for i in range(8))
    started_job(kernel)
    pieces, reply = streamed(kernel, "%remote_result")
    assert reply["content"]["status"] == "ok" and "".join(t for _, t in pieces) == steps
    assert pieces[-1][0] - pieces[0][0] > 1.0, pieces  # as it ran, not all at its end
    assert text(kernel.run("print(total)")[1]) == "28\n"

    later = magics_kernel(code_cluster.url, tmp_path)  # a restarted kernel: another process, same caller
    try:
        job_id = started_job(kernel)
        # without an id it offers this caller's latest jobs
        reply, outputs = later.run("%remote_result")
        assert reply["content"]["ename"] == "UsageError"
        offered = text(outputs, "stderr")  # where IPython shows a UsageError
        assert re.search(rf"^%remote_result {job_id}   # (queued|running), started \d+ s ago$", offered, re.M), offered
        # what the job printed so far comes first, the rest as it comes
        pieces, reply = streamed(later, f"%remote_result {job_id}")
        assert reply["content"]["status"] == "ok" and "".join(t for _, t in pieces) == steps
        assert pieces[0][1].startswith("step 0\n") and pieces[-1][0] - pieces[0][0] > 0.3, pieces

        # stopping the wait leaves the job running, and says so in one line
        long_id = started_job(kernel, "%%remote hello_world --noblock\nimport time\nfor _ in range(300):\n"
                                      "    time.sleep(0.1)")
        msg_id = later.send(f"%remote_result {long_id}")
        time.sleep(1.0)  # waiting for the job (nothing tells from outside that it does)
        later.manager.interrupt_kernel()
        reply, outputs = later.collect(msg_id, timeout=10)
        assert shown_lines(outputs) == [f"stopped showing job {long_id}; it goes on on 'hello_world' "
                                        f"(%remote_result {long_id} comes back to it)"]
        with Client(code_cluster.url) as client:
            job = client.job(long_id)
            assert job.status == "running"
            assert job.cancel()
            assert job.wait(10), "the cancelled job still runs"
    finally:
        later.close()


def test_remote_list_shows_backends_members_and_code_flag(kernel):
    reply, outputs = kernel.run("%remote_list")
    (page,) = [b["text/html"] for b in bundles(outputs)]
    assert "hello_world" in page and "ocean_model" in page and "compute_sum(da: xarray.DataArray)" in page
    assert "runs code" in page


def test_backend_without_code_refuses(kernel, code_cluster):
    reply, outputs = kernel.run("%%remote ocean_model\n1 + 1")
    assert reply["content"]["status"] == "error"
    assert "does not run code" in "\n".join(reply["content"]["traceback"])
    with pytest.raises(Refused, match="--allow-code"):
        RemoteSession(code_cluster.client, "ocean_model").execute("1 + 1")
    # every operation of code execution is refused alike, not only running a cell
    for op in ({"op": "end"}, {"op": "comm", "comm_id": "x", "msg_type": "comm_msg"}):
        with pytest.raises(Refused, match="--allow-code"):
            RemoteSession(code_cluster.client, "ocean_model").request(op)


def test_interrupt_stops_the_remote_execution(kernel):
    msg_id = kernel.send("%%remote hello_world\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    # interrupt only once the remote sleep runs
    kernel.wait_for(lambda m: parent(m) == msg_id and m["msg_type"] == "stream", 20, "the cell's first output")
    start = time.monotonic()
    kernel.manager.interrupt_kernel()
    reply, outputs = kernel.collect(msg_id, timeout=10)
    assert time.monotonic() - start < 3
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "Interrupted"
    assert shown_lines(outputs) == ["interrupted; the execution on 'hello_world' was stopped"]
    # the backend's main thread is free again
    reply, outputs = kernel.run("%%remote hello_world\nprint('alive')", timeout=10)
    assert text(outputs) == "alive\n"


def test_interrupting_a_plain_call_says_so_in_one_line_and_stops_it(kernel, code_cluster):
    msg_id = kernel.send(f"from de_magic import Client\nhw = Client({code_cluster.url!r})['hello_world']\n"
                         "print('calling', flush=True)\nhw.slow_sum(n=400, delay=0.1)")
    kernel.wait_for(lambda m: parent(m) == msg_id and m["msg_type"] == "stream", 20, "the cell's first output")
    busy = lambda: any(w["busy"] for w in code_cluster.workers("hello_world"))  # noqa: E731
    wait_for(busy, what="the call to run")
    kernel.manager.interrupt_kernel()
    reply, outputs = kernel.collect(msg_id, timeout=10)
    assert reply["content"]["ename"] == "Interrupted"
    assert shown_lines(outputs) == ["interrupted; the remote work was stopped (hello_world.slow_sum)"]
    wait_for(lambda: not busy(), timeout=5, what="the backend to stop the call")  # it would run 40 s


def shown_lines(outputs: list[dict]) -> list[str]:
    """What an interrupted cell shows besides its own output: the error's lines and any traceback text."""
    lines = [line for msg in outputs if msg["msg_type"] == "error" for line in msg["content"]["traceback"]]
    lines += [line for line in text(outputs, "stderr").splitlines() if line]
    assert not any("de_magic" in line or "File " in line for line in lines), lines  # none of our frames
    assert len(lines) <= 3, lines
    return lines


def test_namespaces_are_isolated_between_kernels(kernel, code_cluster, tmp_path):
    kernel.run("%%remote hello_world\nsecret = 'kernel one'")
    other = magics_kernel(code_cluster.url, tmp_path)
    try:
        reply, outputs = other.run("%%remote hello_world\nprint('secret' in globals())")
        assert text(outputs) == "False\n"
        reply, outputs = other.run("%%remote hello_world --session shared\nshared_value = 1")
        assert reply["content"]["status"] == "ok"
    finally:
        other.close()
    reply, outputs = kernel.run("%%remote hello_world\nprint(secret)")
    assert text(outputs) == "kernel one\n"
    # an explicit session key is a namespace others can join
    assert RemoteSession(code_cluster.client, "hello_world", "shared").pull("shared_value") == 1


def test_session_is_pinned_to_the_worker_holding_its_namespace(hello):
    second = hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    session = RemoteSession(hello.client, "hello_world")
    session.push(x=1)
    # the broker rotates between the two workers; unpinned, every other request would miss x
    assert [session.eval("x") for _ in range(4)] == [1] * 4
    (pinned,) = [w for w in hello.workers("hello_world") if w["id"] == session.worker.hex()]
    os.kill(pinned["pid"], signal.SIGKILL)
    with pytest.raises(BackendLost, match="namespace of session"):
        session.eval("x")
    # the next request starts a fresh namespace on the surviving worker
    session.push(x=2)
    assert session.pull("x") == 2
    assert session.worker.hex() == next(w["id"] for w in hello.workers("hello_world") if w["pid"] == second.pid)


def test_a_backend_dying_under_a_cell_fails_it_as_fast_as_a_plain_call_and_says_gone_once(hello):
    from de_magic import Client

    window = 2 * 1.0 * 3  # what a client of default heartbeats waits for a worker to register again
    # a broker up for longer than that would list the worker if it were coming back (not one just restarted)
    wait_for(lambda: time.time() - hello.client.listing(api=False)["broker"]["since"] > window, timeout=10,
             what="the broker to be up for a while")
    with Client(hello.url) as client:
        session = RemoteSession(client, "hello_world")
        session.push(x=1)
        running = session.execute("import time\ntime.sleep(30)", block=False)
        wait_for(lambda: any(w["busy"] for w in hello.workers("hello_world")), what="the cell to run")
        (pid,) = [w["pid"] for w in hello.workers("hello_world")]
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(BackendLost) as lost:
            running.result()
        took = time.monotonic() - start
        message = str(lost.value)
        assert took < window - 2, took  # the broker's ~0.6 s to notice, a listing: not the whole window
        assert message.count("gone") + message.count("stopped heartbeating") == 1, message
        assert "went with its worker; the next request starts a fresh one" in message
        # which it does, on the backend started again
        hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
        assert session.execute("y = 1", pull=["y"]).result() == {"y": 1}


def test_a_remote_type_error_shows_its_line_once(kernel, code_cluster):
    reply, outputs = kernel.run(f"from de_magic import Client\nhw = Client({code_cluster.url!r})['hello_world']\n"
                                "hw.scale([1.0], 'x')")
    (error,) = [msg["content"] for msg in outputs if msg["msg_type"] == "error"]
    assert error["traceback"] == ["TypeError: scale() argument 'factor': expected float, got str ('x')"]


def test_timeout_cancels_the_remote_execution(kernel):
    reply, outputs = kernel.run("%%remote hello_world --timeout 0.5\nimport time\ntime.sleep(30)", timeout=10)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "CallTimeout"
    reply, outputs = kernel.run("%%remote hello_world\nprint('free again')", timeout=10)
    assert text(outputs) == "free again\n"


def test_closing_a_session_frees_its_namespace(hello):
    session = RemoteSession(hello.client, "hello_world")
    session.push(big=list(range(10)))
    assert session.close() is True
    assert session.close() is False  # nothing left to free
    other = RemoteSession(hello.client, "hello_world", session.key)  # same key: a fresh namespace now
    with pytest.raises(NameError):
        other.pull("big")


def test_an_event_that_cannot_be_sent_does_not_stop_later_output(hello):
    session = RemoteSession(hello.client, "hello_world")
    # widget data with a cycle has no JSON form: that message is dropped (and logged) as it is sent
    session.execute("import comm\nd = {}\nd['d'] = d\nc = comm.create_comm(target_name='t', data=d)",
                    on_output=lambda output: None, timeout=10)
    seen = []
    session.execute("print('still streaming')", on_output=seen.append, timeout=10)
    assert "".join(o.get("text", "") for o in seen) == "still streaming\n"



def test_a_widget_buffer_that_is_no_bytes_fails_in_the_cell(hello):
    session = RemoteSession(hello.client, "hello_world")
    # as in a kernel, it fails where it is given, not half-way through sending a message
    with pytest.raises(CellError, match="memoryview"):
        session.execute("import comm\ncomm.create_comm(target_name='t', buffers=['not bytes'])", timeout=10).result()
    seen = []
    session.execute("print('still streaming')", on_output=seen.append, timeout=10)
    assert "".join(o.get("text", "") for o in seen) == "still streaming\n"


EMBEDDED = """
import sys, time
from de_magic import Backend
Backend("embedded", {}, broker=sys.argv[1], heartbeat=0.2, allow_code=True).start()  # no run(): no main thread
time.sleep(60)
"""


def test_code_is_refused_not_left_waiting_where_no_main_thread_serves(cluster):
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDED, cluster.url], cwd=ROOT, start_new_session=True)
    cluster.procs.procs.append(proc)
    wait_for(lambda: cluster.workers("embedded"), what="the embedded backend")
    with pytest.raises(Refused, match=r"run\(\)"):
        RemoteSession(cluster.client, "embedded").execute("1 + 1", timeout=10)


def test_racing_first_requests_of_a_session_share_one_worker(hello):
    from concurrent.futures import ThreadPoolExecutor

    hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
    session = RemoteSession(hello.client, "hello_world")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: session.execute(f"v{i} = {i}").result(), range(4)))
    # all four landed in the one namespace the session is pinned to
    assert session.pull("v0", "v1", "v2", "v3") == (0, 1, 2, 3)


def test_closed_sessions_give_their_memory_back(cluster):
    """A closed namespace used to keep its IPython shell (about 200 KiB) for as long as the backend ran."""
    # a slower beat than the other tests': making and freeing 230 shells is work, and this test is about memory
    pid = cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code", "--heartbeat", "1").pid

    def open_and_close(count: int) -> None:
        for _ in range(count):
            session = RemoteSession(cluster.client, "hello_world")
            session.execute("x = list(range(1000))", on_output=lambda output: None).result()
            assert session.close()

    open_and_close(30)  # first-use allocations are not leaks
    before = rss_kib(pid)
    open_and_close(200)
    grown = rss_kib(pid) - before
    print(f"\n200 sessions opened and closed: backend RSS {before} -> {before + grown} KiB")
    assert grown < 200 * 40, f"{grown / 200:.0f} KiB kept per closed session"
def test_remote_connect_to_a_consortiums_brokers_uses_the_one_that_answers(code_cluster, tmp_path):
    down = f"tcp://127.0.0.1:{free_port()}"
    kernel = Kernel({}, tmp_path)
    try:
        reply, outputs = kernel.run(f"%load_ext de_magic\n%remote_connect {down},{code_cluster.url}")
        assert reply["content"]["status"] == "ok" and f"connected to {code_cluster.url}" in text(outputs)
        reply, outputs = kernel.run("%%remote hello_world\nprint('through the second')")
        assert text(outputs) == "through the second\n"
    finally:
        kernel.close()
