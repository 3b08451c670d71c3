"""Session state, cached resources and the logic behind the app's pages (`make run`).

The one place that knows the session-state keys. Pages read:
MODEL (LoadedModel), LOAD_INFO (how the last press on Load went), ANALYSIS (Analysis),
CHOICE (what the last press on Load chose: spec, name, offload), FILES (the checkpoint a model
too large for memory was analysed from, instead of a MODEL), PLAN (that analysis's preflight plan),
ALLOC (config.AllocationSettings, frozen; the Allocation page replaces it), PRUNER and DATA
(config.PrunerSettings and config.DataSettings of the Prune page's last run or plan),
OUTLIERS (rules' per-block statistics: {(rule, its params, calibration): values}), RESULT (PruneResult
of this session), RUN_ID (its id in the run history), PRUNED_ANALYSIS, GENERATIONS.

Offload (alphaprune/preflight.py): when the plan for a step streams, the model is not loaded
(analysis from the files) or not copied (pruning and evaluation block by block, through
alphaprune/offload.py, into a save folder): no page holds a second copy of the model.

The dense model is a cached resource shared by every session and is never modified
(pruning works on a deep copy held in this session's state), so one user's pruning
never changes what another tab sees.

Widget values survive a page switch: the pages create their widgets with a key and
`persist_state="session"` (Streamlit drops other widgets' values when a run does not draw them).

Uploads go through alphaprune/ui/uploads.py (size limit, safe unzip); the app shows their
names, never the cache paths they are stored under (`say`, `shown`).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from alphaprune import registry
from alphaprune.analysis import Analysis, analyze
from alphaprune.config import AllocationSettings, DataSettings, PrunerSettings
from alphaprune.errors import UserError
from alphaprune.models import LoadedModel, load_model, resolve_spec
from alphaprune.offload import plan_for, run_streamed
from alphaprune.pipeline import PruneConfig, PruneResult, fingerprint
from alphaprune.pruners import parse_pattern
from alphaprune.runs import RunStore
from alphaprune.ui import uploads

MODEL = "loaded_model"
LOAD_INFO = "load_info"
ANALYSIS = "analysis"
ALLOC = "allocation_settings"
PRUNER = "pruner_settings"
DATA = "data_settings"
OUTLIERS = "owl_outliers"
RESULT = "prune_result"
RUN_ID = "prune_run_id"
PRUNED_ANALYSIS = "pruned_analysis"
GENERATIONS = "generations"
ACCURACY = "zero_shot_accuracy"  # the run record's accuracy of the session's pruned model (alphaprune/zeroshot.py)
TAILS = "tail_test_result"  # (matrix, xmin rule, tails.TailTest) of the Spectra page's last tail test
LAST_BLOCKS = "alloc_last_blocks"  # block ratios of the Allocation page's last non-list rule (a list's start)
TYPED = "alloc_typed_lists"  # a list rule's values as typed, by parameter name, kept across rule switches
COMPARE = "compare_rows"  # (compare id, rows of compare.table) of the Prune page's last comparison
FINGERPRINT = "dense_fingerprint"  # (model object, short hex)
UPLOADS = "uploads"  # file id of an upload -> (model spec or text path, the name it was uploaded as)
UPLOAD_NAMES = "upload_names"  # stored path -> the name it was uploaded as
CHOICE = "model_choice"  # Choice of the last successful press on Load
FILES = "files_checkpoint"  # the checkpoint analysed from the files (no model loaded), else None
PLAN = "analysis_plan"  # the preflight plan of the analysis (None: in memory, no plan made)
OFFLOADS = {  # the preflight's words (alphaprune/preflight.py), explained
    "auto": "auto: in memory when the model fits, else streamed",
    "none": "none: load the model (pruning works on a copy)",
    "cpu": "cpu: hold the model once, prune it block by block",
    "disk": "disk: never load it; read blocks from the files",
}

DEFAULT_ALLOC = AllocationSettings(allocation="alphapruning", sparsity=0.7)  # every parameter at its spec's default
MODEL_SOURCES = ("Bundled SmolLM2-135M", "Hub id, folder or .gguf path", "Upload (.gguf or .zip of a model folder)")
TEXT_SOURCES = ("python-docs", "wikitext2", "a text file path", "upload a text file")
LOAD_STAGES = {  # what load_model does for each kind of source (it reports no progress itself)
    "bundled": "reading the GGUF file (the first load dequantizes it, ~30 s; later ones read the cache, ~3 s)",
    "gguf": "reading the GGUF file (the first load dequantizes it; later ones read the cache)",
    "folder": "reading the weights",
    "hub": "fetching from the Hugging Face hub",
}
log = logging.getLogger(__name__)
_worker = threading.local()  # set by cached_model's body: this call really loaded


def init_state() -> None:
    """Defaults for every key, set once per session."""
    for key in (MODEL, LOAD_INFO, ANALYSIS, OUTLIERS, RESULT, RUN_ID, PRUNED_ANALYSIS, GENERATIONS, FINGERPRINT,
                CHOICE, FILES, PLAN):  # fmt: skip
        st.session_state.setdefault(key, None)
    st.session_state.setdefault(ALLOC, DEFAULT_ALLOC)
    st.session_state.setdefault(PRUNER, PrunerSettings())
    st.session_state.setdefault(DATA, APP_DATA)
    st.session_state.setdefault(UPLOADS, {})
    st.session_state.setdefault(UPLOAD_NAMES, {})


# -- messages -------------------------------------------------------------------------


def shown(path: str) -> str:
    """How the app names a text source or model: an upload by its own name, not its cache path."""
    name = st.session_state.get(UPLOAD_NAMES, {}).get(path)
    return f"{name} (uploaded)" if name else path


def say(exc: UserError) -> str:
    """A UserError in the app's words: widget labels, not CLI flags; uploads by their names."""
    message = exc.render("app")
    names = st.session_state.get(UPLOAD_NAMES, {})
    for path in sorted(names, key=len, reverse=True):  # x.zip before the folder x it unpacks to
        message = message.replace(path, names[path])
    return message


