"""The app in a real browser: the main path on the default model, one screenshot per page.

Serves app.py with `streamlit run` on a free port and drives it with Playwright and Debian's
chromium (tests/browser.py; `make test` installs chromium). Load and analyse SmolLM2, look
at the spectra, move the target-sparsity slider, prune and evaluate, see the runs; no page
may show a traceback. Screenshots go to assets/.

    .venv/bin/python -m pytest tests/test_e2e.py -q

The first load dequantizes the model into the test session's cache folder (conftest.py),
so the whole test takes two to three minutes.
"""

from __future__ import annotations

import re

import pytest

from tests.browser import (
    LONG_MS,
    NEEDS_BROWSER,
    ROOT,
    SHORT_MS,
    expect,
    fill_numbers,
    go,
    launch,
    load_default,
    metric,
    no_exception,
    open_app,
    serve,
    settle,
)

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # skipped by NEEDS_BROWSER
    sync_playwright = None

ASSETS = ROOT / "assets"
pytestmark = NEEDS_BROWSER


@pytest.fixture
def server(tmp_path):
    """`streamlit run app.py` on a free port (inheriting the test cache folders); its URL."""
    with serve(tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def page(tmp_path):
    """A page of a headless Debian chromium with a fresh profile, 1400 x 1000."""
    with sync_playwright() as playwright:
        context = launch(playwright, tmp_path / "chromium-profile")
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def _shot(page, name: str) -> None:
    """A screenshot once lazily loaded elements are drawn and nothing stale is left."""
    expect(page.locator("[data-testid^='stSkeleton']")).to_have_count(0, timeout=SHORT_MS)
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=SHORT_MS)
    page.wait_for_timeout(500)  # let canvases (data frames) paint
    ASSETS.mkdir(exist_ok=True)
    page.screenshot(path=str(ASSETS / f"{name}.png"), full_page=True)


@pytest.mark.slow
def test_main_path_in_a_browser(server, page):
    # Model: load and analyse the bundled SmolLM2.
    open_app(page, server)
    load_default(page)
    expect(page.get_by_role("heading", name="smollm2-135m")).to_be_visible()
    expect(metric(page, "Blocks")).to_have_text("30")
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    expect(page.get_by_test_id("stPageLink")).to_be_visible()
    no_exception(page, "Model")
    _shot(page, "model")

    # Spectra: the ESD chart is drawn.
    go(page, "Spectra")
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=SHORT_MS)
    no_exception(page, "Spectra")
    _shot(page, "spectra")

    # Allocation: two steps left on the target sparsity; the weighted mean follows.
    go(page, "Allocation")
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
    settle(page)
    expect(metric(page, "Weighted mean")).to_have_text(f"{after:.4f}", timeout=SHORT_MS)
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
    expect(page.get_by_test_id("stExpander").filter(has_text="Ratios per matrix")).to_have_count(1)
    no_exception(page, "Allocation")
    _shot(page, "allocation")

    # Prune & evaluate: small numbers, then perplexity before and after.
    go(page, "Prune & evaluate")
    fill_numbers(page, {"Calibration samples": 4, "Sequence length": 128, "Evaluation windows": 2})
    page.get_by_role("button", name="Prune and evaluate").click()
    expect(metric(page, "Perplexity, pruned")).to_be_visible(timeout=LONG_MS)
    settle(page, LONG_MS)
    dense = float(metric(page, "Perplexity, dense").inner_text())
    pruned = float(metric(page, "Perplexity, pruned").inner_text())
    assert 1.0 < dense < pruned
    assert float(metric(page, "Actual sparsity").inner_text()) == pytest.approx(after, abs=2e-3)
    expect(page.get_by_text(re.compile(r"calibration 4 x 128 tokens"))).to_be_visible()
    no_exception(page, "Prune & evaluate")
    _shot(page, "prune")

    # Runs: the run just made is listed.
    go(page, "Runs")
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible(timeout=SHORT_MS)
    no_exception(page, "Runs")
    _shot(page, "runs")
