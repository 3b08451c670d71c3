"""The registry of allocation rules and pruners (alphaprune/registry.py): specs well formed,
found by listing their packages, the only place that knows method names, and the single
source of every parameter's default and range (CLI --help, the app's widgets, validation).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from alphaprune import allocation as alloc
from alphaprune import registry
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError, render, setting

ROOT = Path(__file__).resolve().parents[1]
SPEC_FILES = {"registry.py"}  # and everything under alphaprune/rules/ and alphaprune/pruning/


def test_every_spec_is_well_formed():
    for spec in (*registry.rules().values(), *registry.pruners().values()):
        assert spec.name and "\n" not in spec.summary and len(spec.summary) < 100, spec.name
        assert spec.needs in registry.NEEDS, spec.name
        for p in spec.params:
            assert p.help and p.label, p.name
            if p.default is not None:
                assert p.check(p.default) == p.default, p.name  # the default is in its own range
    for rule in registry.rules().values():
        assert set(rule.granularities) <= set(alloc.MAPPINGS) and "block" in rule.granularities, rule.name
        assert set(rule.statistic_params) <= set(rule.param_names()), rule.name
        assert (rule.statistic is None) == (rule.needs != registry.ACTIVATIONS), rule.name
    for pruner in registry.pruners().values():
        assert (pruner.mask is None) != (pruner.update is None), pruner.name  # exactly one of the two


def test_specs_are_found_by_listing_the_package(tmp_path, monkeypatch):
    """Adding a rule is adding one module: a package with one SPEC module is all it takes."""
    pkg = tmp_path / "myrules"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "ramp.py").write_text(
        "from alphaprune.registry import WEIGHTS, Rule\n"
        "SPEC = Rule(name='ramp', summary='a test rule', needs=WEIGHTS, allocate=lambda given: None, order=5)\n"
    )
    (pkg / "helper.py").write_text("X = 1\n")  # a module without a SPEC is no rule
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry._load("myrules", registry.Rule)
    assert list(found) == ["ramp"] and found["ramp"].summary == "a test rule"


def _method_comparisons(path: Path, names: set[str]) -> list[str]:
    """Comparisons of a value with a rule's or pruner's name (== "owl", in ("wanda", ...))."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in (node.left, *node.comparators):
            values = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            for v in values:
                if isinstance(v, ast.Constant) and v.value in names:
                    hits.append(f"{path.relative_to(ROOT)}:{node.lineno} compares with {v.value!r}")
    return hits


def test_no_code_outside_the_specs_compares_method_names():
    names = set(registry.rules()) | set(registry.pruners())
    files = [*(ROOT / "alphaprune").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    outside = [f for f in files if f.parent.name not in ("rules", "pruning") and f.name not in SPEC_FILES]
    hits = [hit for f in outside for hit in _method_comparisons(f, names)]
    assert hits == []


def _name_literals(path: Path, names: set[str]) -> set[str]:
    """The method names a file spells as string constants, docstrings aside."""
    tree = ast.parse(path.read_text())
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in docs
    }


# Names spelled outside the specs on purpose: the shared maths labels the results of the
# rules whose formulas it holds; FARMS is also a metric (the analysis' "farms" option and key);
# the app opens on AlphaPruning.
NAMED_ON_PURPOSE = {
    "alphaprune/allocation.py": {"uniform", "alphapruning", "owl", "list"},
    "alphaprune/analysis.py": {"farms"},
    "pages/allocation.py": {"farms"},
    "alphaprune/ui/session.py": {"alphapruning"},
}


def test_defaults_name_methods_through_the_registry():
    names = {*registry.rules(), *registry.pruners(), *registry.refiners()}
    files = [*(ROOT / "alphaprune").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]
    outside = [f for f in files if f.parent.name not in ("rules", "pruning") and f.name not in SPEC_FILES]
    spelled = {str(f.relative_to(ROOT)): _name_literals(f, names) for f in outside}
    assert {f: got for f, got in spelled.items() if got} == NAMED_ON_PURPOSE
    assert registry.BASELINE in registry.rules() and registry.DEFAULT_PRUNER in registry.pruners()
    assert registry.pruner(registry.WEIGHTS_ONLY).needs == registry.WEIGHTS