def failure(exc: Exception, what: str, then: str = "") -> str:
    """One line for st.error: a UserError as the library words it, any other fault by its type
    and first line (the traceback goes to the server log); `then` says what was kept."""
    if isinstance(exc, UserError):
        text = say(exc)
    else:
        log.error("%s failed", what, exc_info=exc)
        first = (str(exc).splitlines() or [""])[0][:200]
        text = f"{what} failed with an internal error ({type(exc).__name__}: {first}); the server log has the details"
    return f"{text}; {then}" if then else text


# -- model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadInfo:
    """How one press on Load went (the cached model keeps the time of its first load only)."""

    seconds: float
    how: str  # "from memory" | "from the disk cache" | "by dequantizing the GGUF file" | "from the files"
    origin: str  # where the weights came from, in words


def _freeze_heap() -> None:
    """Move what exists now (model, spectra) out of the garbage collector's full scans.

    A full collection over a loaded model's objects takes ~0.2 s here and would land on
    random slider moves; these objects live as long as the session anyway.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(spec: str, trust_remote_code: bool = False, name: str | None = None) -> LoadedModel:
    """Loaded once per process and shared by every session: read-only by convention."""
    loaded = load_model(spec, trust_remote_code=trust_remote_code)
    if name is not None:  # an upload: named as the user knows it, not by its cache path
        loaded = dataclasses.replace(loaded, name=name)
    _freeze_heap()
    _worker.loaded = True
    return loaded


def _load_in_thread(spec: str, trust: bool, name: str | None, tick: Callable[[float], None]):
    """(LoadedModel, loaded now?) from cached_model, run on a worker thread so that this one
    can report the elapsed time meanwhile: transformers gives no progress callback."""
    box: dict = {}

    def work() -> None:
        _worker.loaded = False
        try:
            box["loaded"] = cached_model(spec, trust, name)
        except Exception as exc:  # re-raised on the script's thread below
            box["error"] = exc
        box["fresh"] = _worker.loaded

    thread = threading.Thread(target=work, name="alphaprune-load", daemon=True)
    add_script_run_ctx(thread, get_script_run_ctx())  # the cache works as on the script's thread
    start = time.perf_counter()
    thread.start()
    tick(0.0)  # the stage is shown at once, however quick the load
    while thread.is_alive():
        tick(time.perf_counter() - start)
        thread.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["loaded"], box["fresh"]


def load(spec: str, trust: bool, name: str | None, report: Callable[[str], None]) -> tuple[LoadedModel, LoadInfo]:
    """Load a model (cached across sessions), reporting the stage and elapsed seconds."""
    start = time.perf_counter()
    report("locating")
    source, location = resolve_spec(spec)  # a bad spec fails here, at once
    stage = LOAD_STAGES.get(source, "reading")
    loaded, fresh = _load_in_thread(spec, trust, name, lambda s: report(f"{stage} ... {s:.0f} s"))
    if not fresh:
        how = "from memory"
    elif loaded.from_cache:
        how = "from the disk cache"
    else:
        how = "by dequantizing the GGUF file" if source in ("bundled", "gguf") else "from the files"
    origin = f"the upload `{name}`" if name else f"{loaded.source} `{loaded.location}`"
    return loaded, LoadInfo(time.perf_counter() - start, how, origin)


@dataclass(frozen=True)
class Choice:
    """What a press on Load chose: the later steps plan on the same files and offload."""

    spec: str  # what load_model loads (an upload: its stored path)
    name: str  # how the app names it
    trust: bool
    offload: str  # preflight.OFFLOADS


def _forget_results() -> None:
    for key in (ANALYSIS, OUTLIERS, RESULT, RUN_ID, PRUNED_ANALYSIS, GENERATIONS, LAST_BLOCKS):
        st.session_state[key] = None


def adopt_model(loaded: LoadedModel, info: LoadInfo, choice: Choice | None = None, plan=None) -> None:
    """Make `loaded` this session's model; results of another model go."""
    previous = st.session_state.get(MODEL)
    if previous is None or previous.model is not loaded.model or previous.name != loaded.name:
        _forget_results()
    st.session_state[MODEL], st.session_state[LOAD_INFO] = loaded, info
    st.session_state[CHOICE] = choice or Choice(loaded.location, loaded.name, False, "auto")
    st.session_state[FILES], st.session_state[PLAN] = None, plan


