"""Zero-shot accuracy with lm-evaluation-harness (0.4.x), on a model in memory.

    from alphaprune.zeroshot import evaluate_tasks
    scores = evaluate_tasks(model, tokenizer, ["boolq", "arc_easy"], limit=100)
    scores = evaluate_tasks(model, tokenizer, ["alphaprune_tiny"], include_path="tests/data/lmeval_tiny")
    # {"alphaprune_tiny": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.54, ...}}

The model is wrapped as lm-eval's own HF model class (HFLM) as it is, pruned or dense, never
saved first; the numbers are the ones `lm_eval --model hf` gives on the saved folder
(tests/test_zeroshot.py). lm-eval is an optional extra (`pip install alphaprune[lmeval]`).
A task whose dataset lives on the Hugging Face hub needs the network; offline it gets a
one-line message, and a local task (YAML + data, `include_path`) runs anywhere.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alphaprune.errors import UserError

PAPER_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
INSTALL = "pip install 'alphaprune[lmeval]' (lm-eval 0.4.x)"
# the settings' defaults and help, for the CLI's flags and the app's widgets alike
DEFAULT_TASKS = "paper"
TASKS_HELP = f"lm-eval task names, comma-separated; 'paper': {', '.join(PAPER_TASKS)}"
PATH_HELP = "a folder of local lm-eval task YAML files (works offline)"
LIMIT_HELP = "at most this many samples per task (default: all)"
BATCH_SIZE = 8  # requests per forward pass


def check_installed() -> None:
    """UserError naming the extra when lm-eval is missing (before any model is loaded)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise UserError(f"zero-shot accuracy needs lm-evaluation-harness, which is not installed: {INSTALL}")


def parse_tasks(text: str) -> list[str]:
    """'boolq, rte' -> ['boolq', 'rte']; 'paper' -> the AlphaPruning paper's seven tasks."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise UserError("give at least one lm-eval task name, e.g. --tasks boolq,arc_easy (or --tasks paper)")
    return [n for t in names for n in (PAPER_TASKS if t == "paper" else (t,))]


@cache
def _manager(include_path: str | None):
    """lm-eval's TaskManager, made once per folder: it indexes thousands of task YAML files (~10 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def task_manager(tasks: list[str], include_path: str | None = None):
    """lm-eval's TaskManager with `include_path`; UserError for a task name it does not know."""
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"task folder {include_path} does not exist: give a folder of lm-eval task YAML files")
    manager = _manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"lm-eval knows no task {unknown[0]!r}: check the name (`lm_eval ls tasks`) "
            "or give the folder of a local task's YAML with --tasks-path"
        )
    return manager


def load_tasks(tasks: list[str], include_path: str | None = None) -> dict:
    """lm-eval's task dict (datasets loaded), or a one-line UserError: offline, a hub task's
    dataset is looked up in the local cache only instead of ~30 s of retries."""
    from lm_eval.tasks import get_task_dict

    from alphaprune import text

    manager = task_manager(tasks, include_path)
    offline = not text._hub_reachable()
    try:
        with _offline(offline):
            return get_task_dict(tasks, manager)
    except Exception as exc:  # noqa: BLE001 (datasets raises many kinds for a missing dataset)
        where = "the Hugging Face hub is unreachable and it is not in the local cache" if offline else str(exc)[:200]
        raise UserError(
            f"cannot load the data of lm-eval task(s) {', '.join(tasks)}: {where}; run where the hub is "
            "reachable once (datasets caches it), or give a local task with --tasks-path FOLDER"
        ) from None


@contextmanager
def _offline(on: bool):
    """datasets' and huggingface_hub's offline switches, set for the block (their environment
    variables are read once, at import, so setting those now would change nothing)."""
    import datasets.config
    import huggingface_hub.constants

    switches = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                (huggingface_hub.constants, "HF_HUB_OFFLINE")]  # fmt: skip
    saved = [getattr(module, name) for module, name in switches]
    if on:
        for module, name in switches:
            setattr(module, name, True)
    try:
        yield
    finally:
        for (module, name), value in zip(switches, saved, strict=True):
            setattr(module, name, value)


