"""Jobs outlive their caller: reattach after a SIGKILL, owners only, bounded results, spill and restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from de_magic import Client
from de_magic.caller.jobs import start_cell
from de_magic.caller.session import RemoteSession
from de_magic.wire import serialize
from de_magic.wire.errors import Cancelled, JobUnavailable, Refused
from de_magic.wire.security import Security, job_directory

from conftest import HEARTBEAT, Cluster, curve_keys, start_script, wait_for
from kernel import Kernel

# starts a job to finish and one to cancel, says their ids, then waits to be killed
ORPHAN = """
import sys, time
from de_magic import Client
from de_magic.wire import serialize
be = Client(sys.argv[1], timeout=20)["hello_world"]
print(be.slow_sum.start(n=30, delay=0.05).id, be.slow_sum.start(n=600, delay=0.05).id, flush=True)
time.sleep(120)
"""


def test_a_killed_callers_jobs_are_found_again_with_live_progress_and_can_be_cancelled(hello, processes):
    orphan = start_script(processes, ORPHAN, hello.url)
    finishing, endless = orphan.stdout.readline().split()
    os.kill(orphan.pid, signal.SIGKILL)  # no clean exit: the jobs are on their own
    orphan.stdout.close()

    listed = {job["id"]: job for job in hello.client.jobs()}
    assert {finishing, endless} <= set(listed) and listed[finishing]["what"] == "slow_sum"
    assert finishing in repr(hello.client.jobs())
    worker = bytes.fromhex(finishing.split(":")[1])
    other_user = {"op": "job.list", "user": "someone-else"}  # on a plaintext broker the user is claimed
    assert serialize.loads(hello.client.request("hello_world", other_user, [], worker=worker)[1]) == []
    reports = []
    job = hello.client.job(finishing, on_progress=reports.append)
    assert job.result(timeout=10) == sum(range(30))
    assert job.status == "done" and reports[-1].done and reports[-1].n == 30
    assert any(not r.done for r in reports), "no live progress after reattaching"
    assert "done" in job._repr_html_() and "adding" in repr(job)

    running = hello.client.job(endless)
    wait_for(lambda: running.progress is not None, what="progress of the reattached job")
    assert running.status == "running" and running.cancel() is True
    with pytest.raises(Cancelled, match="was cancelled"):
        running.result(timeout=5)
    assert hello.client.job(endless).status == "cancelled"


@pytest.fixture
def curve(processes, tmp_path):
    keys = curve_keys(tmp_path)
    cluster = Cluster(processes)
    cluster.keys = keys
    cluster.client = client_for(cluster, "alice")
    cluster.start_broker("--key", str(keys["broker"]), "--allowed-keys", str(keys["allowed"]))
    cluster.start_backend(env={"DE_MAGIC_KEY": str(keys["backend"]), "DE_MAGIC_BROKER_KEY": str(keys["broker.public"])})
    try:
        yield cluster
    finally:
        cluster.client.close()


def client_for(cluster: Cluster, name: str) -> Client:
    return Client(cluster.url, timeout=20, heartbeat=HEARTBEAT,
                  security=Security(key=cluster.keys[name], broker_key=cluster.keys["broker.public"]))


def test_under_curve_only_the_key_that_started_a_job_sees_it(curve):
    job = curve.client["hello_world"].echo.start("alice's")
    assert job.result(timeout=10) == "alice's"
    with client_for(curve, "bob") as bob:
        assert list(bob.jobs()) == []
        with pytest.raises(JobUnavailable) as foreign:
            bob.job(job.id)
        made_up = job.id[:-4] + "beef"
        with pytest.raises(JobUnavailable) as unknown:
            bob.job(made_up)
        # the same words for someone else's job as for none at all
        assert str(foreign.value).replace(job.id, made_up) == str(unknown.value)
        with pytest.raises(JobUnavailable):
            bob.request("hello_world", {"op": "job.cancel", "id": job.id}, [], worker=job.worker)
    with client_for(curve, "alice") as again:  # another process of the same key
        assert [j["id"] for j in again.jobs()] == [job.id]
        assert again.job(job.id).result(timeout=10) == "alice's"


def refusal(client: Client, job_id: str) -> str:
    """Why ``client.job(job_id)`` is refused; "" while it is not."""
    try:
        client.job(job_id)
    except JobUnavailable as exc:
        return str(exc)
    return ""


def test_results_expire_by_time_and_are_evicted_by_bytes_and_a_followed_job_holds_no_slot(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--job-ttl", "1.5", "--job-bytes", "3000",
                          "--max-workers", "1")
    be = cluster.client["hello_world"]
    running = be.slow_sum.start(n=20, delay=0.05)
    wait_for(lambda: running.progress is not None, what="progress of the job")
    assert be.echo("the one slot is free") == "the one slot is free" and running.status == "running"
    assert running.result(timeout=10) == sum(range(20))
    first = be.echo.start("x" * 2000)
    assert first.result(timeout=10) == "x" * 2000
    second = be.echo.start("y" * 2000)
    assert second.result(timeout=10) == "y" * 2000
    with pytest.raises(JobUnavailable, match="evicted to keep the backend's kept results within 3000 bytes"):
        cluster.client.job(first.id)
    assert cluster.client.job(second.id).result(timeout=10) == "y" * 2000
    said = wait_for(lambda: refusal(cluster.client, second.id), timeout=5, what="the result to expire")
    assert said.endswith("its result expired: results are kept for 1.5 s")
    statuses = {job["id"]: job["status"] for job in cluster.client.jobs()}
    assert statuses == {running.id: "evicted", first.id: "evicted", second.id: "expired"}  # oldest first


def test_spilled_results_survive_a_restart_and_running_jobs_say_they_were_lost(cluster, tmp_path):
    args = ("de_magic.demo.hello", "hello_world", "--job-dir", str(tmp_path / "jobs"))
    backend = cluster.start_backend(*args)
    be = cluster.client["hello_world"]
    big = be.echo.start(b"z" * (2 << 20))  # over SPILL_MIN: kept on disk only
    assert len(big.result(timeout=10)) == 2 << 20
    running = be.slow_sum.start(n=600, delay=0.05)
    wait_for(lambda: running.status == "running", what="the job to run")
    assert (tmp_path / "jobs" / f"{big.id.rsplit(':', 1)[1]}.frames").exists()

    os.kill(backend.pid, signal.SIGKILL)  # a crash: nothing is written on the way out
    backend.wait()
    cluster.start_backend(*args)  # a new worker id: the ids must still lead to their jobs
    assert cluster.client.job(big.id).result(timeout=10) == b"z" * (2 << 20)
    with pytest.raises(JobUnavailable, match="still running when the backend stopped, and its work was lost"):
        running.result(timeout=15)  # the watch was lost with the worker, then found the job on the new one
    with pytest.raises(JobUnavailable, match="still running when the backend stopped"):
        cluster.client.job(running.id)


def test_remote_result_fetches_a_noblock_cell_after_a_kernel_restart(hello):
    env = {"DE_MAGIC_BROKER": hello.url}
    first = Kernel(env)
    try:
        first.execute("%load_ext de_magic\n%remote_connect")
        reply, outputs = first.run("%%remote hello_world --noblock --pull z\nimport time\nfrom de_magic import progress\n"
                                   "for _ in progress(range(20), desc='steps'):\n    time.sleep(0.1)\nprint('made z')\nz = 42")
        assert reply["content"]["status"] == "ok"
        said = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
        job_id = said.split("as job ")[1].split(";")[0]
        # the handle the cell returned shows the job, and its display follows the job's progress
        first.wait_for(lambda m: m["msg_type"] == "update_display_data"
                       and "running (steps: " in m["content"]["data"]["text/plain"], what="a live display of the job")
    finally:
        first.close()  # the kernel is gone; the cell runs on
    second = Kernel(env)
    try:
        second.execute("%load_ext de_magic\n%remote_connect")
        reply, outputs = second.run(f"%remote_result {job_id}\nz")
        assert reply["content"]["status"] == "ok", reply["content"]
        shown = "".join(m["content"].get("text", "") or m["content"].get("data", {}).get("text/plain", "")
                        for m in outputs if m["msg_type"] != "display_data")
        assert shown == "made z\n42"
        bars = [m for m in outputs if "application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})]
        assert bars, "the reattached job shows no progress bar"
    finally:
        second.close()


def test_the_job_directory_comes_from_the_flag_then_the_environment_then_the_config_file(tmp_path, monkeypatch):
    config = tmp_path / "de-magic.toml"
    config.write_text('job_dir = "kept/jobs"\n')
    monkeypatch.setenv("DE_MAGIC_CONFIG", str(config))
    monkeypatch.delenv("DE_MAGIC_JOB_DIR", raising=False)
    assert job_directory(None) == str(tmp_path / "kept" / "jobs")  # relative to the file
    config.write_text('job_dir = "~/kept"\n')
    assert job_directory(None) == str(Path.home() / "kept")  # as for state_dir and keys: "~" is the home directory
    monkeypatch.setenv("DE_MAGIC_JOB_DIR", "/srv/jobs")
    assert job_directory(None) == "/srv/jobs"
    assert job_directory("/flag/jobs") == "/flag/jobs"
    config.write_text("job_dir = 3\n")
    monkeypatch.delenv("DE_MAGIC_JOB_DIR")
    with pytest.raises(Refused, match="job_dir in .* must be a directory's path"):
        job_directory(None)


def test_a_cell_job_keeps_its_output_within_the_byte_budget(cluster):
    cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code", "--job-bytes", "2000")
    job = start_cell(RemoteSession(cluster.client, "hello_world"), "for i in range(100):\n    print('x' * 50)", {}, [])
    assert job.result(timeout=10)["status"] == "ok"
    text = "".join(output.get("text", "") for output in job.outputs)
    assert 1000 < text.count("x") < 2000
    assert text.endswith("[de-magic: this job's further output is left out: over 2000 bytes (--job-bytes)]\n")


def test_a_job_takes_remote_references_in_place_on_their_worker(hello):
    be = hello.client["hello_world"]
    table = be.describe_table.options(keep=True)(n_rows=7)
    job = be.echo.start(table)  # the reference travels as its id; the job runs on the worker holding it
    assert job.worker == table.worker
    assert job.result(timeout=10).equals(table.fetch())
    table.release()
