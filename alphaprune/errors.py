"""The error type for bad input that a user can fix, and how each interface words it.

Anything raised as `UserError` reaches the user as one line (CLI: stderr + exit code 2;
app: `st.error`), never as a traceback. The message says what is wrong and what to do.

A message that tells the user to change a setting names it with `setting("seqlen")`, not
with a CLI flag: each interface then speaks its own words.

    raise UserError(f"seqlen {n} exceeds the model's context; lower {setting('seqlen')}")
    str(exc)              # "... lower --seqlen"            (the CLI)
    exc.render("app")     # "... lower Sequence length"     (the web app)
"""

from __future__ import annotations

import re

# setting -> (CLI flag, the app's widget label)
SETTING_NAMES: dict[str, tuple[str, str]] = {
    "model": ("--model", "Model"),
    "device": ("--device", "Device"),
    "dtype": ("--dtype", "dtype"),
    "sparsity": ("--sparsity", "Target sparsity"),
    "allocation": ("--allocation", "Method"),
    "mapping": ("--mapping", "Mapping"),
    "ceiling": ("--max-sparsity", "Ceiling per matrix"),
    "pruner": ("--pruner", "Pruner"),
    "pattern": ("--pattern", "Pattern"),
    "refine": ("--refine", "Refine the mask"),
    "calib": ("--calib", "Calibration text"),
    "calib_samples": ("--calib-samples", "Calibration samples"),
    "seqlen": ("--seqlen", "Sequence length"),
    "seed": ("--seed", "Seed"),
    "eval": ("--eval", "Evaluation text"),
    "eval_windows": ("--eval-windows", "Evaluation windows"),
    "batch_size": ("--batch-size", "Batch size"),
    "search_budget": ("--search-budget", "Search budget (prune runs)"),
    "save": ("--save", "Folder"),
    "trust_remote_code": ("--trust-remote-code", "Trust remote code"),
    "offload": ("--offload", "Offload"),
}
INTERFACES = ("cli", "app")
_MARK = re.compile(r"«([a-z_]+)»")


def _names(name: str) -> tuple[str, str]:
    """(CLI flag, app label) of a setting: the common ones above, or a rule's or pruner's
    parameter (its spec in alphaprune/registry.py says both)."""
    if name in SETTING_NAMES:
        return SETTING_NAMES[name]
    from alphaprune.registry import params

    spec = params().get(name)
    if spec is None:
        raise KeyError(f"unknown setting {name!r}: add it to alphaprune.errors.SETTING_NAMES or to a spec")
    return spec.cli_flag, spec.label


def setting(name: str) -> str:
    """A placeholder for a setting's name inside a UserError message (see the docstring)."""
    _names(name)
    return f"«{name}»"


def render(message: str, interface: str = "cli") -> str:
    """`message` with every setting placeholder in the words of `interface`."""
    column = INTERFACES.index(interface)
    return _MARK.sub(lambda m: _word(m.group(1), column), message)


def _word(name: str, column: int) -> str:
    flag, label = _names(name)
    return flag if column == 0 else f"**{label}**"


class UserError(Exception):
    """Bad input: an unknown model, a missing file, an out-of-range setting ..."""

    def render(self, interface: str = "cli") -> str:
        return render(super().__str__(), interface)

    def __str__(self) -> str:
        return self.render("cli")
