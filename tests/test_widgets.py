"""Progress bars, call forms and remote widgets, in a real IPython kernel.

The kernel is driven the way a frontend drives it (jupyter_client on the
shell and iopub channels), so the assertions are on the messages a frontend
would receive: comm opens and state updates of widget models.
"""

from __future__ import annotations

import io
import os
import signal

import pytest

from de_magic.schema import describe
from de_magic.caller.progress import Progress, TextProgress
from de_magic.notebook.forms import CallForm, field
from de_magic.notebook.progress import WidgetProgress

from conftest import wait_for
from kernel import Kernel, parent

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def output_id(kernel: Kernel, form: str) -> str:
    """The model id of the Output widget of the call form named ``form`` in the kernel."""
    msgs = kernel.execute(f"print({form}.output.model_id)")
    return next(m["content"]["text"].strip() for m in msgs if m["msg_type"] == "stream")


def opened(msgs: list[dict], model: str) -> list[dict]:
    return [m for m in msgs if m["msg_type"] == "comm_open"
            and m["content"]["data"]["state"].get("_model_name") == model]


def updates(msgs: list[dict], comm_id: str) -> list[dict]:
    return [m["content"]["data"]["state"] for m in msgs if m["msg_type"] == "comm_msg"
            and m["content"]["comm_id"] == comm_id and m["content"]["data"].get("method") == "update"]


def outputs_update(comm_id: str, predicate):
    """A predicate on iopub messages: an update of Output widget ``comm_id`` whose outputs satisfy ``predicate``."""
    def check(msg: dict) -> bool:
        return any("outputs" in state and predicate(state["outputs"]) for state in updates([msg], comm_id))
    return check


def text_of(outputs: list[dict]) -> str:
    return "".join(o.get("text", "") for o in outputs)


def plain(outputs: list[dict]) -> list[str]:
    return [o["data"]["text/plain"] for o in outputs if "text/plain" in o.get("data", {})]


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


# -- forms and renderers without a kernel ----------------------------------------


def test_form_fields_follow_the_schema():
    from de_magic.demo import hello
    from de_magic.schema import members_of

    api = describe("hello_world", members_of(hello))["members"]
    form = CallForm(None, "hello_world", api["scale"])
    kinds = {name: type(widget).__name__ for name, widget in form.fields.items()}
    assert kinds == {"values": "Text", "factor": "FloatSlider", "mode": "Dropdown"}
    assert (form.fields["factor"].min, form.fields["factor"].max, form.fields["factor"].value) == (0, 10, 2.0)
    assert form.fields["mode"].options == ("multiply", "divide")
    form.fields["values"].value = "1, 2.5"
    assert form.arguments() == ([], {"values": [1.0, 2.5], "factor": 2.0, "mode": "multiply"}, None)
    form.fields["values"].value = "1, x"
    with pytest.raises(ValueError, match="values"):
        form.arguments()
    # a required field left blank is refused, by name, not sent as []
    form.fields["values"].value = " "
    with pytest.raises(ValueError, match=r"^values: a value is required \(write \[\] for an empty list\)$"):
        form.arguments()
    assert form.run() is None and form.status.value == "invalid input"
    form.fields["values"].value = "[]"
    assert form.arguments()[1]["values"] == []

    std = CallForm(None, "hello_world", api["Stats"]["methods"]["std"], member="Stats", init_entry=api["Stats"])
    # the summary's ``values`` is code, as in the sidebar, not raw RST
    assert "Standard deviation of <code>values</code>" in std.children[0].value
    std.fields["values"].value = "[1, 2]"
    std.fields["__init__.ddof"].value = 1
    assert std.arguments() == ([], {"values": [1.0, 2.0]}, ((), {"ddof": 1}))


@pytest.mark.parametrize("schema, widget, typed, value", [
    ({"type": "boolean", "default": True}, "Checkbox", True, True),
    ({"type": "integer", "minimum": 1}, "BoundedIntText", 3, 3),
    ({"type": "integer"}, "IntText", 4, 4),
    ({"type": "number", "maximum": 0}, "BoundedFloatText", -1.5, -1.5),
    ({"type": "string"}, "Text", "hi", "hi"),
    ({"type": "array", "items": {"type": "integer"}}, "Text", "1, 2", [1, 2]),
    ({"anyOf": [{"$ref": "#/$defs/Color"}, {"type": "null"}]}, "Dropdown", "red", "red"),
    ({"description": "xarray.DataArray"}, "Text", "{'a': 1}", {"a": 1}),
])
def test_field_widgets_and_parsing(schema, widget, typed, value):
    param = {"name": "p", "kind": "POSITIONAL_OR_KEYWORD", "required": True, "schema": schema}
    made, parse = field(param, {"Color": {"enum": ["red", "blue"], "type": "string"}})
    assert type(made).__name__ == widget
    made.value = typed
    assert parse(made.value) == value