def analysis_plan(spec: str, offload: str):
    """(plan, checkpoint) of analysing `spec`: streamed means from the files, no model loaded;
    (None, None) or a plan "none": load the model (offload.plan_for)."""
    from alphaprune.analysis import analysis_workers

    return plan_for(spec, "analyze", offload, workers=analysis_workers())


def analyse_files(choice: Choice, plan, ckpt, progress: Callable[[float, str], None]) -> Analysis:
    """Analyse from the files, one matrix at a time, and make the checkpoint this session's
    model in place of a loaded one (which this session then lets go)."""
    from alphaprune.analysis import analyze_checkpoint

    result = analyze_checkpoint(ckpt, choice.name, progress=progress)
    _forget_results()
    st.session_state[MODEL], st.session_state[LOAD_INFO] = None, None
    st.session_state[ANALYSIS], st.session_state[FILES], st.session_state[PLAN] = result, ckpt, plan
    st.session_state[CHOICE] = choice
    return result


def model_name() -> str | None:
    """The name of this session's model, loaded or analysed from its files."""
    loaded, choice = st.session_state.get(MODEL), st.session_state.get(CHOICE)
    return loaded.name if loaded is not None else (choice.name if choice is not None else None)


def model_layout():
    """The model's modules for what needs only shapes and names (allocation, matrix lists): the
    loaded model, else the checkpoint's meta-device skeleton."""
    loaded = st.session_state.get(MODEL)
    return loaded.model if loaded is not None else st.session_state[FILES].skeleton()