def test_cli_defaults_are_the_config_defaults():
    from alphaprune.cli import _build_parser

    args = vars(_build_parser().parse_args(["prune"]))
    fields = ("sparsity", "allocation", "mapping", "pruner", "refine", "pattern", "calib", "calib_samples",
              "seqlen", "seed", "eval", "eval_windows", "batch_size", "search_budget")  # fmt: skip
    assert {f: args[f] for f in fields} == {f: getattr(PruneConfig(), f) for f in fields}
    assert args["max_sparsity"] == PruneConfig().ceiling


def _help(command: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "alphaprune", command, "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return " ".join(out.stdout.split())  # argparse wraps lines


def _specs() -> dict:
    """Every setting with a spec: the rules' and pruners' parameters, and the ceiling."""
    from alphaprune.allocation import CEILING

    return {**registry.params(), CEILING.name: CEILING}


def test_cli_help_shows_every_parameter_with_its_spec_default_and_range():
    from alphaprune.cli import param_help

    text = _help("prune")
    for name, p in _specs().items():
        assert p.cli_flag in text, name
        default = param_help(p, []).rsplit("; ", 2)[-2:]  # [range, "default X"], as the spec words them
        assert "; ".join(default) in text, (name, default)
    assert "[0, 1] or auto; default 0.3" in text  # epsilon's, written out: the check above is not vacuous
    for name in (*registry.rules(), *registry.pruners()):
        assert name in text


def _widgets_script():
    import streamlit as st

    from alphaprune import registry
    from alphaprune.allocation import CEILING
    from alphaprune.ui.widgets import param_widget

    for p in (*registry.params().values(), CEILING):
        param_widget(st, p, None, "w_", options=("alpha_peak", "alpha_ks") if p.kind == "text" else ())


def test_app_widgets_show_the_spec_defaults_and_ranges():
    at = AppTest.from_function(_widgets_script).run(timeout=30)
    assert not at.exception
    checked = set()
    for name, p in _specs().items():
        if p.kind in ("float", "int") and p.low is not None and p.high is not None:
            slider = at.slider(key=f"w_{name}")
            low = p.low + p.step if p.low_open else p.low  # an open bound is not offered
            assert (slider.min, slider.max, slider.value) == pytest.approx((low, p.high, p.default)), name
            assert slider.label == p.label, name
            p.check((int if p.kind == "int" else float)(slider.min))  # a valid setting, else UserError
        elif p.kind in ("text", "choice"):
            box = at.selectbox(key=f"w_{name}")
            assert box.value == p.default and box.label == p.label, name
            if p.kind == "choice":
                assert tuple(box.options) == p.choices, name
        elif p.kind == "floats":  # a list, typed: empty without a default, as the CLI's
            box = at.text_input(key=f"w_{name}")
            assert box.value == "" and box.label == p.label and p.range_text in box.help, name
        checked.add(name)
    assert checked == set(_specs())


def _list_script():
    import streamlit as st

    from alphaprune import registry
    from alphaprune.ui.widgets import param_widget

    st.session_state["typed"] = param_widget(st, registry.param("block_list"), (0.5, 0.6), "w_")


def test_the_app_types_a_list_as_the_cli_parses_it():
    at = AppTest.from_function(_list_script).run(timeout=30)
    assert at.text_input(key="w_block_list").value == "0.5, 0.6" and at.session_state["typed"] == (0.5, 0.6)
    at.text_input(key="w_block_list").input("0.2,0.8, 0.4").run(timeout=30)
    assert at.session_state["typed"] == (0.2, 0.8, 0.4) and not at.error
    for bad, needle in (("0.2, x", "comma-separated numbers in [0, 1]"), ("0.2, 1.5", "must be a number in [0, 1]")):
        at.text_input(key="w_block_list").input(bad).run(timeout=30)
        assert at.session_state["typed"] == (0.5, 0.6), bad  # the previous value kept
        assert len(at.error) == 1 and needle in at.error[0].value and "**Sparsity per block**" in at.error[0].value


def test_config_holds_parameters_by_name_with_spec_defaults():
    config = PruneConfig(allocation="owl", owl_lambda=0.1)
    assert config.owl_lambda == 0.1 and config.owl_m == registry.param("owl_m").default
    assert config.rule_params() == {"owl_m": registry.param("owl_m").default, "owl_lambda": 0.1}
    record = config.to_dict()
    assert set(registry.params()) <= set(record) and record["epsilon"] is None  # not the selected rule's
    with pytest.raises(TypeError, match="unknown settings"):
        PruneConfig(epsilonn=0.2)
    assert PruneConfig(allocation="alphapruning", epsilon=None).auto_epsilon  # None: auto, as before


@pytest.mark.parametrize(
    "settings,needle",
    [
        ({"allocation": "alphapruning", "epsilon": -0.1}, "--epsilon"),
        ({"allocation": "owl", "owl_m": 0.5}, "--owl-m"),
        ({"allocation": "owl", "mapping": "matrix"}, "one ratio per block"),
        ({"allocation": "nope"}, "allocation must be one of uniform"),
        ({"pruner": "nope"}, "pruner must be one of magnitude"),
    ],
)
def test_validation_comes_from_the_specs(settings, needle):
    with pytest.raises(UserError, match=needle):
        PruneConfig(**settings).validate()


def test_every_setting_is_checked_without_importing_torch():
    """A bad value is answered before torch (seconds to import) is loaded, --metric included."""
    code = (
        "import sys\n"
        "from alphaprune.config import PruneConfig\n"
        "from alphaprune.errors import UserError\n"
        "for bad in ({'metric': 'nope'}, {'epsilon': 2.0}, {'beta': -1.0, 'allocation': 'atp'}, {'ceiling': 'x'}):\n"
        "    try:\n"
        "        PruneConfig(**{'allocation': 'alphapruning', **bad}).validate()\n"
        "        raise SystemExit(f'accepted {bad}')\n"
        "    except UserError:\n"
        "        pass\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_parameter_is_named_in_each_interface_from_its_spec():
    message = f"set {setting('owl_lambda')}"
    assert render(message, "cli") == "set --owl-lambda"
    assert render(message, "app") == f"set **{registry.param('owl_lambda').label}**"


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {"allocation": "atp", "beta": 0.004, "pruner": "ria"},
        {"allocation": "dlp", "pruner": "wanda", "refine": "dsnot", "dsnot_cycles": 5},
        {"allocation": "farms", "farms_window": 96, "farms_per_side": 2, "pruner": "wanda"},
    ],
    ids=["atp-ria", "dlp-wanda-dsnot", "farms-wanda"],
)
def test_new_rules_and_pruners_on_the_default_model(real_model, real_analysis, settings):
    """The bundled SmolLM2-135M at 60%: each new rule shapes the ratios its own way (not
    uniform), the mean is the target, the measured sparsity follows, the perplexity rises
    but stays finite, and the dense model is untouched."""
    from alphaprune.pipeline import run_prune

    config = PruneConfig(sparsity=0.6, calib_samples=4, seqlen=128, eval_windows=4, **settings)
    before = real_model.model.model.layers[3].mlp.up_proj.weight.clone()
    result = run_prune(real_model, config, analysis=real_analysis)
    blocks = result.allocation.block_ratios
    assert len(blocks) == 30 and max(blocks) - min(blocks) > 0.01  # a layer-wise allocation
    assert result.allocation.mean == pytest.approx(0.6, abs=1e-9)
    assert result.actual_sparsity == pytest.approx(0.6, abs=2e-3)
    assert result.ppl_before < result.ppl_after < 1e4
    assert result.allocation.method == settings["allocation"]
    assert result.record().settings["pruner"] == settings["pruner"]
    assert torch.equal(real_model.model.model.layers[3].mlp.up_proj.weight, before)


