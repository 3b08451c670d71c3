"""The app in a real browser: the main path on the default model, one screenshot per page.

Serves app.py with `streamlit run` on a free port and drives it with Playwright and Debian's
chromium (Playwright's own browser download does not work here; `make test` installs
chromium). Load and analyse SmolLM2, look at the spectra, move the target-sparsity slider,
prune and evaluate, see the runs; no page may show a traceback. Screenshots go to assets/.

    .venv/bin/python -m pytest tests/test_e2e.py -q

The first load dequantizes the model into the test session's cache folder (conftest.py),
so the whole test takes two to three minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the test is skipped below
    expect = sync_playwright = None

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
LONG_MS = 240_000  # load + dequantize + analyse, or prune + evaluate, on a busy machine
SHORT_MS = 60_000  # a page switch or a slider rerun


def _chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


pytestmark = [
    pytest.mark.skipif(
        _chromium() is None, reason="no chromium: `make test` installs Debian's chromium for the browser test"
    ),
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed: `make test` installs it (and Debian's chromium)"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except OSError:
        return False


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to whatever is left after 15 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # stragglers, e.g. pool workers deaf to SIGTERM
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def server(tmp_path):
    """`streamlit run app.py` on a free port (inheriting the test cache folders); its URL."""
    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "wb") as log:  # its own process group: teardown ends any worker it forked, too
        process = subprocess.Popen(
            command, cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(f"{url}/_stcore/health"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop_group(process)
        print(f"streamlit log (tail):\n{log_path.read_text()[-3000:]}")  # shown by pytest on failure


@pytest.fixture
def page(tmp_path):
    """A page of a headless Debian chromium with a fresh profile, 1400 x 1000."""
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh --user-data-dir
            executable_path=_chromium(),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _settle(page, timeout: int = SHORT_MS) -> None:
    """Wait for the current script run to finish (after a short wait for debounced widgets)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=timeout)


def _no_exception(page, where: str) -> None:
    exceptions = page.get_by_test_id("stException")
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()}"


def _go(page, title: str) -> None:
    """Switch page through the sidebar navigation (the same session, so the state stays)."""
    link = page.get_by_test_id("stSidebarNav").get_by_role("link").filter(has=page.get_by_text(title, exact=True))
    link.click()
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=SHORT_MS)
    _settle(page)


def _shot(page, name: str) -> None:
    """A screenshot once lazily loaded elements are drawn and nothing stale is left."""
    expect(page.locator("[data-testid^='stSkeleton']")).to_have_count(0, timeout=SHORT_MS)
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=SHORT_MS)
    page.wait_for_timeout(500)  # let canvases (data frames) paint
    ASSETS.mkdir(exist_ok=True)
    page.screenshot(path=str(ASSETS / f"{name}.png"), full_page=True)


def _metric(page, label: str):
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


@pytest.mark.slow
def test_main_path_in_a_browser(server, page):
    # Model: load and analyse the bundled SmolLM2.
    page.goto(server)
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=SHORT_MS)
    expect(page.get_by_role("heading", name="Model").first).to_be_visible(timeout=SHORT_MS)
    _settle(page)
    page.get_by_role("button", name="Load and analyse").click()
    expect(page.get_by_text(re.compile(r"^Analysed \d+ matrices"))).to_be_visible(timeout=LONG_MS)
    _settle(page, LONG_MS)
    expect(page.get_by_role("heading", name="smollm2-135m")).to_be_visible()
    expect(_metric(page, "Blocks")).to_have_text("30")
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    expect(page.get_by_test_id("stPageLink")).to_be_visible()
    _no_exception(page, "Model")
    _shot(page, "model")

    # Spectra: the ESD chart is drawn.
    _go(page, "Spectra")
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=SHORT_MS)
    _no_exception(page, "Spectra")
    _shot(page, "spectra")

    # Allocation: two steps left on the target sparsity; the weighted mean follows.
    _go(page, "Allocation")
    slider = page.get_by_test_id("stSlider").filter(has_text="Target sparsity")
    thumb = slider.get_by_role("slider")  # the thumb's range input (React Aria)
    before = thumb.input_value()
    thumb.focus()
    for _ in range(2):
        thumb.press("ArrowLeft")
    expect(thumb).not_to_have_value(before, timeout=SHORT_MS)
    after = float(thumb.input_value())
    assert after == pytest.approx(float(before) - 0.02, abs=1e-6)
    expect(slider.get_by_test_id("stSliderThumbValue")).to_have_text(f"{after:g}")
    _settle(page)
    expect(_metric(page, "Weighted mean")).to_have_text(f"{after:.4f}", timeout=SHORT_MS)
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
    expect(page.get_by_test_id("stExpander").filter(has_text="Ratios per matrix")).to_have_count(1)
    _no_exception(page, "Allocation")
    _shot(page, "allocation")

    # Prune & evaluate: small numbers, then perplexity before and after.
    _go(page, "Prune & evaluate")
    for label, value in (("Calibration samples", 4), ("Sequence length", 128), ("Evaluation windows", 2)):
        field = page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Tab")  # commit on blur; Enter would submit the form
        expect(field).to_have_value(str(value))
    page.get_by_role("button", name="Prune and evaluate").click()
    expect(_metric(page, "Perplexity, pruned")).to_be_visible(timeout=LONG_MS)
    _settle(page, LONG_MS)
    dense = float(_metric(page, "Perplexity, dense").inner_text())
    pruned = float(_metric(page, "Perplexity, pruned").inner_text())
    assert 1.0 < dense < pruned
    assert float(_metric(page, "Actual sparsity").inner_text()) == pytest.approx(after, abs=2e-3)
    expect(page.get_by_text(re.compile(r"calibration 4 x 128 tokens"))).to_be_visible()
    _no_exception(page, "Prune & evaluate")
    _shot(page, "prune")

    # Runs: the run just made is listed.
    _go(page, "Runs")
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=SHORT_MS)
    _no_exception(page, "Runs")
    _shot(page, "runs")
