"""Key press to redrawn chart on the Allocation page, in real Chromium, one rule against three.

Serves app.py, loads and analyses the bundled SmolLM2 in headless Debian chromium, opens the
Allocation page, then presses the arrow keys on the target-sparsity slider. The page itself
records when each key went down (a keydown listener) and the first animation frame after the
last change inside the Plotly chart (a MutationObserver), so the number is what a user sees:
Streamlit's slider debounce, the rerun, the websocket and Plotly's redraw. The same moves
are then repeated with rules overlaid (default uniform and atp: three rules drawn), in the
same run, on the same server. Prints the median and the spread of each series.

    .venv/bin/python bench/browser_timing.py [--moves 15] [--overlay uniform,atp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser import go, launch, load_default, open_app, serve, settle  # noqa: E402

# keydown time, then the frame after the chart's last DOM change (performance.now(), ms)
INSTRUMENT = """
() => {
  const marks = window.__marks = {key: 0, drawn: 0};
  const inChart = (node) => (node.closest ? node : node.parentElement)?.closest("[data-testid='stPlotlyChart']");
  document.addEventListener('keydown', () => { marks.key = performance.now(); marks.drawn = 0; }, true);
  new MutationObserver((records) => {
    if (records.some(r => inChart(r.target))) requestAnimationFrame(() => { marks.drawn = performance.now(); });
  }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}
"""


def slider_thumb(page):
    return page.get_by_test_id("stSlider").filter(has_text="Target sparsity").get_by_role("slider")


def moves(page, count: int) -> list[float]:
    """Milliseconds from key down to the redrawn chart, one per key press (right, left, ...)."""
    thumb, out = slider_thumb(page), []
    for i in range(count):
        thumb.focus()
        thumb.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        settle(page)
        page.wait_for_timeout(400)  # any late redraw lands before it is read
        marks = page.evaluate("() => window.__marks")
        if marks["drawn"] <= marks["key"]:
            raise SystemExit(f"move {i}: the chart did not redraw after the key press")
        out.append(marks["drawn"] - marks["key"])
    return out


def overlay(page, rules: list[str]) -> None:
    box = page.get_by_test_id("stMultiSelect").filter(has_text="Overlay rules")
    for rule in rules:
        box.click()
        page.keyboard.type(rule)
        page.keyboard.press("Enter")
        settle(page)
    page.keyboard.press("Escape")
    settle(page)
    legend = page.evaluate(
        "() => [...document.querySelectorAll(\"[data-testid='stPlotlyChart'] .legendtext\")].map(e => e.textContent)"
    )
    print(f"chart legend after overlaying {', '.join(rules)}: {'; '.join(legend)}")


def report(label: str, ms: list[float]) -> None:
    print(f"{label}: {len(ms)} key presses, median {statistics.median(ms):.0f} ms, "
          f"min {min(ms):.0f}, max {max(ms):.0f}")  # fmt: skip
    print("  in order (ms):", " ".join(f"{v:.0f}" for v in ms))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=15)
    parser.add_argument("--overlay", default="uniform,atp", help="rules overlaid in the second series")
    args = parser.parse_args()
    rules = [r for r in args.overlay.split(",") if r]
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp) / "streamlit.log") as url, sync_playwright() as pw:
        browser = launch(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        open_app(page, url)
        load_default(page)
        go(page, "Allocation")
        page.evaluate(INSTRUMENT)
        report("one rule (alphapruning)", moves(page, args.moves))
        overlay(page, rules)
        report(f"{len(rules) + 1} rules (alphapruning, {', '.join(rules)})", moves(page, args.moves))
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