def evaluate_tasks(model, tokenizer, tasks: list[str], limit: int | None = None, include_path: str | None = None,
                   batch_size: int = BATCH_SIZE) -> dict[str, dict[str, float]]:  # fmt: skip
    """{task: {metric: value}} of `model` as it is in memory (lm-eval's HFLM around it)."""
    check_installed()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    if limit is not None and limit < 1:
        raise UserError(f"the sample limit must be at least 1, got {limit}")
    task_dict = load_tasks(tasks, include_path)
    device = str(next(model.parameters()).device)
    tokenizer = copy.deepcopy(tokenizer)  # lm-eval sets a pad token on it: not on the app's shared one
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device,
              prefix_token_id=_prefix_token(tokenizer))  # fmt: skip
    was_training = model.training
    try:
        # no global reseeding (zero-shot needs none; the app's process keeps its generators)
        out = simple_evaluate(model=lm, tasks=list(task_dict.values()), limit=limit, log_samples=False,
                              task_manager=task_manager(tasks, include_path), random_seed=None,
                              numpy_random_seed=None, torch_random_seed=None)  # fmt: skip
    except UserError:
        raise
    except Exception as exc:  # lm-eval's own failures (memory, a context too long ...), in one line
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"lm-eval failed on {', '.join(tasks)}: {type(exc).__name__}: {first}") from None
    finally:
        model.train(was_training)
    return {task: _metrics(values) for task, values in out["results"].items()}


def _prefix_token(tokenizer) -> int:
    """The token lm-eval puts before a context: BOS, else EOS, else PAD, else UNK (lm-eval
    itself fails on a tokenizer without BOS and EOS)."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(tokenizer, name, None) is not None:
            return getattr(tokenizer, name)
    raise UserError("the tokenizer has no BOS, EOS, PAD or UNK token for lm-eval to put before a context")


def _metrics(values: dict) -> dict[str, float]:
    """lm-eval's 'acc,none' keys -> 'acc'; finite numbers only (its 'N/A' stderr dropped)."""
    plain = {}
    for key, value in values.items():
        name = key.split(",")[0]
        if (
            name != "sample_len"
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            plain[name] = float(value)
    return plain


@dataclass(frozen=True)
class ZeroShot:
    """What to measure: lm-eval task names, a sample limit per task, a folder of local tasks."""

    tasks: tuple[str, ...]
    limit: int | None = None
    include_path: str | None = None
    batch_size: int = BATCH_SIZE

    def check(self) -> None:
        """Before any model is loaded: lm-eval installed, every task name known, the limit sane."""
        check_installed()
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--task-limit must be at least 1, got {self.limit}")
        load_tasks(list(self.tasks), self.include_path)  # names known and data at hand (offline: one line)

    def measure(self, model, tokenizer) -> dict[str, dict[str, float]]:
        return evaluate_tasks(model, tokenizer, list(self.tasks), self.limit, self.include_path, self.batch_size)

    def before_after(self, dense, pruned, tokenizer) -> dict:
        """The run record's `accuracy`: the dense and the pruned model on the same samples."""
        before = self.measure(dense, tokenizer)
        return {**self.settings(), "before": before, "after": self.measure(pruned, tokenizer)}

    def settings(self) -> dict:
        return {"tasks": list(self.tasks), "limit": self.limit, "include_path": self.include_path}


def summary(accuracy: dict) -> list[str]:
    """One line per task and its main metric: 'boolq: acc 0.6120 -> 0.5810' (one number for one model)."""
    lines = []
    for task in accuracy.get("tasks", []):
        before = accuracy.get("before", {}).get(task, {})
        after = accuracy.get("after", {}).get(task, {})
        metric = main_metric(after or before)
        if metric is None:
            continue
        shown = f"{after[metric]:.4f}" if metric not in before else f"{before[metric]:.4f} -> {after[metric]:.4f}"
        lines.append(f"zero-shot {task}: {metric} {shown}")
    return lines


def main_metric(metrics: dict) -> str | None:
    """acc where a task has it, else its first metric that is not a standard error."""
    if "acc" in metrics:
        return "acc"
    return next((m for m in metrics if not m.endswith("_stderr")), None)