def matrix_weight(name: str):
    """One matrix's weight, (out, in): from the loaded model, else read from the files."""
    from alphaprune.arch import all_matrices

    ref = next(r for r in all_matrices(model_layout()) if r.name == name)
    if st.session_state.get(MODEL) is not None:
        return ref.weight()
    return st.session_state[FILES].tensor(ref.tensor_name)


def run_analysis(loaded: LoadedModel, progress: Callable[[float, str], None]) -> Analysis:
    """Uncached at the Streamlit level (the library has its own disk cache), so the
    progress callback is safe (streamlit-notes 2.6)."""
    result = analyze(loaded.model, loaded.name, device=loaded.device, progress=progress)
    _freeze_heap()
    return result


def dense_fingerprint(loaded: LoadedModel) -> str:
    """Short hex of the dense weights, computed once per model object and session (a new
    session measures again, so it shows whether the shared dense model stayed intact)."""
    known = st.session_state.get(FINGERPRINT)
    if known is None or known[0] is not loaded.model:
        known = (loaded.model, fingerprint(loaded.model)[:12])
        st.session_state[FINGERPRINT] = known
    return known[1]


# -- uploads --------------------------------------------------------------------------


def upload_limit_mb() -> int:
    """The upload limit: the server's own (server.maxUploadSize), enforced here too."""
    return int(st.get_option("server.maxUploadSize"))


def _saved(upload, kind: str, instead: str, to_spec: Callable) -> tuple[str, str]:
    """(path or spec, name) of an upload, stored once per upload (not hashed on every rerun)."""
    known = st.session_state[UPLOADS].get(upload.file_id)
    if known is not None:
        return known
    uploads.check_size(upload.name, upload.size, upload_limit_mb(), instead)
    path = uploads.save_upload(upload.name, upload.getvalue(), kind)
    spec = to_spec(path)
    st.session_state[UPLOAD_NAMES].update({str(path): upload.name, spec: upload.name})
    st.session_state[UPLOADS][upload.file_id] = (spec, upload.name)
    return spec, upload.name


def model_upload(upload) -> tuple[str, str]:
    """(model spec, name) of an uploaded .gguf or zipped model folder; UserError if unusable."""
    instead = f"give its path under **{MODEL_SOURCES[1]}** instead"
    return _saved(upload, "models", instead, lambda path: uploads.model_spec(path, upload_limit_mb()))


def text_upload(upload) -> str:
    """The stored path of an uploaded text; UserError if over the limit."""
    instead = f"give its path under **{TEXT_SOURCES[2]}** instead"
    return _saved(upload, "texts", instead, str)[0]


# -- prune ----------------------------------------------------------------------------


def allocation_words(part: AllocationSettings) -> str:
    """The Allocation page's choice in words, e.g. 'alphapruning at 0.7, epsilon 0.3, ...'."""
    settings = PruneConfig.from_parts(part)
    words = f"{settings.allocation} at {settings.sparsity:g}"
    for name, value in settings.rule_params().items():
        words += f", {name} {value:g}" if isinstance(value, float) else f", {name} {value}"
    if len(settings.rule.granularities) > 1:
        words += f", {settings.mapping} mapping"
    ceiling = settings.ceiling  # a number, or "auto"
    return f"{words}; ceiling {ceiling:g}" if isinstance(ceiling, float) else f"{words}; ceiling {ceiling}"


def nm_override(settings: AllocationSettings, pattern: str) -> str | None:
    """What an N:M pattern does to the chosen allocation, or None for unstructured."""
    nm = parse_pattern(pattern)
    if nm is None:
        return None
    n, m = nm
    return (
        f"Pattern {pattern} removes {n} of every {m} weights in every matrix, so this run is {registry.BASELINE} at "
        f"sparsity {n / m:g}: the Allocation page's {settings.allocation} at {settings.sparsity:g} does not apply. "
        "Choose **unstructured** to use it."
    )


