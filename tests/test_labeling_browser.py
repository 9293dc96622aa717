"""Notebook 03 in a real browser: JupyterLab 4 on loopback, Debian's Chromium driven by Playwright.

Runs the notebook (Run All), clicks label buttons, types shortcut keys into the Keys box, writes a
reference completion in free-text mode, and checks that every answer landed in the workspace.
Skipped where /usr/bin/chromium or playwright is missing (.ci/run installs chromium with apt).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

import workbench

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ANNOTATOR = "browser-tester"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(fn, timeout: float, what: str):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last is not None and last is not False and not (isinstance(last, int) and last == 0):
                return last
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with a token, serving a copy of notebook 03 over a small workspace."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api")
    ws, root, cfg = tmp_path / "workspace", tmp_path / "lab", tmp_path / "jupyter-config"
    root.mkdir()
    (cfg / "labconfig").mkdir(parents=True)
    # no news/update pop-up over the notebook
    (cfg / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    shutil.copy(REPO / "notebooks" / "03_label_items.ipynb", root / "03_label_items.ipynb")
    con = workbench.connect(ws)
    n = 12
    texts = ["I was charged twice, check my invoice", "Where is my package? tracking is stuck",
             "Please refund my order", "The app crashes with an error", "Locked out: password reset fails",
             "Please cancel my subscription"]
    workbench.write_table(con, "label_pool", pd.DataFrame({
        "item_id": [f"pool:{i}" for i in range(n)], "text": [texts[i % 6] + f" (#{i})" for i in range(n)],
        "region": ["north", "south", "east", "west"] * 3, "age_band": ["18-29", "30-44", "45-64", "65+"] * 3}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=str(REPO), WORKBENCH_HOME=str(ws), WORKBENCH_ANNOTATOR=ANNOTATOR,
               JUPYTER_CONFIG_DIR=str(cfg), IPYTHONDIR=str(tmp_path / "ipython"))
    log = open(tmp_path / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
         "--ServerApp.open_browser=False"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200,
                  120, "JupyterLab to start")
        yield {"url": f"{base}/lab/tree/03_label_items.ipynb?token={token}", "con": con, "log": tmp_path / "jupyter.log"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its kernel (started in its own session)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        con.close()


def _labels(con, **where) -> pd.DataFrame:
    df = con.execute("select * from labels where annotator = ? order by created_at, label_id", [ANNOTATOR]).df()
    for k, v in where.items():
        df = df[df[k] == v]
    return df


def _exactly(con, n: int, **where):
    """The matching rows once there are exactly n of them, else None (for _wait_for)."""
    df = _labels(con, **where)
    return df if len(df) == n else None


def test_label_in_jupyterlab_with_clicks_and_keys(lab):
    from playwright.sync_api import expect, sync_playwright

    con = lab["con"]
    started = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab["url"])
            page.locator(".jp-Notebook").wait_for(timeout=90_000)
            _wait_for(lambda: "Idle" in " ".join(page.locator(".jp-StatusBar-Widget").all_inner_texts()), 90,
                      "the kernel to be idle")
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()

            # the widget renders once the notebook reaches it (after the simulated annotators)
            button = page.get_by_role("button", name="1 billing", exact=True)
            expect(button).to_be_visible(timeout=180_000)
            widget = page.locator(".wb-labeling")
            expect(widget.get_by_text(ANNOTATOR).first).to_be_visible()
            first_item = _wait_for(lambda: con.execute(
                "select count(*) from label_assignments where annotator = ?", [ANNOTATOR]).fetchall()[0][0], 30,
                "assignments")
            assert first_item

            button.click()
            got = _wait_for(lambda: _exactly(con, 1, kind="label"), 60,
                            "the clicked label in the workspace")
            assert got["value"].tolist() == ["billing"] and got["source"].tolist() == ["widget"]
            expect(widget.get_by_text("you: 1 done", exact=False)).to_be_visible(timeout=30_000)

            code_cells = page.locator(".jp-CodeCell").count()
            keys = widget.get_by_placeholder("click here, then type", exact=False)
            keys.click()
            page.keyboard.press("2")
            _wait_for(lambda: _labels(con, kind="label")["value"].tolist() == ["billing", "refund"], 60,
                      "the label typed with key 2")
            expect(widget.get_by_text("you: 2 done", exact=False)).to_be_visible(timeout=30_000)
            page.keyboard.press("s")
            _wait_for(lambda: _exactly(con, 1, kind="skip"), 60, "the skip typed with key s")
            page.keyboard.press("u")
            _wait_for(lambda: _exactly(con, 1, kind="retraction"), 60, "the undo typed with key u")
            undone = _labels(con, kind="retraction")["retracts"].iloc[0]
            assert undone == _labels(con, kind="skip")["label_id"].iloc[0]

            # the keys reached the widget only: JupyterLab's command mode would have made a cell a heading
            assert page.locator(".jp-CodeCell").count() == code_cells

            # free-text mode (the simulated annotators are there too: the notebook ran with 3)
            page.get_by_role("button", name="Free text", exact=True).click()
            area = widget.get_by_placeholder("write the reference completion", exact=False)
            expect(area).to_be_visible(timeout=30_000)
            area.fill("Sorry about that: I have refunded the double charge.")
            widget.get_by_role("button", name="Submit text").click()
            text = _wait_for(lambda: _exactly(con, 1, label_set="reference_completion"), 60, "the reference completion")
            assert text["value"].item() == "Sorry about that: I have refunded the double charge."
        except Exception:
            page.screenshot(path=str(lab["log"].with_name("failure.png")))
            print(lab["log"].read_text()[-4000:])
            raise
        finally:
            browser.close()
    sims = con.execute("select count(distinct annotator) from labels where source = 'simulated'").fetchall()[0][0]
    assert sims == 3
    assert len(_labels(con)) == 5  # billing, refund, skip, retraction, text: nothing else reached the kernel
    print(f"browser test: {time.time() - started:.1f}s from page load to the last assertion")
