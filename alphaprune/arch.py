"""Where a transformer keeps its decoder blocks and their weight matrices.

The one place in the library that knows model layouts. Instead of sniffing model names
(`model.model.layers` for LLaMA, `model.transformer.h` for GPT-2, ...), it looks for the
largest `nn.ModuleList` of identical modules: that is the stack of decoder blocks in
every causal LM of transformers (LLaMA/Mistral/Qwen2/Gemma/Phi, GPT-2, OPT, GPT-NeoX).

    from alphaprune.arch import find_blocks, prunable_matrices, display_matrices
    blocks = find_blocks(model)            # Blocks(path="model.layers", modules=[...])
    mats = prunable_matrices(model)        # one MatrixRef per Linear/Conv1D in a block
    mats[0].tensor_name                    # "model.layers.0.self_attn.q_proj.weight"

A model on the meta device (alphaprune.checkpoint.skeleton) works the same: the refs then
give names and shapes, and the weights are read from the checkpoint by `tensor_name`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alphaprune.errors import UserError

try:  # GPT-2 style layers store their weight as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a hard dependency
    Conv1D = ()


@dataclass(frozen=True)
class Blocks:
    """The decoder blocks of a model and where they live (a `named_modules()` path)."""

    path: str
    modules: tuple[nn.Module, ...]

    def prefix(self, index: int) -> str:
        """How the names of block `index`'s modules and tensors start: 'model.layers.3.'."""
        return f"{self.path}.{index}." if self.path else f"{index}."

    def contains(self, name: str) -> bool:
        """Whether a module or tensor name lies inside the decoder stack."""
        return bool(self.path) and (name == self.path or name.startswith(self.path + "."))


@dataclass(frozen=True, eq=False)
class MatrixRef:
    """One weight matrix of a model, seen as (out_features, in_features)."""

    name: str  # module path as in model.named_modules()
    block: int  # decoder block index; -1 for embeddings and the LM head
    kind: str  # short role inside the block: "q_proj", "mlp.c_proj", "embed_tokens" ...
    module: nn.Module
    transposed: bool  # True for Conv1D, whose .weight is (in, out)
    prunable: bool  # False for embeddings and the LM head (display only)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.module.weight.shape[:2]
        return (cols, rows) if self.transposed else (rows, cols)

    @property
    def in_attention(self) -> bool:
        """Whether the matrix belongs to its block's attention (self_attn, attn, self_attention,
        attention: the names transformers' decoders give that submodule), not to its MLP."""
        parent = self.name.rsplit(".", 2)[-2].lower() if self.name.count(".") >= 1 else ""
        return "attn" in parent or "attention" in parent

    @property
    def tensor_name(self) -> str:
        """The weight's key in model.state_dict() (and in a checkpoint's files)."""
        return f"{self.name}.weight"

    @property
    def params(self) -> int:
        return int(self.module.weight.numel())

    def weight(self) -> torch.Tensor:
        """The weight as an (out, in) view sharing storage with the model."""
        w = self.module.weight.data
        return w.t() if self.transposed else w


def _is_matrix_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (bool(Conv1D) and isinstance(module, Conv1D))


def find_blocks(model: nn.Module) -> Blocks:
    """The largest ModuleList whose children all share one class (the decoder stack)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if not any(_is_matrix_layer(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if best is None or size > best[0]:
            best = (size, path, module)
    if best is None:
        raise UserError(
            f"cannot find decoder blocks in {type(model).__name__}: "
            "alphaprune supports transformer causal LMs with a stack of identical blocks"
        )
    return Blocks(path=best[1], modules=tuple(best[2]))


def _kinds(names: list[str]) -> list[str]:
    """Shortest unique suffix of each relative path: 'q_proj', but 'attn.c_proj' vs 'mlp.c_proj'."""
    kinds = []
    for name in names:
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if sum(1 for other in names if other == suffix or other.endswith("." + suffix)) == 1:
                kinds.append(suffix)
                break
        else:  # pragma: no cover - two identical names cannot occur in one module tree
            kinds.append(name)
    return kinds


def prunable_matrices(model: nn.Module) -> list[MatrixRef]:
    """Every Linear/Conv1D inside the decoder blocks, in block order."""
    blocks = find_blocks(model)
    refs: list[MatrixRef] = []
    for index, block in enumerate(blocks.modules):
        named = [(n, m) for n, m in block.named_modules() if _is_matrix_layer(m)]
        prefix = blocks.prefix(index)
        for (rel, module), kind in zip(named, _kinds([n for n, _ in named]), strict=True):
            refs.append(
                MatrixRef(
                    name=prefix + rel,
                    block=index,
                    kind=kind,
                    module=module,
                    transposed=not isinstance(module, nn.Linear),
                    prunable=True,
                )
            )
    return refs


def display_matrices(model: nn.Module) -> list[MatrixRef]:
    """Embeddings and the LM head: analysed for display, never pruned.

    A head tied to the input embedding shares its storage and is listed once.
    """
    blocks = find_blocks(model)
    seen: set[int] = set()
    refs: list[MatrixRef] = []
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        is_embedding = isinstance(module, nn.Embedding) and not blocks.contains(name)
        if not (is_embedding or (head is not None and module is head)):
            continue
        weight = getattr(module, "weight", None)
        if weight is None or weight.dim() != 2 or id(weight) in seen:
            continue
        seen.add(id(weight))
        refs.append(
            MatrixRef(
                name=name,
                block=-1,
                kind=name.rsplit(".", 1)[-1],
                module=module,
                transposed=not isinstance(module, (nn.Linear, nn.Embedding)),
                prunable=False,
            )
        )
    return refs


def all_matrices(model: nn.Module) -> list[MatrixRef]:
    """Display matrices first (embeddings), then the prunable ones, then nothing else."""
    return display_matrices(model) + prunable_matrices(model)