def prune_config(allocation: AllocationSettings, pruner: PrunerSettings, data: DataSettings) -> PruneConfig:
    """The run the pages' settings describe (an N:M pattern: uniform at N/M, see nm_override);
    the Prune page's parts are kept in the session beside the Allocation page's."""
    st.session_state[PRUNER], st.session_state[DATA] = pruner, data
    nm = parse_pattern(pruner.pattern)
    if nm:
        uniform = {"allocation": registry.BASELINE, "mapping": "block", "sparsity": nm[0] / nm[1]}
        allocation = dataclasses.replace(allocation, **uniform)
    return PruneConfig.from_parts(allocation, pruner, data)


def keep_result(result) -> int:
    """Hold a measured run in the session, then store it in the run history; its id.

    Held first, so a failing store (a locked or broken database) loses nothing measured;
    the optional steps after it (spectra of the pruned model) run on a stored run."""
    st.session_state[RESULT] = result
    for key in (RUN_ID, PRUNED_ANALYSIS, GENERATIONS, ACCURACY):
        st.session_state[key] = None
    st.session_state[RUN_ID] = RunStore().add(result.record())
    return st.session_state[RUN_ID]


def measure_accuracy(loaded: LoadedModel, result, tasks: str, limit: int | None, include_path: str | None) -> dict:
    """Zero-shot accuracy of the dense and the session's pruned model (lm-eval), held in the
    session first, then stored with the run (a failing store loses nothing measured)."""
    from alphaprune.zeroshot import ZeroShot, parse_tasks

    spec = ZeroShot(tuple(parse_tasks(tasks)), limit, include_path or None)
    spec.check()
    st.session_state[ACCURACY] = spec.before_after(loaded.model, result.model, loaded.tokenizer)
    if st.session_state.get(RUN_ID):
        RunStore().set_accuracy(st.session_state[RUN_ID], st.session_state[ACCURACY])
    return st.session_state[ACCURACY]


def accuracy_rows(accuracy: dict) -> list[dict]:
    """One row per task and metric: dense, pruned and the change."""
    rows = []
    for task in accuracy.get("tasks", []):
        before, after = accuracy["before"].get(task, {}), accuracy["after"].get(task, {})
        for metric in [m for m in after if not m.endswith("_stderr")]:
            if metric in before:
                rows.append({"task": task, "metric": metric, "dense": before[metric], "pruned": after[metric],
                             "change": after[metric] - before[metric]})  # fmt: skip
    return rows


def compare_rules(loaded: LoadedModel, base: PruneConfig, rules: list[str], analysis, progress):
    """One stored prune run per rule (alphaprune/compare.py), in memory, one at a time, each
    pruned copy dropped once stored (never two copies); resumes a comparison stopped before.
    (rows of compare.table for `rules`, the compare id)."""
    from alphaprune import compare
    from alphaprune.pipeline import run_prune

    configs = compare.rule_configs(base, rules)
    for key in (RESULT, RUN_ID, PRUNED_ANALYSIS, GENERATIONS):  # this session's pruned copy, and what hangs on it:
        st.session_state[key] = None  # a comparison holds one pruned copy at a time, no more
    gc.collect()
    cid, store = compare.compare_id(loaded.name, base), RunStore()
    todo = compare.pending(store, loaded.name, configs, cid)
    for i, config in enumerate(todo):
        stage = lambda f, m, i=i, rule=config.allocation: progress((i + f) / len(todo), f"{rule}: {m}")  # noqa: E731
        result = run_prune(loaded, config, analysis, stage)
        store.add(result.record(sweep=cid))
        del result
        gc.collect()
    rows = [row for row in compare.table(store.list(model=loaded.name, sweep=cid)) if row["rule"] in rules]
    return rows, cid