def test_text_progress_redraws_nested_bars_on_one_line():
    out = io.StringIO()
    show = TextProgress(out, live=True)
    show(Progress(id=1, parent=None, desc="outer", n=0, total=2, unit="it"))
    show(Progress(id=2, parent=1, desc="inner", n=3, total=3, unit="it", done=True))
    show(Progress(id=1, parent=None, desc="outer", n=2, total=2, unit="it", done=True))
    frames = out.getvalue().split("\r\033[K")[1:]
    assert frames == ["outer: 0/2 it", "outer: 0/2 it | inner: 3/3 it", "outer: 2/2 it\n"]


def test_widget_progress_nests_and_drops_finished_inner_bars():
    show = WidgetProgress(output=None)
    show._show = lambda: None  # no kernel to display in
    show(Progress(id=1, parent=None, desc="outer", n=0, total=2))
    show(Progress(id=2, parent=1, desc="inner", n=1, total=4))
    assert [row.layout.margin for row in show.box.children] == ["0 0 0 0em", "0 0 0 2em"]
    show(Progress(id=2, parent=1, desc="inner", n=4, total=4, done=True))
    show(Progress(id=1, parent=None, desc="outer", n=2, total=2, done=True))
    (row,) = show.box.children
    bar = row.children[0]
    assert (bar.value, bar.max, bar.bar_style) == (2, 2, "success")
    show.close()
    assert bar.comm is None and show.box.comm is None


# -- in a kernel ---------------------------------------------------------------------


def test_progress_of_a_plain_call_is_a_live_widget_bar(kernel, hello):
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"c = Client({hello.url!r})\n"
                          f"total = c['hello_world'].slow_sum(n=5, delay=0.01)\n"
                          f"assert total == 10")
    (bar,) = opened(msgs, "IntProgressModel")
    comm_id = bar["content"]["comm_id"]
    assert bar["content"]["data"]["state"]["description"] == "adding"
    states = [bar["content"]["data"]["state"], *updates(msgs, comm_id)]
    final = {key: value for state in states for key, value in state.items()}
    assert final["max"] == 5 and final["value"] == 5 and final["bar_style"] == "success"
    # the bars are shown in the cell that made the call
    (box,) = opened(msgs, "VBoxModel")
    shown = [m["content"]["data"].get(WIDGET_VIEW, {}).get("model_id") for m in msgs if m["msg_type"] == "display_data"]
    assert box["content"]["comm_id"] in shown

    # submitted in one cell, awaited in the next: the bars still belong to the first
    submitted = kernel.execute("future = c['hello_world'].slow_sum.submit(n=3, delay=0.1)")
    cell = parent(submitted[0])
    kernel.execute("assert future.result() == 3")
    kernel.wait_for(lambda m: m["msg_type"] == "display_data" and parent(m) == cell and WIDGET_VIEW in m["content"]["data"],
                    what="the bars of the submitted call in the submitting cell")


def test_a_method_jobs_display_shows_one_progress_bar(kernel, hello):
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"job = Client({hello.url!r})['hello_world'].slow_sum.start(n=6, delay=0.2)\n"
                          f"job")
    cell = parent(msgs[0])
    kernel.execute("assert job.result() == 15")
    # the job's display follows it to its end: done, and the bar that ran is the widget's
    kernel.wait_for(lambda m: m["msg_type"] == "update_display_data" and "done" in m["content"]["data"]["text/plain"],
                    what="the job's display saying done")
    shown = [m["content"]["data"] for m in kernel.log if parent(m) == cell and "data" in m["content"]]
    shown += [m["content"]["data"] for m in kernel.log if m["msg_type"] == "update_display_data"]
    since = next(i for i, m in enumerate(kernel.log) if parent(m) == cell)
    widget_bars = opened(kernel.log[since:], "IntProgressModel")  # from the I/O thread: parent may differ
    html_bars = [data for data in shown if "<progress" in data.get("text/html", "")]
    assert (len(widget_bars), html_bars) == (1, []), html_bars


