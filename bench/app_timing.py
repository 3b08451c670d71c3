"""Server time of one Allocation-page redraw per slider move, on the default model.

Drives the real app in-process with Streamlit's AppTest (no browser): load and analyse the
bundled SmolLM2 (spectra from the cache), open the Allocation page, then move the target
sparsity and epsilon sliders through a range of values, timing each full script rerun
(what the server spends per slider move: allocation, figure, table, downloads). Then the
same moves with other rules overlaid on the chart (`--overlay`, default uniform and atp:
three rules drawn), side by side in one run.

    .venv/bin/python bench/app_timing.py [--moves 20] [--overlay uniform,atp]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def moves(at: AppTest, count: int) -> dict[str, list[float]]:
    """Seconds of each full rerun after one slider move, per slider."""
    times: dict[str, list[float]] = {"alloc_sparsity": [], "alloc_epsilon": []}
    for i in range(count):
        for key, value in (("alloc_sparsity", 0.5 + 0.4 * i / count), ("alloc_epsilon", 0.1 + 0.4 * i / count)):
            slider = at.slider(key=key).set_value(round(value, 2))
            start = time.perf_counter()
            slider.run()
            times[key].append(time.perf_counter() - start)
            assert not at.exception, at.exception
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    for key, values in times.items():
        ms = sorted(1000 * v for v in values)
        print(f"{label} {key}: {len(ms)} moves, median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms")
        print("  in order (ms):", " ".join(f"{1000 * v:.0f}" for v in values))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--overlay", default="uniform,atp", help="rules overlaid in the second series")
    args = parser.parse_args()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600).run()
    at.button(key="load").click().run()
    at.switch_page("pages/allocation.py").run()
    assert not at.exception, at.exception
    report("one rule:", moves(at, args.moves))
    overlay = [r for r in args.overlay.split(",") if r]
    at.multiselect(key="alloc_overlay").set_value(overlay).run()
    assert not at.exception and not at.caption or "Not overlaid" not in " ".join(c.value for c in at.caption)
    report(f"{len(overlay) + 1} rules ({', '.join(['alphapruning', *overlay])}):", moves(at, args.moves))
    return 0


if __name__ == "__main__":
    sys.exit(main())
