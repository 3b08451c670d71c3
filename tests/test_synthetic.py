"""Synthetic checkpoints (alphaprune/synthetic.py): plain transformers loads them, shards and
index are right, and the writer holds about one tensor, not the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from alphaprune import synthetic
from alphaprune.errors import UserError


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype="auto")


def _stored(folder) -> dict[str, str]:
    """name -> shard file, read back from every shard's own header."""
    where = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            where.update(dict.fromkeys(f.keys(), shard.name))
    return where


def test_sharded_checkpoint_loads_in_transformers(tmp_path):
    config = synthetic.tiny_llama(layers=3)
    seen = []
    folder = synthetic.write_synthetic(
        tmp_path / "ckpt", config, seed=1, shard_bytes=60_000, progress=lambda f, m: seen.append(f)
    )
    index = json.loads((folder / synthetic.INDEX_NAME).read_text())
    stored = _stored(folder)
    shards = sorted(set(stored.values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["weight_map"] == stored  # every tensor where the index says, and nothing else
    sizes = [(folder / s).stat().st_size for s in shards]
    assert index["metadata"]["total_size"] == synthetic.checkpoint_bytes(config) < sum(sizes)
    model = _load(folder)
    assert set(stored) == set(model.state_dict())  # untied: every tensor stored, lm_head included
    for name, tensor in model.state_dict().items():
        assert tensor.dtype == torch.bfloat16, name
    skeleton = synthetic.skeleton(config)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in skeleton.state_dict().items()}
    # the model's own init: normal(0, initializer_range) matrices, ones for norms
    q = model.model.layers[0].self_attn.q_proj.weight.float()
    assert q.std().item() == pytest.approx(config.initializer_range, rel=0.1) and abs(q.mean().item()) < 0.005
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))
    assert seen[-1] == pytest.approx(1.0) and len(seen) == len(stored)


def test_tokenizer_fits_the_vocabulary_and_the_model_runs(tmp_path):
    from transformers import AutoTokenizer

    folder = synthetic.write_synthetic(tmp_path / "ckpt", synthetic.tiny_llama(), seed=0)
    assert not (folder / synthetic.INDEX_NAME).exists() and _stored(folder).keys()  # one file, as save_pretrained
    assert (folder / "generation_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("héllo wörld", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id == 1 and int(ids.max()) < len(tokenizer) <= 320
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "héllo wörld"
    logits = _load(folder)(ids).logits
    assert torch.isfinite(logits).all() and logits.shape == (1, ids.shape[1], 320)


def test_same_seed_same_bytes_and_tied_head_stored_once(tmp_path):
    config = synthetic.tiny_llama()
    config.tie_word_embeddings = True
    a = synthetic.write_synthetic(tmp_path / "a", config, seed=3)
    b = synthetic.write_synthetic(tmp_path / "b", config, seed=3)
    c = synthetic.write_synthetic(tmp_path / "c", config, seed=4)
    read = lambda f: (f / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)
    assert "lm_head.weight" not in _stored(a)  # as save_pretrained: a tied head is not stored twice
    model = _load(a)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_bad_settings_are_clear_and_leave_nothing(tmp_path):
    config = synthetic.tiny_llama()
    config.vocab_size = 100
    with pytest.raises(UserError, match="vocabulary \\(100 ids\\) is smaller than the synthetic tokenizer's \\(259\\)"):
        synthetic.write_synthetic(tmp_path / "ckpt", config)
    with pytest.raises(UserError, match="shard size must be at least 1 byte"):
        synthetic.write_synthetic(tmp_path / "ckpt", synthetic.tiny_llama(), shard_bytes=0)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def fail_third(handle, tensor, item):
        calls.append(item.name)
        if len(calls) == 3:
            raise OSError("disk full")
        handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)

    monkeypatch.setattr(synthetic, "_write_tensor", fail_third)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_synthetic(tmp_path / "ckpt", synthetic.tiny_llama())
    assert list(tmp_path.iterdir()) == []


# A checkpoint of ~285 MB whose largest tensor (the 32000 x 512 embedding) is 33 MB: a writer
# holding the model (or a whole shard) would grow by the checkpoint's size. A tiny write first
# imports everything the writer uses, so that the baseline holds the libraries.
MID_SIZE = """
import json, sys, threading, time
from transformers import LlamaConfig
from alphaprune import synthetic
config = LlamaConfig(hidden_size=512, intermediate_size=1536, num_hidden_layers=32, num_attention_heads=8,
                     num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False)
def rss():  # anonymous memory only: written file pages still in the page cache are not the writer's
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
synthetic.write_synthetic(sys.argv[1] + "-warmup", synthetic.tiny_llama())
before, samples, done = rss(), [], threading.Event()
def sample():
    while not done.is_set():
        samples.append(rss())
        time.sleep(0.005)
thread = threading.Thread(target=sample)
thread.start()
synthetic.write_synthetic(sys.argv[1], config, shard_bytes=1 << 40)
done.set()
thread.join()
peak = max(samples)
print(json.dumps({"before": before, "peak": peak, "bytes": synthetic.checkpoint_bytes(config)}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_writer_memory_is_one_tensor_not_the_model(tmp_path):
    # glibc's malloc otherwise keeps freed blocks of up to 32 MB for reuse (its mmap threshold
    # grows as big blocks are freed): RSS would then count memory the writer gave back
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MID_SIZE), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    largest = 32000 * 512 * 2
    assert got["bytes"] > 8 * largest  # the check below can tell one tensor from the model
    assert got["peak"] - got["before"] < 2.5 * largest, got
    assert (tmp_path / "ckpt" / "model.safetensors").stat().st_size > got["bytes"]  # one shard: all of it
