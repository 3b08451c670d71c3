"""Text sources, calibration / evaluation windows, perplexity against a hand computation."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from alphaprune import text
from alphaprune.errors import UserError
from alphaprune.perplexity import perplexity
from tests.conftest import tiny_llama, tiny_tokenizer


def test_python_docs_is_offline_text():
    t = text.read_text("python-docs")
    assert len(t.text) > 100_000 and "for" in t.text and len(t.digest) == 16


def test_file_source_normalises_line_ends(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\ntwo\rthree\n")
    assert text.read_text(str(path)).text == "one\ntwo\nthree\n"


@pytest.mark.parametrize(
    "content,match",
    [(b"", "empty"), (b"  \n\t", "empty"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=match):
        text.read_text(str(path))


def test_unknown_source():
    with pytest.raises(UserError, match="neither python-docs nor wikitext2 nor an existing file"):
        text.read_text("no-such-corpus")


def _no_network(monkeypatch):
    """The hub unreachable, as on this machine, whatever network the test runs on."""

    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(text.socket, "create_connection", refuse)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


def test_wikitext2_offline_is_a_clear_error(monkeypatch):
    pytest.importorskip("datasets")
    _no_network(monkeypatch)
    with pytest.raises(UserError, match="cannot reach the Hugging Face hub for wikitext2; pass a local copy"):
        text.read_text("wikitext2")


def test_hub_probe_is_unsure_rather_than_wrong(monkeypatch):
    _no_network(monkeypatch)
    assert not text._hub_reachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # requests may get through a proxy
    assert text._hub_reachable()
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_ENDPOINT", "hub.example")  # no scheme: no host to probe
    assert text._hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:notaport")
    assert text._hub_reachable()


def test_a_source_is_checked_without_reading_it(tmp_path):
    text.check_source("python-docs")
    text.check_source("wikitext2")  # no network needed to know the name
    (tmp_path / "a.txt").write_text("x")
    text.check_source(str(tmp_path / "a.txt"))
    with pytest.raises(UserError, match="neither python-docs nor wikitext2 nor an existing file"):
        text.check_source(str(tmp_path / "missing.txt"))


def test_calibration_windows_follow_the_reference_draws():
    ids = torch.arange(1000)
    windows = text.calibration_windows(ids, n=5, seqlen=64, seed=3)
    random.seed(3)
    starts = [random.randint(0, 1000 - 64 - 1) for _ in range(5)]
    assert windows.shape == (5, 64)
    assert [int(w[0]) for w in windows] == starts


def test_evaluation_windows_first_w():
    ids = torch.arange(1000)
    assert text.evaluation_windows(ids, 100).shape == (10, 100)
    w = text.evaluation_windows(ids, 100, windows=3)
    assert w.shape == (3, 100) and int(w[2, 0]) == 200


def test_too_short_text():
    with pytest.raises(UserError, match="too short"):
        text.calibration_windows(torch.arange(50), 2, 64)
    with pytest.raises(UserError, match="too short"):
        text.evaluation_windows(torch.arange(50), 64)


def test_tokenize_adds_no_special_tokens():
    ids = text.tokenize(text.Text("x", "abc"), tiny_tokenizer())
    assert ids.tolist() == [65, 66, 67]


def _hand_perplexity(model, windows):
    nll, count = 0.0, 0
    for window in windows:
        logits = model(window[None]).logits[0]  # (seqlen, vocab)
        logp = F.log_softmax(logits.double(), dim=-1)
        for t in range(len(window) - 1):
            nll -= float(logp[t, window[t + 1]])
            count += 1
    return math.exp(nll / count)


def test_perplexity_matches_hand_computation_and_batching():
    model = tiny_llama()
    windows = torch.randint(0, 300, (5, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _hand_perplexity(model, windows)
    seen = []
    got = perplexity(model, windows, batch_size=1, progress=lambda f, m: seen.append(f))
    assert got == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, windows, batch_size=3) == pytest.approx(expected, rel=1e-5)
    assert seen[-1] == 1.0 and len(seen) == 5
