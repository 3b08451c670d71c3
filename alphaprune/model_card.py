"""The model card (README.md) and ratio plot (sparsity.png) of a saved pruned folder.

    write_card(folder, ratios, block_ratios, measured, metadata)   # export.py calls it

The card says what a reader of a pruned checkpoint asks first: how it was pruned (every
setting of the run), how sparse each layer is (a plot and a table, targets beside the zeros
actually saved), what it costs in perplexity, which library versions wrote it, and how to
load it (transformers 4.57 and 5 both read the folder: export.both_generations) or re-prune
the dense model with the recipe in llm-compressor.
"""

from __future__ import annotations

import json
from pathlib import Path

from alphaprune import registry

CARD_FILE = "README.md"
PLOT_FILE = "sparsity.png"
# settings too long for the card's table; they stay in alphaprune_ratios.json
_LONG = ("clipped", "search", "protocol", "numerics", "block_list")


def write_card(folder: Path, ratios: dict, block_ratios, measured: dict, metadata: dict) -> None:
    """README.md and sparsity.png into `folder` (the export's temporary folder)."""
    from alphaprune.runs import library_versions

    plotted = _plot(folder / PLOT_FILE, ratios, measured)
    parts = [
        _front_matter(metadata),
        _title(metadata, measured),
        _perplexity(metadata),
        _settings(metadata),
        _sparsity(ratios, block_ratios, measured, plotted),
        _usage(),
        _versions({**library_versions(), **(metadata.get("versions") or {})}),
    ]
    (folder / CARD_FILE).write_text("\n".join(p for p in parts if p) + "\n")


def _front_matter(metadata: dict) -> str:
    tags = ["pruned", "sparse", "alphaprune", str(metadata.get("pruner", registry.WEIGHTS_ONLY))]
    return "---\nlibrary_name: transformers\ntags:\n" + "".join(f"- {t}\n" for t in tags) + "---\n"


def _title(metadata: dict, measured: dict) -> str:
    zeros = sum(measured.values()) / len(measured) if measured else None
    model, pruner = metadata.get("model", "model"), metadata.get("pruner", registry.WEIGHTS_ONLY)
    rule = metadata.get("allocation", "the given ratios")
    shown = f"{metadata['actual_sparsity']:.1%}" if "actual_sparsity" in metadata else f"{metadata.get('sparsity')}"
    lines = [f"# {model}, pruned to {shown} sparsity ({pruner}, {rule} allocation)", ""]
    lines.append("Pruned with alphaprune from the dense model; the zeros are stored as")
    lines.append("plain zeros in the weights (dense tensors), so it loads like any checkpoint.")
    if zeros is not None:
        lines.append(f"Mean zero fraction over the {len(measured)} pruned matrices: {zeros:.4f}.")
    return "\n".join(lines) + "\n"


def _perplexity(metadata: dict) -> str:
    if "ppl_before" not in metadata and "ppl_after" not in metadata:
        return ""
    rows = [("dense", metadata.get("ppl_before")), ("pruned", metadata.get("ppl_after"))]
    text = metadata.get("eval", "the evaluation text")
    lines = ["## Perplexity", "", f"On {text}, {metadata.get('eval_windows', '?')} windows of "
             f"{metadata.get('seqlen', '?')} tokens:", "", "| model | perplexity |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {_number(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines) + "\n"


def _settings(metadata: dict) -> str:
    rows = [(k, v) for k, v in metadata.items() if k not in _LONG and k != "versions" and v is not None]
    lines = ["## Settings of the run", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    extra = [k for k in _LONG if metadata.get(k)]
    if extra:
        lines += ["", f"Also recorded in `alphaprune_ratios.json` (metadata): {', '.join(extra)}."]
    return "\n".join(lines) + "\n"


def _sparsity(ratios: dict, block_ratios, measured: dict, plotted: bool) -> str:
    lines = ["## Layer-wise sparsity", ""]
    if plotted:
        lines += [f"![target and saved sparsity of every matrix]({PLOT_FILE})", ""]
    lines += ["Per block (target): " + ", ".join(f"{r:.3f}" for r in block_ratios), ""]
    lines += ["<details><summary>Every matrix: target ratio and the zero fraction saved</summary>", ""]
    lines += ["| matrix | target | saved |", "|---|---|---|"]
    lines += [f"| {n} | {r:.4f} | {_number(measured.get(n))} |" for n, r in ratios.items()]
    return "\n".join(lines + ["", "</details>"]) + "\n"


def _usage() -> str:
    return "\n".join([
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")',
        'pipeline("text-generation", model=model, tokenizer=tokenizer)("The capital of France is")',
        "```",
        "",
        "transformers 5.x and 4.57 both read this folder: config.json carries RoPE's base both as",
        "`rope_parameters.rope_theta` (5.x) and as `rope_theta` (4.x), and the tokenizer class is",
        "`PreTrainedTokenizerFast`.",
        "",
        "`recipe.yaml` re-prunes the dense model with the same layer-wise ratios in llm-compressor",
        '(`oneshot(model=dense, dataset=..., recipe="recipe.yaml")`; checked with llm-compressor 0.14',
        "by bench/llmcompressor_check.py); `alphaprune_ratios.json` holds every ratio and setting.",
    ]) + "\n"  # fmt: skip


def _versions(versions: dict) -> str:
    lines = ["## Versions", "", "| library | version |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {v} |" for k, v in versions.items()]) + "\n"


def _plot(path: Path, ratios: dict, measured: dict) -> bool:
    """Target and saved sparsity per matrix, in module order; False when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(ratios)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.bar(range(len(names)), [ratios[n] for n in names], width=1.0, color="#9ecae1", label="target")
    ax.plot(range(len(names)), [measured.get(n, float("nan")) for n in names], ".", ms=3, color="#d62728",
            label="saved zeros")  # fmt: skip
    ax.set(xlabel="matrix (model order)", ylabel="sparsity", ylim=(0, 1.02), xlim=(-0.5, len(names) - 0.5))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return True


def _number(value) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _cell(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return str(text).replace("|", "\\|")