# The Prune page's data defaults. Smaller than DataSettings' (128 x 2048 tokens, every evaluation
# window), which follow the papers: an interactive run on a laptop takes seconds, not the hour a
# paper-sized run does. The CLI keeps DataSettings'.
APP_DATA = DataSettings(calib_samples=16, seqlen=256, eval_windows=8)


def calibration_choice() -> tuple[str | None, int, int, int]:
    """(calibration source, samples, seqlen, seed) as the Prune page's widgets hold them (their
    defaults before it was opened): the Allocation page computes a rule's block statistics on
    these same windows, so the ratios it previews are the ones a run then applies."""
    state = st.session_state
    choice = state.get("prune_calib", TEXT_SOURCES[0])
    if choice == TEXT_SOURCES[2]:
        source = (state.get("prune_calib_path") or "").strip() or None
    elif choice == TEXT_SOURCES[3]:
        source = state.get("prune_calib_upload")
    else:
        source = choice
    data = state.get(DATA, APP_DATA)  # the last run's or plan's, until the widgets hold their own
    samples, seqlen, seed = (
        int(state.get(key, value))
        for key, value in (
            ("prune_samples", data.calib_samples),
            ("prune_seqlen", data.seqlen),
            ("prune_seed", data.seed),
        )
    )
    return source, samples, seqlen, seed


def prune_plan(config: PruneConfig):
    """(plan, checkpoint) of pruning with `config` under the Model page's offload choice."""
    choice = st.session_state[CHOICE]
    samples = config.calib_samples if config.needs_calibration else 0
    work = {"samples": samples, "seqlen": config.seqlen, "batch": config.batch_size, "pruner": config.pruner}
    plan, ckpt = plan_for(choice.spec, "prune", choice.offload, **work)
    return plan, ckpt if ckpt is not None else st.session_state.get(FILES)


def check_stream_folder(folder: str) -> Path:
    """The save folder a streamed run writes into, checked before any work."""
    from alphaprune.export import check_save_folder

    if not folder:
        raise UserError("a streamed run writes the pruned model as it goes: name a **Save folder** for it")
    path = Path(folder).expanduser()
    check_save_folder(path)
    return path


def prune_streamed(config: PruneConfig, plan, ckpt, folder: Path, progress) -> PruneResult:
    """offload.run_streamed as the CLI runs it: from the files ("disk") or block by block from
    the dense model in memory ("cpu": the loaded one, else loaded once in its stored dtype)."""
    from alphaprune.offload import checkpoint_tokenizer
    from alphaprune.spectra import resolve_device
    from alphaprune.stream import MemorySource

    choice, loaded = st.session_state[CHOICE], st.session_state.get(MODEL)
    tokenizer = loaded.tokenizer if loaded is not None else checkpoint_tokenizer(ckpt)
    if tokenizer is None:
        raise UserError(f"{choice.name} has no tokenizer files beside its weights: save its tokenizer into the folder")
    source = ckpt
    if plan.path == "cpu":
        stored = str(ckpt.dtype).removeprefix("torch.")
        model = loaded.model if loaded is not None else load_model(choice.spec, stored, "auto", choice.trust).model
        source = MemorySource(model, tokenizer, dtype=ckpt.dtype)  # saved in the checkpoint's dtype (bf16 stays bf16)
    analysis = st.session_state.get(ANALYSIS)
    device = str(resolve_device("auto"))
    return run_streamed(source, tokenizer, choice.name, config, folder, plan, analysis, progress, device)


def pruned_spectra(result, name: str) -> Analysis:
    """Spectra of the pruned model (an optional step: the page keeps the run if this fails);
    read from its save folder when the run was streamed (no pruned model in memory)."""
    if result.model is None and result.saved:
        from alphaprune.analysis import analyze_checkpoint
        from alphaprune.checkpoint import open_checkpoint

        pruned = analyze_checkpoint(open_checkpoint(result.saved), f"{name} (pruned)", use_cache=False)
    else:
        pruned = analyze(result.model, f"{name} (pruned)", use_cache=False)
    st.session_state[PRUNED_ANALYSIS] = pruned
    return pruned


