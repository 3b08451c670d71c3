"""Helpers for the real-browser tests: serve app.py, launch Debian's chromium, drive pages.

    from tests.browser import NEEDS_BROWSER, serve, launch, open_app, load_default, go
    pytestmark = NEEDS_BROWSER
    with serve(tmp_path / "streamlit.log") as url, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(); open_app(page, url); load_default(page)

Playwright's own browser download does not work here; `make test` installs Debian's
chromium. The server is `streamlit run app.py` on a free port in its own process group
(teardown ends any worker it forked too); it inherits the test session's cache folders
(conftest.py) unless given another environment. Used by tests/test_e2e.py and
tests/test_concurrency.py.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the tests that use this module are skipped (NEEDS_BROWSER)
    expect = None

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # several pages at once: none may be slowed down for not being the front one
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
]
VIEWPORT = {"width": 1400, "height": 1000}
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
LONG_MS = 240_000  # load + dequantize + analyse, or prune + evaluate, on a busy machine
SHORT_MS = 60_000  # a page switch or a slider rerun


def chromium() -> str | None:
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def _missing() -> str | None:
    if expect is None:
        return "playwright is not installed: `make test` installs it (and Debian's chromium)"
    if chromium() is None:
        return "no chromium: `make test` installs Debian's chromium for the browser test"
    return None


NEEDS_BROWSER = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


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


@contextmanager
def serve(log_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run app.py` on a free port while the block runs; yields its URL.
    Its output goes to `log_path`, whose tail is printed at the end (pytest shows it on failure)."""
    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true"]
    command += ["--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=os.environ.copy() if env is None else env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
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
        print(f"streamlit log (tail):\n{log_path.read_text()[-3000:]}")


def launch(playwright, profile: Path | None = None):
    """Headless Debian chromium: a browser (new_context() gives separate sessions), or with
    `profile` a persistent context on that fresh --user-data-dir."""
    options = {"executable_path": chromium(), "headless": True, "args": CHROMIUM_FLAGS}
    if profile is None:
        return playwright.chromium.launch(**options)
    return playwright.chromium.launch_persistent_context(str(profile), viewport=VIEWPORT, **options)


def settle(page, timeout: int = SHORT_MS) -> None:
    """Wait for the current script run to finish (after a short wait for debounced widgets)."""
    page.wait_for_timeout(300)
    page.wait_for_selector(IDLE, timeout=timeout)


def no_exception(page, where: str) -> None:
    exceptions = page.get_by_test_id("stException")
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()}"


def open_app(page, url: str) -> None:
    """The app's first page (Model), connected and idle."""
    page.goto(url)
    page.wait_for_selector(CONNECTED, timeout=SHORT_MS)
    expect(page.get_by_role("heading", name="Model").first).to_be_visible(timeout=SHORT_MS)
    settle(page)


def load_default(page, wait: bool = True) -> None:
    """Press Load and analyse on the Model page (the bundled default model); with `wait`,
    until the analysis is shown."""
    page.get_by_role("button", name="Load and analyse").click()
    if wait:
        wait_loaded(page)


def wait_loaded(page) -> None:
    expect(page.get_by_text(re.compile(r"^Analysed \d+ matrices"))).to_be_visible(timeout=LONG_MS)
    settle(page, LONG_MS)


def go(page, title: str) -> None:
    """Switch page through the sidebar navigation (the same session, so the state stays)."""
    link = page.get_by_test_id("stSidebarNav").get_by_role("link").filter(has=page.get_by_text(title, exact=True))
    link.click()
    expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=SHORT_MS)
    settle(page)


def metric(page, label: str):
    """The value element of the st.metric labelled `label`."""
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def fill_numbers(page, values: dict[str, int]) -> None:
    """Type into number inputs by label (committed on blur: Enter would submit a form)."""
    for label, value in values.items():
        field = page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Tab")
        expect(field).to_have_value(str(value))
