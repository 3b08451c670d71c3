"""Text sources, calibration / evaluation windows, the tokenization protocol (a BOS-adding
tokenizer against the reference protocol), perplexity against a hand computation."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from alphaprune import text
from alphaprune.errors import UserError
from alphaprune.perplexity import perplexity
from alphaprune.synthetic import byte_tokenizer
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


def test_tokenize_with_a_tokenizer_that_adds_nothing():
    ids = text.tokenize(text.Text("x", "abc"), tiny_tokenizer())
    assert ids.tolist() == [65, 66, 67]
    assert text.protocol(tiny_tokenizer()) == text.Protocol(True, None, None, "\n\n")
    assert not text.protocol(tiny_tokenizer()).adds_tokens


def _bos_eos_tokenizer():
    """byte_tokenizer with a post-processor that adds </s> at the end as well."""
    from tokenizers import processors

    tokenizer = byte_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return tokenizer


def test_protocol_says_what_the_tokenizer_adds():
    bos = text.protocol(byte_tokenizer())
    assert bos.as_dict() == {"special_tokens": True, "bos": 1, "eos": None, "joined": "\n\n"} and bos.adds_tokens
    assert json.loads(json.dumps(bos.as_dict())) == bos.as_dict()  # fits a run record as it is
    both = text.protocol(_bos_eos_tokenizer())
    assert (both.bos, both.eos) == (1, 2)
    ids = text.tokenize(text.Text("x", "ab"), _bos_eos_tokenizer()).tolist()
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) == 4  # once for the whole text


DOCS = [
    " = Valkyria Chronicles III = \n",
    " Senjo no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . \n",
    " The game began development in 2010 , carrying over a large portion of the work . \n" * 3,
    " = = Gameplay = = \n",
]


def _reference_perplexity(model, tokenizer, docs, seqlen):
    """The Wanda / SparseGPT evaluation loop written out: the joined text tokenised once with
    the tokenizer's defaults, consecutive windows, each window's mean loss times seqlen."""
    testenc = tokenizer("\n\n".join(docs), return_tensors="pt").input_ids  # (1, L)
    nsamples = testenc.numel() // seqlen
    nlls = []
    for i in range(nsamples):
        batch = testenc[:, i * seqlen : (i + 1) * seqlen]
        logits = model(batch).logits  # (1, seqlen, vocab)
        loss = torch.nn.CrossEntropyLoss()(logits[:, :-1, :].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


def test_perplexity_equals_the_reference_protocol_with_a_bos_tokenizer(tmp_path):
    from alphaprune.models import LoadedModel
    from alphaprune.pipeline import run_eval

    path = tmp_path / "test.raw"
    path.write_text("\n\n".join(DOCS))
    model, tokenizer = tiny_llama(), byte_tokenizer()
    loaded = LoadedModel("tiny-bos", "test", "memory", model, tokenizer, "float32", "cpu", 0.0, False)
    ours = run_eval(loaded, str(path), seqlen=32, windows=None)[0]
    with torch.no_grad():
        expected = _reference_perplexity(model, tokenizer, DOCS, 32)
    assert ours == pytest.approx(expected, rel=1e-6)


def test_calibration_windows_equal_the_reference_loader_with_a_bos_tokenizer(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(DOCS))
    tokenizer = byte_tokenizer()
    ours = text.calibration_windows(text.token_ids(str(path), tokenizer), n=4, seqlen=16, seed=2)
    trainenc = tokenizer(path.read_text(), return_tensors="pt").input_ids  # the reference's wikitext2 loader
    random.seed(2)
    starts = [random.randint(0, trainenc.shape[1] - 16 - 1) for _ in range(4)]
    assert torch.equal(ours, torch.cat([trainenc[:, i : i + 16] for i in starts]))
    assert int(text.token_ids(str(path), tokenizer)[0]) == tokenizer.bos_token_id


@pytest.mark.slow
def test_default_model_tokenizer_adds_nothing_so_its_numbers_stay(real_model):
    """SmolLM2's tokenizer adds no BOS or EOS: its ids, hence its perplexities, are today's."""
    tokenizer = real_model.tokenizer
    assert text.protocol(tokenizer).as_dict() == {"special_tokens": True, "bos": None, "eos": None, "joined": "\n\n"}
    source = text.read_text("python-docs")
    plain = tokenizer(source.text, add_special_tokens=False)["input_ids"]
    assert text.tokenize(source, tokenizer).tolist() == plain


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
