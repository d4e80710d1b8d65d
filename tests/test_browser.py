"""JupyterLab in headless Chromium, as a learner: Run All of notebooks 00 and 02, then no red text anywhere.

Chromium is Debian's (``scripts/setup_browser.sh``); Playwright drives it without downloading a
browser. JupyterLab starts as ``make lab`` starts it (kernels over IPC sockets). After each Run All,
no output may be stderr (Jupyter draws stderr and errors in red) nor hold a traceback; notebook 02
must show its histograms and the panel. The screenshots are kept under ``test-artifacts/``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from labkit.serve.deployment import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SMALL = {
    "duration_s": 6.0,
    "engine_duration_s": 5.0,
    "sweep_rates": [2.0],
    "sweep_duration_s": 4.0,
    "max_tokens": 32,
    "learner_id": "browser",
}


@pytest.fixture
def jupyter_lab(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("LABKIT_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is missing: run scripts/setup_browser.sh (apt-get install chromium)")
        pytest.skip("Chromium is not installed (scripts/setup_browser.sh)")
    workdir = tmp_path / "lab"
    workdir.mkdir()
    from papermill.iorw import load_notebook_node, write_ipynb
    from papermill.parameterize import parameterize_notebook

    book = load_notebook_node(str(ROOT / "notebooks" / "02_load_exercise.ipynb"))
    book = parameterize_notebook(book, {**SMALL, "output_dir": str(workdir / "out")})
    write_ipynb(book, str(workdir / "load.ipynb"))
    book = load_notebook_node(str(ROOT / "notebooks" / "00_environment_check.ipynb"))
    book = parameterize_notebook(book, {"learner_id": "browser", "output_dir": str(workdir / "out")})
    write_ipynb(book, str(workdir / "environment.ipynb"))
    from labkit.cluster import kill_leftovers, list_session_dirs

    before = list_session_dirs()
    port = _free_port()
    token = secrets.token_hex(16)  # never printed or saved
    # Render every cell (JupyterLab 4 otherwise draws only the cells on screen) and skip the news prompt.
    settings = workdir / ".settings"
    for ext, name, body in (
        ("notebook-extension", "tracker", '{"windowingMode": "none"}'),
        ("apputils-extension", "notification", '{"fetchNews": "false"}'),
    ):
        folder = settings / "@jupyterlab" / ext
        folder.mkdir(parents=True)
        (folder / f"{name}.jupyterlab-settings").write_text(body)
    # a workspace of its own: JupyterLab would otherwise reopen the tabs of an earlier session
    env = {
        **os.environ,
        "JUPYTER_TOKEN": token,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(workdir / ".workspaces"),
    }
    log = open(tmp_path / "jupyter.log", "w")  # noqa: SIM115 - closed in the teardown below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.root_dir={workdir}",
            "--ServerApp.open_browser=False",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--KernelManager.transport=ipc",  # as `make lab`
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start")
    yield base, token, workdir
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    for folder in list_session_dirs() - before:  # only clusters the notebook started
        kill_leftovers(folder)


_RED = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"  # stderr and errors


def _run_all(page, base: str, token: str, name: str, timeout_s: float) -> bool:
    """Open a notebook, Run All Cells, wait until the last code cell has run (or a cell raised)."""
    page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=300_000)
    page.wait_for_selector(".jp-Notebook", timeout=300_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-DebuggerBugButton, .jp-KernelStatus", timeout=300_000)
    time.sleep(3)  # let the kernel connect
    page.click("text=Run", timeout=30_000)
    page.click("text=Run All Cells", timeout=30_000)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = page.evaluate(
            """() => { const p = [...document.querySelectorAll(
                           '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')];
                       return p.length > 0 && /\\[\\d+\\]/.test(p[p.length - 1].textContent); }"""
        )
        if done or page.locator(f"{_RED}:has-text('Traceback')").count():
            return bool(done)
        time.sleep(2)
    return False


def _red_texts(page) -> list[str]:
    return [text[:500] for text in page.locator(_RED).all_inner_texts()]


def test_learner_runs_notebooks_in_jupyterlab_and_sees_no_red_text(jupyter_lab):
    from playwright.sync_api import sync_playwright

    base, token, workdir = jupyter_lab
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            done = _run_all(page, base, token, "environment.ipynb", timeout_s=600)
            page.screenshot(path=str(artifacts / "jupyterlab-environment.png"), full_page=False)
            assert done, "notebook 00 did not finish within 10 minutes (a hang guard)"
            assert _red_texts(page) == [], "notebook 00 showed red output"
            assert page.locator(".jp-OutputArea-output:has-text('learner id: browser')").count() == 1

            done = _run_all(page, base, token, "load.ipynb", timeout_s=1800)
            images = page.locator(".jp-OutputArea-output img")
            assert images.count() >= 4, f"the histograms did not render; red output: {_red_texts(page)}"
            panel = page.locator(".labkit-load-panel")
            panel.first.scroll_into_view_if_needed()
            assert panel.first.is_visible(), "the widget panel is not visible"
            assert page.locator(".labkit-load-panel button:has-text('Run')").first.is_visible()
            page.screenshot(path=str(artifacts / "jupyterlab-load-panel.png"), full_page=False)
            page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
            page.screenshot(path=str(artifacts / "jupyterlab-load-notebook.png"), full_page=False)
            assert done, "the notebook did not finish within 30 minutes (a hang guard)"
            assert page.locator(".jp-OutputArea-output:has-text('Traceback')").count() == 0, "a cell raised"
            assert _red_texts(page) == [], "notebook 02 showed red output"
            # The panel after Run All: the last cell stopped the cluster. Pressing Run says so in one
            # line and what to do, instead of a Python error.
            page.locator(".labkit-load-panel button:has-text('Run')").first.click()
            status = page.locator(".labkit-load-panel :text('does not answer')")
            status.first.wait_for(timeout=60_000)
            text = status.first.inner_text()
            assert "cluster was stopped" in text and "Run the notebook from the top" in text, text
            assert page.locator(".labkit-load-panel :text('local variable')").count() == 0
        finally:
            page.screenshot(path=str(artifacts / "jupyterlab-last.png"))
            browser.close()
