"""Is the tail a power law? (alphaprune/tails.py): the powerlaw package's likelihood-ratio tests
with its alpha range opened, the verdict in words, the cache, the CLI and the Spectra page.

    .venv/bin/python -m pytest tests/test_tails.py -q
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alphaprune import tails
from alphaprune.cli import main
from tests.conftest import tiny_llama, tiny_tokenizer


def _power_law(alpha: float, n: int = 3000, seed: int = 0) -> np.ndarray:
    """Samples of p(x) ~ x^-alpha for x >= 1 (inverse CDF)."""
    return (1.0 - np.random.default_rng(seed).random(n)) ** (-1.0 / (alpha - 1.0))


def test_alpha_beyond_3_is_not_clamped_and_equals_the_hill_estimate():
    x = _power_law(5.0)
    test = tails.compare_tails(x, 1.0)
    hill = 1.0 + len(x) / np.log(x).sum()  # method.md section 3, xmin 1
    assert test.alpha == pytest.approx(hill, rel=1e-6) and test.alpha > 4.5  # powerlaw's default gives 3.0
    assert test.n_tail == len(x)


def test_a_power_law_beats_an_exponential_and_an_exponential_is_told_apart():
    test = tails.compare_tails(_power_law(2.5), 1.0)
    exp = test.comparisons["exponential"]
    assert exp.R > 0 and exp.p < 0.1 and "better than an exponential" in exp.words
    assert test.verdict.startswith(("a power law", "undecided: a lognormal")), test.verdict  # never "a truncated"
    assert "truncated" not in test.verdict
    expo = 1.0 + np.random.default_rng(1).exponential(1.0, 3000)
    assert tails.compare_tails(expo, 1.0).verdict.startswith("not a power law")


def test_the_round_trip_and_the_verdicts_wording():
    power = tails.Comparison("exponential", 4.0, 1e-5)
    tie = tails.Comparison("lognormal", -0.3, 0.7)
    cutoff = tails.Comparison("truncated_power_law", -0.2, 0.6)  # nested: no significant cutoff
    test = tails.TailTest(2.5, 1.0, 100, {"exponential": power, "lognormal": tie, "truncated_power_law": cutoff})
    assert test.verdict == "undecided: a lognormal fits as well as the power law"
    clean = tails.TailTest(2.5, 1.0, 100, {"exponential": power, "truncated_power_law": cutoff})
    assert clean.verdict == "a power law: it fits better than every alternative tested"
    assert tails.TailTest.from_dict(test.to_dict()) == test
    worse = tails.TailTest(2.5, 1.0, 100, {"lognormal": tails.Comparison("lognormal", -3.0, 1e-3)})
    assert worse.verdict.startswith("not a power law: a lognormal fits better")


@pytest.fixture
def tiny_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    folder = tmp_path / "model"
    tiny_llama(layers=1).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_cli_compare_tails_adds_the_tests_and_caches_them(tiny_folder, tmp_path, monkeypatch):
    out = tmp_path / "a.csv"
    assert main(["analyze", "--model", str(tiny_folder), "--compare-tails", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    prunable = frame[frame["prunable"]]
    assert prunable["tail_verdict"].notna().all() and frame[~frame["prunable"]]["tail_verdict"].isna().all()
    assert {"R_lognormal", "p_lognormal", "R_exponential", "R_truncated_power_law"} <= set(frame.columns)
    calls = []
    monkeypatch.setattr(tails, "compare_tails", lambda *a: calls.append(a))
    assert main(["analyze", "--model", str(tiny_folder), "--compare-tails", "--out", str(out)]) == 0
    assert calls == []  # every test came from the cache
    assert pd.read_csv(out)["tail_verdict"].equals(frame["tail_verdict"])


def test_the_spectra_page_shows_the_verdict(tiny_folder):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.radio(key="model_source").set_value("Hub id, folder or .gguf path").run()
    at.text_input(key="model_spec").set_value(str(tiny_folder)).run()
    at.button(key="load").click().run()
    at.switch_page("pages/spectra.py").run()
    at.button(key="tail_test").click().run()
    assert not at.exception
    shown = " ".join(i.value for i in at.info)
    assert any(word in shown for word in ("a power law", "not a power law", "undecided"))