def _zeros_after(refine_params: dict) -> dict:
    """Which weights a Wanda (+ refiner) prune of a tiny LLaMA removes, per matrix."""
    from alphaprune.arch import prunable_matrices
    from alphaprune.prune import prune_model
    from tests.conftest import tiny_llama

    model = tiny_llama(layers=2)
    windows = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(0))
    ratios = {ref.name: 0.5 for ref in prunable_matrices(model)}
    refine = refine_params.pop("refine", "none")
    prune_model(model, ratios, "wanda", None, windows, params=refine_params, refine=refine)
    return {ref.name: ref.weight() == 0 for ref in prunable_matrices(model)}


def test_dsnot_refines_the_attention_by_default_as_the_released_code():
    plain = _zeros_after({})
    attention = _zeros_after({"refine": "dsnot", **registry.defaults()})
    # strict: every row keeps its count (the released reading can change a row's, see alphaprune/dsnot.py)
    everything = _zeros_after({"refine": "dsnot", **registry.defaults(), "dsnot_scope": "all",
                               "dsnot_candidates": "strict"})  # fmt: skip
    first = [n for n in plain if n.startswith("model.layers.0.mlp.")]  # later blocks see refined inputs
    for name in first:
        assert torch.equal(attention[name], plain[name]), name  # the MLP keeps Wanda's mask
    assert any(not torch.equal(attention[n], plain[n]) for n in plain if ".self_attn." in n)
    assert any(not torch.equal(everything[n], plain[n]) for n in first)
    for name, mask in everything.items():
        assert torch.equal(mask.sum(1), plain[name].sum(1)), name  # every row keeps its count