def test_call_form_runs_in_the_background_and_shows_result_progress_and_errors(kernel, hello):
    kernel.execute(f"from de_magic import Client\n"
                   f"from de_magic.notebook.forms import call_form\n"
                   f"c = Client({hello.url!r})\n"
                   f"form = c['hello_world'].scale.ui()\n"
                   f"form.fields['values'].value = '1, 2'\n"
                   f"form.fields['factor'].value = 3.0\n"
                   f"form")
    out_id = output_id(kernel, "form")
    kernel.execute("form.run_button.click()")
    kernel.wait_for(outputs_update(out_id, lambda outputs: "[3.0, 6.0]" in plain(outputs)),
                    what="the result in the form's output")

    # a method of a remote instance: the constructor arguments go along
    kernel.execute("std = c['hello_world'].Stats(ddof=1).std.ui()\n"
                   "std.fields['values'].value = '1, 2, 3'\n"
                   "std.run()")
    std_id = output_id(kernel, "std")
    kernel.wait_for(outputs_update(std_id, lambda outputs: "1.0" in plain(outputs)), what="std with ddof=1")

    # a slow call keeps the kernel free: another cell runs while the form's call is going
    kernel.execute("slow = call_form(c, 'hello_world', 'slow_sum')\n"
                   "slow.fields['n'].value = 4\n"
                   "slow.fields['delay'].value = 0.3\n"
                   "started = slow.run()")
    state = kernel.execute("print(started.done(), slow.run_button.disabled)")
    assert next(m["content"]["text"] for m in state if m["msg_type"] == "stream").split() == ["False", "True"]
    slow_id = output_id(kernel, "slow")
    kernel.wait_for(outputs_update(slow_id, lambda outputs: "6" in plain(outputs)), what="slow_sum's result")
    progress = [o for state in updates(kernel.log, slow_id) for o in state.get("outputs", ())
                if WIDGET_VIEW in o.get("data", {})]
    assert progress, "the progress bars are shown in the form's output"

    # rich results are displayed as IPython would; remote errors end up in the output too
    kernel.execute("table = call_form(c, 'hello_world', 'describe_table')\n"
                   "table.fields['n_rows'].value = -1\n"
                   "table.run_button.click()")
    table_id = output_id(kernel, "table")
    kernel.wait_for(outputs_update(table_id, lambda outputs: text_of(outputs).startswith("ValueError: negative dimensions")),
                    what="the remote error in the form's output")
    kernel.execute("table.fields['n_rows'].value = 3\n"
                   "table.run_button.click()")
    kernel.wait_for(outputs_update(table_id, lambda outputs: any("<table" in o.get("data", {}).get("text/html", "")
                                                                  for o in outputs)),
                    what="the DataFrame as an HTML table")


def test_call_form_cancel_stops_the_call_on_the_backend_too(kernel, hello):
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"from de_magic.notebook.forms import call_form\n"
                          f"c = Client({hello.url!r})\n"
                          f"long = call_form(c, 'hello_world', 'slow_sum')\n"
                          f"long.fields['n'].value = 400\n"
                          f"long.fields['delay'].value = 0.05\n"  # 20 s
                          f"print(long.status.model_id)\n"
                          f"started = long.run()")
    status_id = next(m["content"]["text"].strip() for m in msgs if m["msg_type"] == "stream")
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] == 1, what="the call to run on the backend")
    kernel.execute("long.cancel_button.click()")
    kernel.wait_for(lambda m: any(state.get("value", "").startswith("cancelled after")
                                  for state in updates([m], status_id)), timeout=10, what="the form saying cancelled")
    state = kernel.execute("print(type(started.exception()).__name__, long.run_button.disabled, "
                           "long.cancel_button.disabled, long.cancel())")
    assert next(m["content"]["text"] for m in state if m["msg_type"] == "stream").split() == [
        "Interrupted", "False", "True", "False"]
    # the backend was told: its slot is free long before the 20 s the call would take
    wait_for(lambda: hello.workers("hello_world")[0]["busy"] == 0, timeout=5, what="the backend to stop the call")


REMOTE_CELL = '''
import ipywidgets as w
slider = w.IntSlider(description="level")
out = w.Output()
def changed(change):
    print("printed", change["new"])
    with out:
        print("value is", change["new"])
slider.observe(changed, "value")
button = w.Button(description="boom")
def boom(_):
    with out:
        raise ValueError("button says no")
button.on_click(boom)
display(slider, out, button)
shown = w.interact(lambda x: print("twice", 2 * x), x=(0, 10))
'''


