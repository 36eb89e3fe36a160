"""A newcomer's first hour, scripted: the commands the README shows, and the usual mistakes.

Each mistake must end in one line that says what happened and what to do, never in a traceback
of de-magic's own code; a traceback is right only where the user's own code raised.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, free_port, wait_for

from de_magic import Client
from de_magic.wire.errors import BackendLost
from de_magic.caller.session import RemoteSession

TRACEBACK = "Traceback (most recent call last)"

BACKEND = '''"""A newcomer's backend."""
import xarray as xr

VERSION = "1.0"
__all__ = ["compute_sum", "VERSION"]


def compute_sum(da: xr.DataArray) -> xr.DataArray:
    """Sum."""
    return da.sum()


if __name__ == "__main__":
    from de_magic import main
    main(name="my_analysis")
'''


def environment(**more: str) -> dict[str, str]:
    """This checkout's de_magic, and the ``de-magic`` command of this interpreter first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PYTHONPATH": str(ROOT), "PATH": path, **more}


def run(*command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=environment(**env), capture_output=True, text=True, timeout=60)


def says_in_one_line(result: subprocess.CompletedProcess, *what: str) -> str:
    """The one stderr line a failed command printed, which must contain each of ``what``."""
    assert TRACEBACK not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith("de-magic: ") and all(text in lines[0] for text in what), lines[0]
    return lines[0]


@pytest.fixture
def home(tmp_path) -> Path:
    (tmp_path / "backend.py").write_text(BACKEND)
    return tmp_path


def test_mistakes_on_the_command_line(demo, home):
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    says_in_one_line(run("de-magic", "list", "--broker", nowhere, "--timeout", "1", cwd=home),
                     f"de-magic broker --bind {nowhere}")
    says_in_one_line(run("python", "backend.py", "test-connect", "--broker", nowhere, cwd=home),
                     nowhere, "de-magic demo")
    says_in_one_line(run("de-magic", "list", cwd=home, DE_MAGIC_BROKER="127.0.0.1:5555"),
                     "$DE_MAGIC_BROKER", "expected tcp://HOST:PORT")
    says_in_one_line(run("de-magic", "serve", "nosuch.py", cwd=home), "no file nosuch.py")
    says_in_one_line(run("de-magic", "schema", "nosuch.py", cwd=home), "no file nosuch.py")
    says_in_one_line(run("de-magic", "serve", "nosuch_module", cwd=home), "no module named 'nosuch_module'")
    says_in_one_line(run("de-magic", "call", "hello_wrld", "scale", "--broker", demo.url, cwd=home),
                     "live backends: hello_world, ocean_model")
    says_in_one_line(run("de-magic", "call", "hello_world", "scale", "--init", "{}", "--broker", demo.url, cwd=home),
                     "--init", "Class.method")


def test_a_taken_port_names_its_holder(demo, home):
    for command in (["de-magic", "broker", "--bind", demo.url], ["de-magic", "demo"]):
        says_in_one_line(run(*command, cwd=home, DE_MAGIC_BROKER=demo.url),
                         "a de-magic broker", f"de-magic list --broker {demo.url}", "DE_MAGIC_BROKER=tcp://")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        url = f"tcp://127.0.0.1:{other.getsockname()[1]}"
        says_in_one_line(run("de-magic", "broker", "--bind", url, cwd=home), "another program")


def test_user_code_that_raises_keeps_its_traceback_and_only_that(home):
    (home / "broken.py").write_text("def f(x: int) -> int:\n    return x\n\nraise RuntimeError('my own bug')\n")
    (home / "typo.py").write_text("import os\ndef f(:\n    pass\n")
    (home / "needs.py").write_text("import os\nimport no_such_package_here\n")
    result = run("de-magic", "schema", "broken.py", cwd=home)
    assert result.returncode == 1 and TRACEBACK in result.stderr and "my own bug" in result.stderr
    assert 'broken.py", line 4' in result.stderr
    for name, error in (("typo.py", "SyntaxError"), ("needs.py", "No module named 'no_such_package_here'")):
        for command in (["de-magic", "serve", name], ["de-magic", "schema", name.removesuffix(".py")]):
            result = run(*command, cwd=home)
            assert result.returncode == 1 and error in result.stderr, result.stderr
            # the user's file, and not de-magic's or importlib's frames above it
            assert f'{name}", line 2' in result.stderr and "cli.py" not in result.stderr, result.stderr
            assert "importlib" not in result.stderr and len(result.stderr.splitlines()) <= 5, result.stderr


def test_a_flag_typo_gets_a_suggestion(home):
    result = run("de-magic", "list", "--brokr", "tcp://127.0.0.1:1", cwd=home)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert "--brokr (did you mean --broker?)" in result.stderr and "de-magic list --help" in result.stderr
    result = run("python", "backend.py", "listen", "--max-wokers", "2", cwd=home)
    assert "--max-wokers (did you mean --max-workers?)" in result.stderr and len(result.stderr.splitlines()) == 1


def test_output_cut_short_and_ctrl_c_end_quietly(demo, home):
    # the reader leaves before reading (`| head` that has seen enough): no BrokenPipeError traceback
    with subprocess.Popen(["de-magic", "schema", "de_magic.demo.hello"], cwd=home, env=environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as cut:
        cut.stdout.close()
        assert cut.stderr.read() == "" and cut.wait(30) == 1
    call = subprocess.Popen(["de-magic", "call", "hello_world", "slow_sum", "--args", '{"n": 1000}', "--broker",
                             demo.url], cwd=home, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert call.stderr.readline().startswith("adding")  # the call runs
        wait_for(lambda: any(w["busy"] for w in demo.workers("hello_world")), what="the call to run")
        call.send_signal(signal.SIGINT)
        stderr = call.communicate(timeout=30)[1]
    finally:
        call.kill()
    assert call.returncode == 130 and TRACEBACK not in stderr, stderr
    assert stderr.splitlines()[-1] == "de-magic: interrupted; a call in progress was cancelled at the backend"
    wait_for(lambda: not any(w["busy"] for w in demo.workers("hello_world")), what="the remote call to stop")


def test_a_refused_backend_says_so_once(demo, home):
    result = run("de-magic", "serve", "backend.py", "--name", "hello_world", "--broker", demo.url, cwd=home)
    says_in_one_line(result, "refused to register 'hello_world'", "choose another name")
    assert "none answers yet" not in result.stderr


def test_backend_file_is_served_under_the_name_it_declares(demo, home, processes):
    # __all__ lists a constant: both ways of describing the module skip it alike
    for command in (["python", "backend.py", "schema"], ["de-magic", "schema", "backend.py"]):
        schema = json.loads(run(*command, cwd=home).stdout)
        assert (schema["name"], list(schema["members"])) == ("my_analysis", ["compute_sum"])
    served = subprocess.Popen(["de-magic", "serve", "backend.py", "--broker", demo.url], cwd=home, env=environment(),
                              start_new_session=True)
    processes.procs.append(served)
    wait_for(lambda: "my_analysis" in demo.client.listing(api=False)["backends"], what="my_analysis to register")
    # a DataFrame printed as JSON is a table, not its text
    table = json.loads(run("de-magic", "call", "hello_world", "describe_table", "--args", '{"n_rows": 2}', "--json",
                           "--broker", demo.url, cwd=home).stdout)
    assert isinstance(table, dict) and all(len(column) == 2 for column in table.values())


def test_listen_before_the_broker_says_it_waits_and_how_to_start_one(home, processes):
    url = f"tcp://127.0.0.1:{free_port()}"
    listen = subprocess.Popen(["python", "backend.py", "listen", "--broker", url, "--heartbeat", "0.2"], cwd=home,
                              env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    processes.procs.append(listen)
    connecting = listen.stdout.readline()
    assert connecting == f"de-magic: backend 'my_analysis' (compute_sum) is connecting to the broker at {url}\n"
    waiting = next(line for line in iter(listen.stderr.readline, "") if "de-magic:" in line)
    assert f"waiting for a broker at {url}" in waiting and f"de-magic broker --bind {url}" in waiting
    processes.start("broker", "--bind", url, "--heartbeat", "0.2")
    assert listen.stdout.readline().startswith(f"de-magic: registered at {url}; serving calls")


def test_notebook_errors_are_one_line(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("DE_MAGIC_BROKER", demo.url)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    cells = {
        "setup": "%load_ext de_magic\nclient = %remote_connect   # a comment, as in the README\n"
                 "hw = client['hello_world']",
        "wrong name": "client['hello_wrld']",
        "wrong type": "hw.compute_sum('not an array')",
        "no broker": "%remote_connect tcp://127.0.0.1:1",
        "bad address": "from de_magic import Client\nClient('127.0.0.1:5555')",
        "remote bug": "%%remote hello_world\n1 / 0",
        "members": "print(dir(hw))\nhelp(hw.Stats)",
    }
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in cells.values()])
    NotebookClient(nb, timeout=60, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = dict(zip(cells, nb.cells))

    def error(name: str) -> str:
        """What the cell showed of its error: an error output, or IPython's stderr line for a UsageError."""
        text = "".join("\n".join(o.traceback) if o.output_type == "error" else o.text
                       for o in out[name].outputs if o.output_type == "error" or o.get("name") == "stderr")
        assert text and "de_magic/" not in text and "client.py" not in text, text  # no frames of ours
        return text

    assert not [o for o in out["setup"].outputs if o.output_type == "error"]
    assert error("wrong name") == ("UnknownBackend: no backend named 'hello_wrld' at " + demo.url
                                   + "; live backends: hello_world, ocean_model")
    assert error("wrong type").startswith(
        "TypeError: compute_sum() argument 'da': expected xarray.DataArray, got str ('not an array')")
    assert error("no broker").startswith("UsageError: no de-magic broker answers at tcp://127.0.0.1:1")
    assert "de-magic broker --bind tcp://127.0.0.1:1" in error("no broker")
    assert error("bad address").startswith("BadAddress: '127.0.0.1:5555' is not a broker address")
    assert "ZeroDivisionError" in error("remote bug")  # the user's own code: the remote traceback
    printed = "".join(o.get("text", "") for o in out["members"].outputs)
    assert printed.startswith("['Stats', 'compute_sum', 'describe_table', 'echo', 'scale', 'slow_sum']")
    assert "std(self, values: list[float]) -> float" in printed


def test_broker_restart_during_a_cell_says_the_namespace_survived(hello):
    session = RemoteSession(hello.client, "hello_world")
    session.push(x=41)
    running = session.execute("import time\ntime.sleep(2)", block=False)
    wait_for(lambda: any(w["busy"] for w in hello.workers("hello_world")), what="the cell to run")
    hello.broker.kill()
    hello.broker.wait()
    hello.start_broker()
    with pytest.raises(BackendLost, match="namespace of session .* survived: run the code again"):
        running.result()
    assert session.eval("x + 1") == 42
    assert session.pull(["x"]) == 41 and session.pull(["x", "x"]) == (41, 41)  # names as one list, too
    with pytest.raises(TypeError, match="names of remote variables"):
        session.pull(1)


def test_demo_restarts_a_backend_that_dies_and_the_rest_keeps_running(home, processes):
    url = f"tcp://127.0.0.1:{free_port()}"
    errors = home / "demo.stderr"
    with errors.open("w") as err:
        demo = subprocess.Popen(["de-magic", "demo", "--broker", url], cwd=home, env=environment(),
                                stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
    processes.procs.append(demo)
    assert any("Press Ctrl-C" in line for line in demo.stdout)
    with Client(url, timeout=10) as client:
        def pids(name: str) -> set[int]:
            entry = client.listing(api=False)["backends"].get(name)
            return {worker["pid"] for worker in entry["workers"]} if entry else set()

        (victim,), ocean = pids("hello_world"), pids("ocean_model")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "backend hello_world exited (killed by SIGKILL); restarting it in 1 s" in errors.read_text(),
                 what="the demo to say so")
        # back, and the killed one gone from the broker too: until its heartbeats are missed, a call may still be
        # sent to it, and is lost with it
        wait_for(lambda: (now := pids("hello_world")) and victim not in now, timeout=30, what="hello_world to be back")
        assert client.call("hello_world", "scale", ([1.0],)) == [2.0]
        assert pids("ocean_model") == ocean and demo.poll() is None  # the rest ran on, untouched
    demo.send_signal(signal.SIGINT)
    assert demo.wait(15) == 0 and "de-magic demo: stopped" in demo.stdout.read()


def test_demo_without_its_extra_names_what_to_install(monkeypatch):
    from de_magic import cli, embedded

    real = embedded.metadata.requires
    monkeypatch.setattr(embedded.metadata, "requires",
                        lambda dist: [*real(dist), "no-such-package-here; extra == 'demo'"])
    with pytest.raises(SystemExit) as ended:
        cli.main(["demo", "--broker", f"tcp://127.0.0.1:{free_port()}"])
    assert str(ended.value) == ("de-magic: the demo backends need no-such-package-here, not installed here: "
                                "pip install 'de-magic[demo]'")


SCRIPT = """from de_magic import Client
hw = Client()["hello_world"]


def analyse():
    return hw.scale("not a list")


analyse()
"""


def test_a_plain_script_shows_its_own_frames_and_the_error(demo, home):
    (home / "script.py").write_text(SCRIPT)
    result = run("python", "script.py", cwd=home, DE_MAGIC_BROKER=demo.url)
    assert result.returncode == 1 and "de_magic" + os.sep not in result.stderr, result.stderr
    assert 'script.py", line 9, in <module>' in result.stderr and 'script.py", line 6, in analyse' in result.stderr
    assert "scale() argument 'values': expected list[float], got str" in result.stderr.splitlines()[-1]
    full = run("python", "script.py", cwd=home, DE_MAGIC_BROKER=demo.url, DE_MAGIC_FULL_TRACEBACKS="1")
    assert "de_magic" + os.sep in full.stderr  # for work on de-magic itself
