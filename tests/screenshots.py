"""Make docs/notebook.png and docs/form.png: notebooks/basic.ipynb run in a real JupyterLab, sidebar open.

Not a test (pytest does not collect it): run it when the notebook or the sidebar changes,

    python tests/screenshots.py

(docs/sidebar*.png come from ``DE_MAGIC_SCREENSHOT=1 python -m pytest tests/test_lab_browser.py``.)
It starts its own broker and demo backends on free ports, and stops everything it started.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import ROOT, Cluster, Processes  # noqa: E402
from labtools import Jupyter  # noqa: E402
from test_lab_browser import _widen_sidebar, open_page, rows  # noqa: E402

DOCS = ROOT / "docs"


def main() -> None:
    procs = Processes()
    cluster = Cluster(procs)
    try:
        cluster.start_broker()
        cluster.start_backend("de_magic.demo.hello", "hello_world", "--allow-code")
        cluster.start_backend("de_magic.demo.ocean", "ocean_model")
        with tempfile.TemporaryDirectory() as tmp, \
                Jupyter(Path(tmp), lab=True, env={"DE_MAGIC_BROKER": cluster.url}) as jupyter:
            notebook = json.loads((ROOT / "notebooks" / "basic.ipynb").read_text())
            for cell in notebook["cells"]:  # shown as they come out of this run
                if cell["cell_type"] == "code":
                    cell["outputs"], cell["execution_count"] = [], None
            (jupyter.root / "basic.ipynb").write_text(json.dumps(notebook))
            shoot(jupyter)
    finally:
        cluster.client.close()
        procs.stop_all()


def shoot(jupyter: Jupyter) -> None:
    from playwright.sync_api import expect

    with open_page() as page:
        page.set_viewport_size({"width": 1440, "height": 1150})
        page.goto(jupyter.lab_url("lab/tree/basic.ipynb"))
        page.locator('.jp-SideBar [data-id="de-magic-backends"]').click()
        _widen_sidebar(page, 330)
        notebook = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
        expect(notebook.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]")).to_have_count(1, timeout=60_000)
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        cells = notebook.locator(".jp-CodeCell")
        # the form cell is shown filled in and run, as a user would
        form = cells.filter(has_text="%remote_ui hello_world.scale")
        expect(form.locator(".widget-text input")).to_have_count(1, timeout=120_000)
        form.locator(".widget-text input").fill("1.5, 2, 4")
        form.get_by_role("button", name="Run").click()
        expect(form.locator(".widget-output")).to_contain_text("[3.0, 4.0, 8.0]", timeout=30_000)
        expect(cells.last.locator(".jp-OutputArea-output")).to_contain_text("my_sums stopped", timeout=120_000)

        hello = rows(page, "backend").filter(has_text="hello_world")
        hello.click()
        remote = cells.filter(has_text="%%remote hello_world --push da")
        remote.locator(".jp-InputArea").click()
        remote.scroll_into_view_if_needed()
        page.evaluate("n => n.scrollIntoView({block: 'start'})", remote.element_handle())
        page.screenshot(path=str(DOCS / "notebook.png"))

        page.set_viewport_size({"width": 1440, "height": 900})
        hello.locator(".jp-DeMagic-caret").click()
        rows(page, "function").filter(has_text="slow_sum").click()
        bar_cell = cells.filter(has_text="hello.slow_sum(n=20")
        bar_cell.locator(".jp-InputArea").click()
        page.evaluate("n => n.scrollIntoView({block: 'center'})", form.element_handle())
        expect(bar_cell.locator(".widget-progress")).to_be_visible()
        assert re.search(r"20/20", bar_cell.inner_text())
        page.screenshot(path=str(DOCS / "form.png"))
    print(f"wrote {DOCS / 'notebook.png'} and {DOCS / 'form.png'}")


if __name__ == "__main__":
    main()