def test_settings_split_into_three_frozen_parts():
    """Every field of PruneConfig belongs to exactly one part; parts() and from_parts() are inverse;
    the rules' parameters go with the allocation, the pruners' and refiners' with the pruner."""
    import dataclasses

    from alphaprune.config import PARTS, AllocationSettings, DataSettings, PrunerSettings

    own = [f.name for kind in PARTS for f in dataclasses.fields(kind) if f.name != "params"]
    flat = [f.name for f in dataclasses.fields(PruneConfig) if f.name != "params"]
    assert sorted(own) == sorted(flat) and len(own) == len(set(own))
    for name in flat:  # one default: the part's
        kind = next(k for k in PARTS if name in {f.name for f in dataclasses.fields(k)})
        assert getattr(PruneConfig(), name) == getattr(kind(), name), name
    config = PruneConfig(allocation="atp", beta=0.01, ceiling="auto", pruner="ria", ria_a=1.0, refine="dsnot",
                         dsnot_cycles=7, seqlen=512, eval_windows=3)  # fmt: skip
    allocation, pruner, data = config.parts()
    assert (type(allocation), type(pruner), type(data)) == PARTS
    assert allocation.params == (("beta", 0.01),) and allocation.beta == 0.01 and allocation.epsilon == 0.3
    assert dict(pruner.params) == {"ria_a": 1.0, "dsnot_cycles": 7} and pruner.refine == "dsnot"
    assert data == DataSettings(seqlen=512, eval_windows=3)
    assert PruneConfig.from_parts(allocation, pruner, data) == config
    assert PruneConfig.from_parts() == PruneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        allocation.sparsity = 0.9
    owl = PruneConfig.from_parts(AllocationSettings(allocation="owl"), PrunerSettings(pruner="sparsegpt"))
    assert owl.rule_params() == {p.name: p.default for p in registry.rule("owl").params} and owl.pruner == "sparsegpt"


def test_identity_leaves_out_parameters_at_their_defaults():
    """Sweep cells and comparisons are found again by it: a default given or not is one run, and a
    parameter the registry gains later (at its default) changes no stored id."""
    from alphaprune import compare, sweep

    plain = PruneConfig(allocation="farms", sparsity=0.6)
    given = PruneConfig(allocation="farms", sparsity=0.6, epsilon=0.3, farms_spectrum="code")
    assert plain.identity() == given.identity() and "epsilon" not in plain.identity()
    # a parameter whose older runs ran otherwise (its spec's legacy) is always named
    assert plain.identity()["farms_spectrum"] == "code" and "farms_spectrum" not in PruneConfig().identity()
    assert PruneConfig(refine="dsnot").identity()["dsnot_candidates"] == "released"
    assert sweep.cell_key(plain) == sweep.cell_key(given)
    assert compare.compare_id("m", plain) == compare.compare_id("m", given)
    exact = given.with_params(farms_spectrum="exact")
    assert exact.identity()["farms_spectrum"] == "exact" and sweep.cell_key(exact) != sweep.cell_key(plain)
    assert compare.compare_id("m", exact) != compare.compare_id("m", plain)
    assert compare.compare_id("m", plain) == compare.compare_id("m", plain.with_params(allocation="atp"))


def test_legacy_values_are_choices_of_their_parameters_and_farms_choices_are_its_spectra():
    from alphaprune.farms import SPECTRA

    legacy = {name: p.legacy for name, p in registry.params().items() if p.legacy is not None}
    assert legacy == {"farms_spectrum": "exact", "dsnot_variance": "tokens", "dsnot_candidates": "strict"}
    for name, value in legacy.items():
        registry.param(name).check(value)
    assert registry.param("farms_spectrum").choices == SPECTRA