# -- progress -------------------------------------------------------------------------


def progress_callback(bar) -> Callable[[float, str], None]:
    """A library progress callback drawing on an st.progress element."""
    return lambda fraction, message: bar.progress(min(1.0, max(0.0, fraction)), text=message)


def staged_progress() -> Callable[[float, str], None]:
    """A progress callback drawing one st.progress bar per stage.

    The pipeline's messages read "stage: detail" (alphaprune/pipeline.py); each new stage
    opens its own bar, and the previous one is filled.
    """
    bars: dict[str, object] = {}

    def update(fraction: float, message: str) -> None:
        stage, _, detail = message.partition(": ")
        if stage not in bars:
            for bar in bars.values():
                bar.progress(1.0)
            bars[stage] = st.progress(0.0, text=stage)
        bars[stage].progress(min(1.0, max(0.0, fraction)), text=f"{stage}: {detail}" if detail else stage)

    return update


def list_starts(rule: registry.Rule, blocks: int, sparsity: float) -> dict:
    """Where the box of each list parameter of `rule` (one ratio per block) starts: the list typed
    last if it fits this model's `blocks`, else the block ratios another rule drew last, else
    `sparsity` for every block."""
    typed, drawn = st.session_state.get(TYPED) or {}, st.session_state.get(LAST_BLOCKS)
    fits = lambda v: v is not None and len(v) == blocks  # noqa: E731
    return {
        p.name: next((tuple(v) for v in (typed.get(p.name), drawn) if fits(v)), (round(sparsity, 4),) * blocks)
        for p in rule.params
        if p.kind == "floats"
    }


def settled_params(kept: dict, values: dict, starts: dict) -> tuple:
    """AllocationSettings.params: the selected rule's `values` over the values `kept` from other
    rules (for a switch back), except lists: a list is part of the settings only while its rule
    is selected (else it would name other rules' runs); what was typed is kept aside (TYPED)."""
    lists = {p.name for rule in registry.rules().values() if rule.sets_target for p in rule.params}
    typed = {k: v for k, v in values.items() if k in starts and v != starts[k]}
    if typed:
        st.session_state[TYPED] = {**(st.session_state.get(TYPED) or {}), **typed}
    merged = {**{k: v for k, v in kept.items() if k not in lists}, **values}
    return tuple(sorted(merged.items()))


def offer_farms(settings, why: str, key: str) -> None:
    """The cost of computing the analysis' alpha_farms with these FarmsSettings, and a button
    that computes it (cached) and reruns the page: the Allocation and Spectra pages' one way."""
    from alphaprune.farms import estimate_cost

    analysis = st.session_state[ANALYSIS]
    cost = estimate_cost([tuple(m.shape) for m in analysis.layers], settings)  # every matrix, as analyze
    st.info(
        f"{why}: the alphas of pooled {settings.window}-wide windows of every matrix, {cost.windows} windows, "
        f"about {cost.seconds:.0f} s here (an estimate)."
    )
    if not st.button("Compute FARMS alphas", key=key):
        return
    bar = st.progress(0.0, text="FARMS")
    loaded = st.session_state.get(MODEL)
    source, device = (loaded.model, loaded.device) if loaded is not None else (st.session_state[FILES], "auto")
    try:
        done = analyze(source, model_name(), device=device, progress=progress_callback(bar), farms=settings)
        st.session_state[ANALYSIS] = done
    except UserError as exc:
        st.error(say(exc))
        return
    st.rerun()


def require(key: str, message: str) -> object:
    """The state value, or an info box pointing to the page that makes it, then stop."""
    value = st.session_state.get(key)
    if value is None:
        st.info(message)
        st.page_link("pages/model.py", label="Go to Model", icon=":material/arrow_forward:")
        st.stop()
    return value