def test_remote_widgets_are_live_in_the_notebook(kernel, hello):
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"from de_magic.caller.session import RemoteSession\n"
                          f"session = RemoteSession(Client({hello.url!r}), 'hello_world')\n"
                          f"session.execute({REMOTE_CELL!r}).result()")
    (slider,) = (m for m in opened(msgs, "IntSliderModel") if m["content"]["data"]["state"]["description"] == "level")
    slider_id = slider["content"]["comm_id"]
    out_id, interact_out_id = (m["content"]["comm_id"] for m in opened(msgs, "OutputModel"))
    (button,) = opened(msgs, "ButtonModel")
    shown = [m["content"]["data"].get(WIDGET_VIEW, {}).get("model_id") for m in msgs if m["msg_type"] == "display_data"]
    assert slider_id in shown and out_id in shown

    # the frontend moves the slider: the backend's observer runs, its output comes back
    moved = kernel.send_comm_msg(slider_id, {"method": "update", "state": {"value": 7}, "buffer_paths": []})
    value_is_7 = [{"output_type": "stream", "name": "stdout", "text": "value is 7\n"}]  # print()'s pieces merged
    kernel.wait_for(outputs_update(out_id, lambda outputs: outputs == value_is_7),
                    what="the Output widget update from the remote callback")
    printed = kernel.wait_for(lambda m: m["msg_type"] == "stream" and "printed 7" in m["content"]["text"],
                              what="the callback's print")
    assert parent(printed) == moved  # where a kernel puts output of a widget callback
    value = kernel.execute("print(session.eval('slider.value'))")
    assert [m["content"]["text"] for m in value if m["msg_type"] == "stream"] == ["7\n"]

    # interact: the function's output replaces the previous one in interact's Output widget
    (x_slider,) = (m for m in opened(msgs, "IntSliderModel") if m["content"]["comm_id"] != slider_id)
    kernel.send_comm_msg(x_slider["content"]["comm_id"], {"method": "update", "state": {"value": 3}})
    kernel.wait_for(outputs_update(interact_out_id, lambda outputs: text_of(outputs) == "twice 6\n"),
                    what="interact's output for x=3")

    # a click (a custom message) whose callback raises: the error shows in the Output widget
    kernel.send_comm_msg(button["content"]["comm_id"], {"method": "custom", "content": {"event": "click"}})
    kernel.wait_for(outputs_update(out_id, lambda outputs: any(o.get("ename") == "ValueError" for o in outputs)),
                    what="the callback's error in the Output widget")

    # closing on the backend closes the notebook's comm
    kernel.execute("session.execute('slider.close()').result()")
    kernel.wait_for(lambda m: m["msg_type"] == "comm_close" and m["content"]["comm_id"] == slider_id,
                    what="the slider's comm_close")


def test_remote_widgets_say_when_their_backend_is_gone(kernel, hello):
    code = "import ipywidgets as w\ndisplay(w.FloatSlider(description='gain'), w.IntSlider())"
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"from de_magic.caller.session import RemoteSession\n"
                          f"gone = RemoteSession(Client({hello.url!r}), 'hello_world')\n"
                          f"gone.execute({code!r}).result()")
    (gain,) = (m["content"]["comm_id"] for m in opened(msgs, "FloatSliderModel"))
    (plain_slider,) = (m["content"]["comm_id"] for m in opened(msgs, "IntSliderModel"))

    # the backend restarts: the widgets it made are gone with it
    os.kill(hello.workers("hello_world")[0]["pid"], signal.SIGTERM)
    wait_for(lambda: not hello.workers("hello_world"), what="the backend to go")
    hello.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")

    # moving one of them disables both, and says so where the user looks: on the widgets
    kernel.send_comm_msg(gain, {"method": "update", "state": {"value": 3.0}, "buffer_paths": []})
    for comm_id, description in ((gain, "gain (disconnected)"), (plain_slider, "(disconnected)")):
        state = kernel.wait_for(lambda m, comm_id=comm_id: any(s.get("disabled") for s in updates([m], comm_id)),
                                what=f"comm {comm_id} disabled")
        (state,) = updates([state], comm_id)
        assert state["description"] == description
        assert state["tooltip"].startswith("disconnected from the backend: ")


def test_the_last_value_of_fast_slider_changes_is_the_one_shown(kernel, hello):
    code = "import ipywidgets as w\nshown = w.interact(lambda x: print('x =', x), x=(0, 50))"
    msgs = kernel.execute(f"from de_magic import Client\n"
                          f"from de_magic.caller.session import RemoteSession\n"
                          f"fast = RemoteSession(Client({hello.url!r}), 'hello_world')\n"
                          f"fast.execute({code!r}).result()")
    (x_slider,) = (m["content"]["comm_id"] for m in opened(msgs, "IntSliderModel"))
    (out_id,) = (m["content"]["comm_id"] for m in opened(msgs, "OutputModel"))
    # a drag: many updates without waiting for the kernel, as a frontend sends them
    for value in range(1, 31):
        last = kernel.send_comm_msg(x_slider, {"method": "update", "state": {"value": value}, "buffer_paths": []})
    kernel.wait_for(lambda m: parent(m) == last and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "idle", what="the last update handled")
    shown = [text_of(state["outputs"]) for m in kernel.log for state in updates([m], out_id) if "outputs" in state]
    assert shown[-1] == "x = 30\n", shown[-5:]
