"""Session state, cached resources and small UI helpers shared by the app's pages.

The one place that knows the session-state keys. Pages read:
MODEL (LoadedModel), ANALYSIS (Analysis), ALLOC (the allocation settings dict),
OUTLIERS (OWL outlier ratios), RESULT (PruneResult of this session), PRUNED_ANALYSIS.

The dense model is a cached resource shared by every session and is never modified
(pruning works on a deep copy held in this session's state), so one user's pruning
never changes what another tab sees.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from alphaprune import allocation as alloc
from alphaprune.analysis import Analysis, analyze
from alphaprune.errors import UserError
from alphaprune.models import DEFAULT_MODEL, LoadedModel, load_model
from alphaprune.paths import cache_dir

MODEL_SPEC = "model_spec"
MODEL = "loaded_model"
ANALYSIS = "analysis"
ALLOC = "allocation_settings"
OUTLIERS = "owl_outliers"
RESULT = "prune_result"
PRUNED_ANALYSIS = "pruned_analysis"
GENERATIONS = "generations"

DEFAULT_ALLOC = {
    "method": "alphapruning",
    "sparsity": 0.7,
    "epsilon": alloc.DEFAULT_EPSILON,
    "metric": alloc.DEFAULT_METRIC,
    "mapping": "block",
    "ceiling": alloc.DEFAULT_CEILING,
    "owl_m": alloc.OWL_M,
    "owl_lambda": alloc.OWL_LAMBDA,
}


def init_state() -> None:
    """Defaults for every key, set once per session."""
    st.session_state.setdefault(MODEL_SPEC, DEFAULT_MODEL)
    for key in (MODEL, ANALYSIS, OUTLIERS, RESULT, PRUNED_ANALYSIS, GENERATIONS):
        st.session_state.setdefault(key, None)
    st.session_state.setdefault(ALLOC, dict(DEFAULT_ALLOC))


def _freeze_heap() -> None:
    """Move what exists now (model, spectra) out of the garbage collector's full scans.

    A full collection over a loaded model's objects takes ~0.2 s here and would land on
    random slider moves; these objects live as long as the session anyway.
    """
    gc.collect()
    gc.freeze()


@st.cache_resource(show_spinner=False, max_entries=2)
def cached_model(spec: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Loaded once per process and shared by every session: read-only by convention."""
    loaded = load_model(spec, dtype=dtype, device=device)
    _freeze_heap()
    return loaded


def run_analysis(loaded: LoadedModel, progress: Callable[[float, str], None]) -> Analysis:
    """Uncached at the Streamlit level (the library has its own disk cache), so the
    progress callback is safe (streamlit-notes 2.6)."""
    result = analyze(loaded.model, loaded.name, device=loaded.device, progress=progress)
    _freeze_heap()
    return result


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


def save_upload(upload, folder: str) -> Path:
    """An uploaded file written under the cache folder (content-addressed), its path."""
    data = upload.getvalue()
    digest = hashlib.sha1(data).hexdigest()[:16]
    target = cache_dir() / "uploads" / folder / digest / Path(upload.name).name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(target)
    return target


def unpack_model_upload(upload) -> str:
    """A .gguf upload -> its path; a .zip of a model folder -> the unpacked folder."""
    import zipfile

    path = save_upload(upload, "models")
    if path.suffix.lower() == ".gguf":
        return str(path)
    if path.suffix.lower() != ".zip":
        raise UserError(f"upload a .gguf file or a .zip of a model folder, not {path.name}")
    folder = path.with_suffix("")
    if not folder.exists():
        try:
            with zipfile.ZipFile(path) as archive:
                archive.extractall(folder)
        except zipfile.BadZipFile:
            raise UserError(f"{path.name} is not a readable zip archive") from None
    configs = sorted(folder.rglob("config.json"))
    if not configs:
        raise UserError(f"{path.name} holds no config.json: zip the folder save_pretrained wrote")
    return str(configs[0].parent)


def require(key: str, message: str) -> object:
    """The state value, or an info box pointing to the page that makes it, then stop."""
    value = st.session_state.get(key)
    if value is None:
        st.info(message)
        st.page_link("pages/model.py", label="Go to Model", icon=":material/arrow_forward:")
        st.stop()
    return value
