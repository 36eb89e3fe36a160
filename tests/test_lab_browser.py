"""The Remote backends sidebar in a real JupyterLab, driven by headless Chromium.

One JupyterLab (with a real broker and the demo backends) serves every step; the steps run in
order in one test because each builds on what the previous one left on screen.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import HEARTBEAT, ROOT, curve_keys, free_port, start_logged, wait_for
from labtools import Jupyter

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The screenshot in the docs is rewritten only on request, so test runs leave the tree clean:
# DE_MAGIC_SCREENSHOT=1 python -m pytest tests/test_lab_browser.py
DOCS_SCREENSHOT = ROOT / "docs" / "sidebar.png"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install -y chromium)")


NOT_REACHABLE = "The broker did not answer (its entry above says why)."


def screenshot(page, tmp_path: Path, name: str) -> None:
    """A picture of the page, for the docs when $DE_MAGIC_SCREENSHOT is set (else kept with the test's files)."""
    shot = (DOCS_SCREENSHOT.parent if os.environ.get("DE_MAGIC_SCREENSHOT") else tmp_path) / name
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 50_000


@pytest.fixture
def lab(hello, tmp_path):
    """JupyterLab whose default broker is ``hello``'s, plus a user-added broker that is down."""
    hello.start_backend("de_magic.demo.ocean", "ocean_model", "--direct", "tcp://127.0.0.1:0")
    down = f"tcp://127.0.0.1:{free_port()}"
    jupyter = Jupyter(
        tmp_path,
        lab=True,
        env={"DE_MAGIC_BROKER": hello.url},
        config={"DeMagicLab": {"timeout": 1.0}},
        settings={"de-magic:plugin": {"brokers": [down], "refreshInterval": 1, "maxRefreshInterval": 5}},
    )
    with jupyter:
        jupyter.down = down
        # The settings schema ships with the extension (Lab's settings editor shows it).
        schema = jupyter.get("/lab/api/settings/de-magic:plugin").json()
        assert schema["schema"]["title"] == "Remote backends"
        assert schema["settings"]["brokers"] == [down]
        yield jupyter


@pytest.fixture
def page(lab):
    with open_page() as page:
        yield page


@contextmanager
def open_page():
    """A page of a fresh headless Chromium that records console errors and listing requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 900})
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.add_init_script(LOG_LISTINGS)
            page.console_errors = []
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
            page.on("pageerror", lambda e: page.console_errors.append(str(e)))
            yield page
        finally:
            browser.close()


# Logs when the page asks for a listing, in the page's own clock.
LOG_LISTINGS = """
window.__listings = [];
const fetch0 = window.fetch;
window.fetch = function (input, init) {
  const url = typeof input === 'string' ? input : input.url;
  if (url.includes('/de-magic/listing')) {
    window.__listings.push(performance.now());
  }
  return fetch0.apply(this, arguments);
};
"""


def listings_since(page, since: float) -> list[float]:
    return page.evaluate("since => window.__listings.filter(t => t > since)", since)


def rows(page, kind: str):
    return page.locator(f"#de-magic-backends .jp-DeMagic-row[data-kind={kind}]")


def broker(page, url: str):
    """A broker's row (it shows the address without tcp://)."""
    return page.locator(f'#de-magic-backends .jp-DeMagic-row[data-kind=broker][data-broker="{url}"]')


def expanded(row) -> bool:
    return row.locator("xpath=..").get_attribute("aria-expanded") == "true"


def active_cell_text(page) -> str:
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-mod-active .cm-content").inner_text()


def run_active_cell(page) -> None:
    """Run the active cell as a user would (click into it, Shift+Enter), and see that it started.

    Right after an insert, headless Chromium now and then drops the first key press (about
    one run in four here): a cell still showing ``[ ]:`` after a while gets a second press.
    """
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell.jp-mod-active").element_handle()
    prompt = cell.query_selector(".jp-InputArea-prompt")
    for _ in range(2):
        cell.query_selector(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if prompt.inner_text().strip() != "[ ]:":
                return
            page.wait_for_timeout(100)
    raise AssertionError("the cell did not start running")


def test_sidebar_browse_filter_insert_and_run(page, lab, hello, processes, tmp_path):
    from playwright.sync_api import expect

    from de_magic import RemoteSession
    from de_magic.caller.jobs import start_cell

    # A %%remote session and a remote reference on hello_world: the details show what each worker holds.
    session = RemoteSession(hello.client, "hello_world")
    session.execute("values = list(range(10_000))").result()
    kept = hello.client["hello_world"].describe_table.options(keep=True)(n_rows=1000)
    page.goto(lab.lab_url())
    tab = page.locator('.jp-SideBar [data-id="de-magic-backends"]')
    tab.click()
    panel = page.locator("#de-magic-backends")
    expect(panel).to_be_visible()
    expect(panel.locator(".jp-SidePanel-header")).to_have_text("Remote backends")
    _widen_sidebar(page, 430)

    # The default broker with both backends, their worker counts and whether they accept code.
    broker_row = broker(page, hello.url)
    expect(broker_row).to_have_text(re.compile(rf"^\s*{hello.url.removeprefix('tcp://')}\s*2 backends"))
    hello_row = rows(page, "backend").filter(has_text="hello_world")
    expect(hello_row).to_contain_text("1 worker")
    expect(hello_row.locator(".jp-DeMagic-tag")).to_have_text("code")
    expect(rows(page, "backend").filter(has_text="ocean_model").locator(".jp-DeMagic-tag")).to_have_count(0)

    # The user's broker that is down: a clear message, not an empty panel.
    error = panel.locator(".jp-DeMagic-message.jp-mod-error")
    expect(error).to_contain_text(f"No answer from the broker at {lab.down}")
    expect(error).to_contain_text(re.compile(r"Retrying (automatically|now)"))

    # The twisty opens a backend to its functions and classes, with signatures; a click on
    # the row itself selects it and leaves it open.
    hello_row.locator(".jp-DeMagic-caret").click()
    expect(rows(page, "function").filter(has_text="slow_sum")).to_contain_text("(n: int = 20, delay: float = 0.05) -> int")
    for name in ("compute_sum", "describe_table", "echo", "scale"):
        expect(rows(page, "function").filter(has_text=name)).to_have_count(1)
    expect(rows(page, "class").filter(has_text="Stats")).to_contain_text("(ddof: int = 0)")
    hello_row.click()
    expect(panel.locator(".jp-DeMagic-details .jp-DeMagic-titleName")).to_have_text("hello_world")
    expect(panel.locator(".jp-DeMagic-details .jp-DeMagic-sessions")).to_have_text(re.compile(r"^1 \(\d+(\.\d)? kB\)$"))
    expect(panel.locator(".jp-DeMagic-details .jp-DeMagic-refs")).to_have_text(re.compile(r"^1 \(\d+(\.\d)? kB\)$"))
    expect(panel.locator(".jp-DeMagic-details")).to_contain_text("1 %%remote session")
    expect(panel.locator(".jp-DeMagic-details .jp-DeMagic-path")).to_have_text("broker")
    # At Lab's default sidebar width the workers fit: their rows stack, nothing scrolls sideways.
    _widen_sidebar(page, 250)
    fits(panel.locator(".jp-DeMagic-details"))
    expect(panel.locator(".jp-DeMagic-details .jp-DeMagic-stacked thead").first).to_be_hidden()
    panel.locator(".jp-DeMagic-details .jp-DeMagic-path").scroll_into_view_if_needed()
    screenshot(page, tmp_path, "sidebar-backend.png")  # a backend's workers: what they hold, their path
    _widen_sidebar(page, 430)
    session.close()
    kept.release()
    expect(hello_row).to_have_class(re.compile("jp-mod-selected"))
    assert expanded(hello_row)
    expect(rows(page, "function").filter(has_text="slow_sum")).to_be_visible()

    # The filter narrows the tree as one types, down into classes.
    search = panel.locator("input.jp-DeMagic-filter")
    search.fill("slow")
    expect(rows(page, "function")).to_have_count(1)
    expect(rows(page, "function").locator("mark")).to_have_text("slow")
    expect(rows(page, "backend")).to_have_count(1)
    search.fill("std")
    expect(rows(page, "function")).to_have_count(0)
    expect(rows(page, "method")).to_have_text(re.compile(r"std\s*\(values: list\[float\]\) -> float"))
    search.fill("model")
    expect(rows(page, "backend")).to_have_text(re.compile("ocean_model"))
    expect(rows(page, "function").filter(has_text="model_info")).to_have_count(1)
    search.fill("")
    expect(rows(page, "backend")).to_have_count(2)

    # Selecting a function shows its rendered docstring and parameters, from their top.
    details = panel.locator(".jp-DeMagic-details")
    assert details.evaluate("node => (node.scrollTop = node.scrollHeight, node.scrollTop)") > 0
    rows(page, "function").filter(has_text="slow_sum").click()
    expect(details.locator(".jp-DeMagic-titleName")).to_have_text("slow_sum")
    assert details.evaluate("node => node.scrollTop") == 0
    expect(details.locator(".jp-DeMagic-signatureBlock")).to_have_text("slow_sum(n: int = 20, delay: float = 0.05) -> int")
    expect(details.locator(".jp-DeMagic-doc")).to_contain_text("Add up 0..n-1 slowly, reporting progress.")
    expect(details.locator("tr[data-param=delay]")).to_contain_text("seconds to wait per number")
    expect(details.locator("tr[data-param=n]")).to_contain_text("20")
    # Parameters are in the table, so the docstring's own Parameters section is not repeated.
    expect(details.locator(".jp-DeMagic-doc")).not_to_contain_text("how many numbers")

    # Open a notebook, then "Insert call" puts a runnable call in a new cell.
    page.locator('.jp-LauncherCard[data-category="Notebook"]').first.click()
    expect(page.locator(".jp-NotebookPanel .jp-Notebook")).to_be_visible()
    expect(page.locator(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status=idle]")).to_have_count(1, timeout=30_000)
    details.get_by_role("button", name="Insert call").click()
    expected = 'result = client["hello_world"].slow_sum(n=20, delay=0.05)'
    expect(page.locator(".jp-NotebookPanel .jp-Cell.jp-mod-active .cm-content")).to_contain_text(expected)
    code = active_cell_text(page)
    lines = [line for line in code.splitlines() if line.strip()]  # the editor's text doubles empty lines
    assert lines[:2] == ["from de_magic import Client", f'client = Client("{hello.url}")'], code
    assert code.rstrip().splitlines()[-1] == "result"
    run_active_cell(page)
    result = page.locator(".jp-NotebookPanel .jp-OutputArea-executeResult .jp-OutputArea-output")
    expect(result).to_have_text(re.compile(r"^\s*190\s*$"), timeout=30_000)
    expect(page.locator(".jp-NotebookPanel .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)

    # A screenshot for the docs: a backend open, a function selected with its doc, its call run.
    rows(page, "function").filter(has_text="slow_sum").hover()
    screenshot(page, tmp_path, DOCS_SCREENSHOT.name)

    # A method of a class: the class is built with its defaults through the notebook's client,
    # the required argument is a variable of its name to fill in.
    stats_row = rows(page, "class").filter(has_text="Stats")
    stats_row.click()
    expect(details.locator(".jp-DeMagic-titleName")).to_have_text("Stats")
    expect(rows(page, "method")).to_have_count(0)  # selected, not opened
    stats_row.locator(".jp-DeMagic-caret").click()
    rows(page, "method").filter(has_text="std").click()
    expect(details.locator(".jp-DeMagic-titleName")).to_have_text("Stats.std")
    details.get_by_role("button", name="Insert call").click()
    expect(page.locator(".jp-NotebookPanel .jp-Cell.jp-mod-active .cm-content")).to_contain_text(".Stats(ddof=0)")
    code = active_cell_text(page)
    assert code.splitlines()[0] == 'stats = client["hello_world"].Stats(ddof=0)', code
    assert re.search(r"\.std\(\s*values=values,\s*# TODO: required, list\[float\]", code), code
    # Run unfilled, it stops at once with a message that says what is missing.
    run_active_cell(page)
    std_cell = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text="stats = client")
    expect(std_cell.locator(".jp-OutputArea-output")).to_contain_text("NameError: name 'values' is not defined",
                                                                      timeout=20_000)

    # "Open form": the magics are loaded in the same cell, then the form magic; it runs.
    rows(page, "function").filter(has_text="scale").click()
    details.get_by_role("button", name="Open form").click()
    active = page.locator(".jp-NotebookPanel .jp-Cell.jp-mod-active")
    expect(active.locator(".cm-content")).to_have_text(re.compile(r"^%load_ext de_magic\s*%remote_ui hello_world\.scale$"))
    run_active_cell(page)
    form_cell = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text="%remote_ui hello_world.scale")
    expect(form_cell.locator(".jp-InputArea-prompt")).to_have_text(re.compile(r"\[\d+\]"), timeout=20_000)
    expect(form_cell.locator(".jp-OutputArea-output")).not_to_have_count(0)
    expect(form_cell.locator("[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)

    # "New %%remote cell" (the backend accepts code): the magics are loaded already, so the
    # cell comes alone, and running it runs its body on the backend.
    details.get_by_role("button", name="New %%remote cell").click()
    expect(active.locator(".cm-content")).to_contain_text("%%remote hello_world")
    assert active_cell_text(page).splitlines()[0] == "%%remote hello_world"
    assert page.locator(".jp-NotebookPanel .jp-Cell .cm-content").all_inner_texts().count("%load_ext de_magic") == 0
    run_active_cell(page)
    remote_cell = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text="%%remote hello_world")
    hello_pid = hello.workers("hello_world")[0]["pid"]
    expect(remote_cell.locator(".jp-OutputArea-output")).to_contain_text(f"pid {hello_pid}", timeout=20_000)

    # The Jobs section lists this user's finished job; "Insert fetch" brings its result into the notebook.
    job = hello.client["hello_world"].slow_sum.start(n=3, delay=0.01)
    assert job.result(timeout=10) == 3
    job_row = panel.locator(f'.jp-DeMagic-jobsBroker[data-broker="{hello.url}"] .jp-DeMagic-job[title="{job.id}"]')
    expect(job_row).to_contain_text(re.compile(r"done\s*slow_sum on hello_world\s*adding: 3/3 it"), timeout=15_000)
    job_row.get_by_role("button", name="Insert fetch").click()
    expect(active.locator(".cm-content")).to_contain_text(f'result = client.job("{job.id}").result()')
    run_active_cell(page)
    fetched = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text="client.job(")
    fetched = fetched.locator(".jp-OutputArea-executeResult .jp-OutputArea-output")
    expect(fetched).to_have_text(re.compile(r"^\s*3\s*$"), timeout=20_000)
    # A running %%remote job: "Insert fetch" inserts %remote_result, which shows its output as it comes.
    steps = start_cell(session, "import time\nfor i in range(16):\n    print('step', i, flush=True)\n"
                                "    time.sleep(0.5)", {}, [])
    steps_row = panel.locator(f'.jp-DeMagic-job[title="{steps.id}"]')
    expect(steps_row).to_have_attribute("data-status", "running", timeout=15_000)
    steps_row.get_by_role("button", name="Insert fetch").click()
    expect(active.locator(".cm-content")).to_have_text(f"%remote_result {steps.id}")
    run_active_cell(page)
    shown = page.locator(".jp-NotebookPanel .jp-CodeCell").filter(has_text="%remote_result")
    shown = shown.locator(".jp-OutputArea-output")
    expect(shown).to_contain_text("step 1\n", timeout=10_000)
    assert not steps.done(), "the output came only once the job had ended"
    expect(shown).to_contain_text("step 15\n", timeout=20_000)
    # newest first: a job just started is at the top of its broker's jobs, not below the fold
    expect(panel.locator(f'.jp-DeMagic-jobsBroker[data-broker="{hello.url}"] .jp-DeMagic-job').first
           ).to_have_attribute("title", steps.id)

    screenshot(page, tmp_path, "sidebar-jobs.png")  # the Jobs section
    # ocean_model takes direct calls: its worker's path says so, with the endpoint in the tooltip.
    rows(page, "backend").filter(has_text="ocean_model").click()
    path = details.locator(".jp-DeMagic-path")
    expect(path).to_have_text("direct")
    assert "Takes direct calls at tcp://127.0.0.1:" in path.get_attribute("title")
    # ocean_model does not accept code: no such button there.
    rows(page, "backend").filter(has_text="ocean_model").locator(".jp-DeMagic-caret").click()
    rows(page, "function").filter(has_text="model_info").click()
    expect(details.get_by_role("button", name="Insert call")).to_be_visible()
    expect(details.get_by_role("button", name="New %%remote cell")).to_have_count(0)

    # Polling stands by while the panel is hidden, and catches up as soon as it is shown.
    # (Times are the browser's, from the fetch wrapper of the `page` fixture.)
    page.locator('.jp-SideBar [data-id="filebrowser"]').click()
    expect(panel).to_be_hidden()
    hidden_at = page.evaluate("performance.now()")
    time.sleep(2.5)  # the refresh interval is 1 s: a visible panel would poll twice meanwhile
    shown_at = page.evaluate("performance.now()")
    assert listings_since(page, hidden_at) == [], "polled while the panel was hidden"
    tab.click()
    wait_for(lambda: listings_since(page, shown_at), timeout=5, what="a poll after showing the panel")

    # The broker that is down: when the next try is and which one it is; "Retry now" tries at
    # once and says so while it does.
    retry = error.locator(".jp-DeMagic-retry")
    countdown = re.compile(r"^Retrying automatically: attempt (\d+) in [0-5] s\. Retry now$")

    def attempt() -> int:
        match = countdown.match(retry.inner_text())
        return int(match[1]) if match else 0

    before = wait_for(attempt, timeout=10, what="the countdown to the next try")
    # "Retrying now" shows only while the try runs, which can be milliseconds: record every text it shows
    page.evaluate("""() => {
        window.deMagicRetryTexts = [];
        new MutationObserver(() => document.querySelectorAll('.jp-DeMagic-retry').forEach(
            node => window.deMagicRetryTexts.push(node.textContent))).observe(
            document.querySelector('#de-magic-backends'), {subtree: true, childList: true, characterData: true});
    }""")
    retry.get_by_role("button", name="Retry now").click()
    wait_for(lambda: attempt() > before, timeout=10, what="the countdown to the try after")
    shown = page.evaluate("window.deMagicRetryTexts")
    assert any(re.match(r"^Retrying now \(attempt \d+\)…$", text) for text in shown), shown

    # The broker that was down comes up: the panel recovers by itself (retries back off to 5 s).
    processes.start("broker", "--bind", lab.down)
    expect(error).to_have_count(0, timeout=15_000)
    expect(broker(page, lab.down)).to_contain_text("0 backends")
    expect(panel.get_by_text("No backend is connected to this broker.")).to_be_visible()

    # Brokers added in the panel are kept in the extension's settings, and can be removed again.
    # The dialog says what is wrong with an address that is not one, and takes only valid ones.
    extra = f"tcp://127.0.0.1:{free_port()}"
    broker_row.scroll_into_view_if_needed()  # the top of a tree longer than its section
    panel.locator(".jp-SidePanel-toolbar").get_by_title("Add a broker").click()
    dialog = page.locator(".jp-Dialog")
    message, accept = dialog.get_by_role("alert"), dialog.locator(".jp-mod-accept")
    address = dialog.get_by_label("ZeroMQ address of a de-magic broker")
    expect(accept).to_be_disabled()  # nothing entered yet
    address.fill("localhost:5555")
    expect(message).to_contain_text("Did you mean tcp://localhost:5555?")
    expect(accept).to_be_disabled()
    address.press("Enter")  # refused too
    address.fill("foo")
    expect(message).to_contain_text("“foo” is not a ZeroMQ address: expected tcp://host:port.")
    expect(accept).to_be_disabled()
    address.fill(extra)
    expect(message).to_have_text("")
    accept.click()
    expect(dialog).to_have_count(0)
    extra_row = broker(page, extra)
    expect(extra_row).to_have_count(1)
    expect(extra_row).to_be_in_viewport()  # scrolled to, at the end of the list
    wait_for(lambda: extra in lab.get("/lab/api/settings/de-magic:plugin").json()["raw"], timeout=5,
             what="the new broker in the saved settings")
    extra_row.hover()
    extra_row.get_by_title("Remove this broker from the list").click()
    expect(extra_row).to_have_count(0)
    # Brokers from the server (the default one) cannot be removed from the panel.
    broker_row.hover()
    expect(broker_row.get_by_title("Remove this broker from the list")).to_have_count(0)
    assert "localhost:5555" not in lab.get("/lab/api/settings/de-magic:plugin").json()["raw"]

    # and so do the jobs
    _widen_sidebar(page, 250)
    fits(panel.locator(".jp-DeMagic-jobs"))
    expect(panel.locator(".jp-DeMagic-jobs .jp-DeMagic-stacked thead").first).to_be_hidden()

    ours = [e for e in page.console_errors if "de-magic" in e.lower() or "demagic" in e.lower()]
    assert ours == [], ours


def fits(section) -> None:
    """``section`` of the narrowed sidebar needs no sideways scrolling (once the layout followed the drag)."""
    from playwright.sync_api import Error as PlaywrightError

    def width():
        try:
            scroll, client = section.evaluate("node => [node.scrollWidth, node.clientWidth]")
        except PlaywrightError as exc:  # the panel re-rendered (a listing came) between finding and measuring it
            if "not attached" not in str(exc):
                raise
            return False
        return client <= 250 and (scroll, client)

    scroll, client = wait_for(width, timeout=5, what="the sidebar to narrow")
    assert scroll <= client, (scroll, client)


def _widen_sidebar(page, width: int) -> None:
    """Drag the handle between the left sidebar and the main area."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(width + 33, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()


@pytest.fixture
def curve_lab(processes, tmp_path):
    """JupyterLab whose default broker uses CURVE with a key the server's config file does not know yet."""
    keys = curve_keys(tmp_path / "keys")
    url, log = f"tcp://127.0.0.1:{free_port()}", tmp_path / "broker.log"
    start_logged(processes, "broker", "--bind", url, "--heartbeat", str(HEARTBEAT), "--key",
                 str(keys["broker"]), "--allowed-keys", str(keys["allowed"]), log=log)
    wait_for(lambda: "listening" in log.read_text(), what="the CURVE broker to listen")
    # registered by the time the test looks: the panel waits for it
    processes.start("serve", "de_magic.demo.hello", "--name", "hello_world", "--broker", url,
                    "--heartbeat", str(HEARTBEAT), env={"DE_MAGIC_KEY": str(keys["backend"]),
                                                        "DE_MAGIC_BROKER_KEY": str(keys["broker.public"])})
    config = tmp_path / "de-magic.toml"
    config.write_text(f'# my own key\nkey = "{keys["alice"]}"\n')
    with Jupyter(tmp_path, lab=True, env={"DE_MAGIC_BROKER": url, "DE_MAGIC_CONFIG": str(config)},
                 config={"DeMagicLab": {"timeout": 1.0}}) as jupyter:
        jupyter.broker, jupyter.keys, jupyter.config = url, keys, config
        yield jupyter


def test_sidebar_adds_a_curve_broker_by_pasting_its_key(curve_lab):
    from playwright.sync_api import expect

    from de_magic.wire.security import public_key

    lab = curve_lab
    with open_page() as page:
        page.goto(lab.lab_url())
        page.locator('.jp-SideBar [data-id="de-magic-backends"]').click()
        panel = page.locator("#de-magic-backends")
        # A broker whose key is unknown says so, and how to add it; not "no answer".
        error = panel.locator(".jp-DeMagic-message.jp-mod-error")
        expect(error).to_contain_text(f"The broker at {lab.broker} requires CURVE and its public key is not known here.")
        # said once: the Jobs section only points at it
        expect(panel.locator(".jp-DeMagic-jobsNote")).to_have_text(NOT_REACHABLE)
        expect(panel.get_by_text("requires CURVE")).to_have_count(1)

        # which the panel offers to do: the dialog of "+", with the address filled in
        error.get_by_role("button", name="Add its public key…").click()
        dialog = page.locator(".jp-Dialog")
        expect(dialog.locator(".jp-Dialog-header")).to_have_text("Add the public key of a broker")
        message, accept = dialog.get_by_role("alert"), dialog.locator(".jp-mod-accept")
        expect(dialog.get_by_label("ZeroMQ address of a de-magic broker")).to_have_value(lab.broker)
        key_field = dialog.get_by_label("The broker's public key")
        expect(key_field).to_be_focused()
        key_field.fill("not a key")
        expect(message).to_contain_text("Not a public key")
        expect(accept).to_be_disabled()
        z85 = public_key(lab.keys["broker.public"]).decode()
        key_field.fill(z85)
        expect(message).to_have_text("")
        accept.click()
        expect(dialog).to_have_count(0)

        # Stored in the broker's table of the config file (the user's own lines kept), and used at once.
        expect(error).to_have_count(0, timeout=15_000)
        expect(broker(page, lab.broker)).to_contain_text("1 backend")
        text = lab.config.read_text()
        assert text.startswith("# my own key") and f'[brokers."{lab.broker}"]\nbroker_key = "{z85}"' in text
        ours = [e for e in page.console_errors if "de-magic" in e.lower() or "demagic" in e.lower()]
        assert ours == [], ours


def notebook_of(*sources: str) -> dict:
    """A notebook of code cells, as Lab saves one."""
    return {
        "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source}
                  for source in sources],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def open_notebook(page, jupyter: Jupyter, name: str, notebook: dict):
    """``notebook`` written to the Jupyter root as ``name`` and opened in Lab, its kernel idle: its code cells."""
    import json

    from playwright.sync_api import expect

    (jupyter.root / name).write_text(json.dumps(notebook))
    page.goto(jupyter.lab_url(f"lab/tree/{name}"))
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    cells = panel.locator(".jp-CodeCell")
    expect(cells).to_have_count(len(notebook["cells"]))
    expect(panel.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]")).to_have_count(1, timeout=30_000)
    return panel, cells


def run_cell(page, cells, index: int) -> None:
    """Select cell ``index`` by a click and run it with Shift+Enter."""
    cells.nth(index).locator(".cm-content").click()
    run_active_cell(page)


DONE = re.compile(r"\[\d+\]")  # a prompt once its cell has run


SLIDER_NOTEBOOK = notebook_of(
    "%load_ext de_magic",
    "%%remote hello_world\nimport time\nimport ipywidgets as w\n"
    "w.interact(lambda x: time.sleep(0.05) or print('x =', x), x=(0, 40))")


def test_a_remote_slider_shows_the_last_of_fast_changes(hello, tmp_path):
    from playwright.sync_api import expect

    jupyter = Jupyter(tmp_path, lab=True, env={"DE_MAGIC_BROKER": hello.url})
    with jupyter, open_page() as page:
        _, cells = open_notebook(page, jupyter, "slider.ipynb", SLIDER_NOTEBOOK)
        for index in range(2):
            run_cell(page, cells, index)
            expect(cells.nth(index).locator(".jp-InputArea-prompt")).to_have_text(DONE, timeout=30_000)
        handle = cells.nth(1).locator(".widget-slider .noUi-handle")
        output = cells.nth(1).locator(".widget-output")
        expect(output).to_have_text("x = 20")
        shown = [20]
        # bursts of key presses and drags, each faster than a round trip to the backend
        readout = cells.nth(1).locator(".widget-readout")
        track = cells.nth(1).locator(".widget-slider .noUi-target").bounding_box()
        for burst in range(8):
            if burst % 2 == 0:
                handle.click()
                for _ in range(5 + burst):
                    page.keyboard.press("ArrowRight" if burst % 4 == 0 else "ArrowLeft")
            else:
                page.mouse.move(track["x"] + track["width"] * 0.5, track["y"] + track["height"] / 2)
                page.mouse.down()
                for step in range(12):
                    page.mouse.move(track["x"] + track["width"] * (0.5 - 0.3 * (-1) ** burst * step / 12),
                                    track["y"] + track["height"] / 2)
                page.mouse.up()
            value = int(readout.inner_text())
            expect(output).to_have_text(f"x = {value}", timeout=10_000)
            shown.append(value)
        assert len(set(shown)) > 4, shown  # the slider did move


def test_the_stop_button_stops_a_remote_cell_in_a_line_or_three(hello, tmp_path):
    from playwright.sync_api import expect

    ticks = tmp_path / "ticks"
    loop = ("%%remote hello_world\nimport pathlib, time\n"
            f"ticks = pathlib.Path({str(ticks)!r})\n"
            "print('looping', flush=True)\n"
            "n = 0\nwhile True:\n    n += 1\n    ticks.write_text(str(n))\n    time.sleep(0.05)")
    jupyter = Jupyter(tmp_path, lab=True, env={"DE_MAGIC_BROKER": hello.url})
    with jupyter, open_page() as page:
        panel, cells = open_notebook(page, jupyter, "stop.ipynb", notebook_of("%load_ext de_magic", loop))
        run_cell(page, cells, 0)
        expect(cells.nth(0).locator(".jp-InputArea-prompt")).to_have_text(DONE, timeout=30_000)
        run_cell(page, cells, 1)
        cell = cells.nth(1)
        expect(cell.locator(".jp-OutputArea-output")).to_contain_text("looping", timeout=30_000)
        wait_for(lambda: ticks.exists() and ticks.read_text(), what="the remote loop to tick")
        assert any(w["busy"] for w in hello.workers("hello_world"))
        expect(cell.locator(".jp-InputArea-prompt")).to_have_text("[*]:")

        # The stop button of the notebook's toolbar, as a user stops a cell.
        panel.locator(".jp-NotebookPanel-toolbar [data-command='notebook:interrupt-kernel']").click()
        expect(cell.locator(".jp-InputArea-prompt")).to_have_text(DONE, timeout=20_000)
        expect(panel.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]")).to_have_count(1, timeout=20_000)
        error = cell.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        expect(error).to_contain_text("interrupted; the execution on 'hello_world' was stopped")
        text = "\n".join(error.all_inner_texts())
        ours = [line for line in text.splitlines() if line.strip()]  # the cell printed nothing to stderr
        assert len(ours) <= 3, text
        internals = [line for line in ours if re.search(r"de_magic/|zmq|Traceback \(most recent call last\)", line)]
        assert internals == [], text
        assert cell.locator(".jp-OutputArea-output").all_inner_texts()[0].strip() == "looping"

        # The remote loop stopped too: its worker is free, and the ticks stay where they are.
        wait_for(lambda: not any(w["busy"] for w in hello.workers("hello_world")), timeout=20,
                 what="the worker to be free")
        stopped_at = ticks.read_text()
        page.wait_for_timeout(1_000)  # 20 ticks of the loop, had it gone on
        assert ticks.read_text() == stopped_at


def test_remote_result_streams_a_running_jobs_output(hello, tmp_path):
    from playwright.sync_api import expect

    steps = 40  # 0.3 s apart: 12 s of job
    job = (f"%%remote hello_world --noblock\nimport time\nfor i in range({steps}):\n"
           "    print(f'step {i}', flush=True)\n    time.sleep(0.3)")
    jupyter = Jupyter(tmp_path, lab=True, env={"DE_MAGIC_BROKER": hello.url})
    with jupyter, open_page() as page:
        panel, cells = open_notebook(page, jupyter, "job.ipynb",
                                     notebook_of("%load_ext de_magic", job, "%remote_result"))
        for index in range(2):
            run_cell(page, cells, index)
            expect(cells.nth(index).locator(".jp-InputArea-prompt")).to_have_text(DONE, timeout=30_000)
        expect(cells.nth(1).locator(".jp-OutputArea-output").first).to_contain_text("as job", timeout=10_000)

        run_cell(page, cells, 2)
        follow = cells.nth(2)
        output = follow.locator(".jp-OutputArea")
        expect(output).to_contain_text("step 1\n", timeout=20_000)
        early = output.inner_text()
        # shown while the job runs: the last step is still to come, and the cell still waits for it
        assert f"step {steps - 1}" not in early, early
        expect(follow.locator(".jp-InputArea-prompt")).to_have_text("[*]:")
        # more steps come while the cell runs, each once, in order
        later = len(re.findall(r"step \d+", early)) + 1
        if later < steps - 1:
            expect(output).to_contain_text(f"step {later}\n", timeout=20_000)
            assert f"step {steps - 1}" not in output.inner_text()
        expect(output).to_contain_text(f"step {steps - 1}", timeout=30_000)
        expect(follow.locator(".jp-InputArea-prompt")).to_have_text(DONE, timeout=20_000)
        printed = re.findall(r"step (\d+)", output.inner_text())
        assert printed == [str(i) for i in range(steps)], printed
        expect(follow.locator("[data-mime-type='application/vnd.jupyter.stderr']")).to_have_count(0)
